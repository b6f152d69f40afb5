"""cocotb bench for ``rtl.layernorm.LayerNorm``: INT8 rows against ``int_layernorm``, and latency.

Parameters (``bench_params``): ``lanes``, ``width``, ``latency``, ``seed``, ``rows`` (random
rows besides the edge rows) and ``cycle_rows`` (row counts to time). Channel parameters
are loaded through the ``params`` stream first. Hands back ``records``:
``{"lanes", "latency", "rows", "width", "cycles"}`` for ``sim.layernorm.layernorm_cycles``,
and the edge classes the rows covered. The lanes past ``width`` carry random junk, in the
rows and in the parameter beats: the unit must ignore them.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from bench_streams import check_rows, cover, pack, reset, stream_through
from runner import bench_params, bench_result

from intvit.quant.layernorm import int_layernorm, layernorm_divisors
from intvit.quant.requant import INT32_MAX, INT32_MIN, dyadic

GAMMA_BITS, BETA_BITS, MULTIPLIER_BITS, SHIFT_BITS = 8, 32, 31, 6
PARAM_BITS = GAMMA_BITS + BETA_BITS + MULTIPLIER_BITS + SHIFT_BITS
OUT_BITS = 8


def channel_params(width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded per-channel gamma, beta and output scales, with the INT8/INT32 extremes present."""
    gamma = rng.integers(-128, 128, width)
    beta = rng.integers(-(1 << 20), 1 << 20, width)
    gamma[:2] = [-128, 127][:width]
    beta[-2:] = [INT32_MIN, INT32_MAX][-min(width, 2):]
    # s_gamma * 2**-10 / s_out over a wide span, so some channels saturate and some round to 0
    multiplier, shift = dyadic(10.0 ** rng.uniform(-7, -2, width))
    return {"gamma": gamma, "beta": beta, "multiplier": multiplier, "shift": shift}


def edge_rows(width: int, rng: np.random.Generator) -> list[np.ndarray]:
    one_hot = np.zeros(width, dtype=np.int64)
    one_hot[width // 2] = 127
    return [
        np.full(width, -128), np.full(width, 127), np.zeros(width, dtype=np.int64), np.full(width, 5),
        np.resize([-128, 127], width), one_hot, rng.integers(0, 2, width), rng.integers(-1, 1, width),
        rng.integers(-128, 128, width),
    ]


def random_rows(count: int, width: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Residual-stream-like rows: an offset and a spread from one LSB to the full INT8 range."""
    rows = []
    for _ in range(count):
        spread = int(rng.choice([1, 3, 10, 40, 128]))
        offset = int(rng.integers(-60, 61))
        rows.append(np.clip(offset + rng.integers(-spread, spread + 1, width), -128, 127))
    return rows


async def load_params(dut, params: dict[str, np.ndarray], lanes: int, junk: np.random.Generator) -> None:
    width = len(params["gamma"])
    beats = -(-width // lanes)
    addr_bits = (beats - 1).bit_length()
    words = []
    for beat in range(beats):
        word = 0
        for lane in range(lanes):
            channel = beat * lanes + lane
            if channel < width:
                fields = (int(params["gamma"][channel]) & 0xFF
                          | (int(params["beta"][channel]) & 0xFFFFFFFF) << GAMMA_BITS
                          | int(params["multiplier"][channel]) << (GAMMA_BITS + BETA_BITS)
                          | int(params["shift"][channel]) << (GAMMA_BITS + BETA_BITS + MULTIPLIER_BITS))
            else:
                fields = int.from_bytes(junk.bytes(-(-PARAM_BITS // 8)), "little") & ((1 << PARAM_BITS) - 1)
            word |= fields << (lane * PARAM_BITS)
        words.append({"params__payload": beat | word << addr_bits})
    await stream_through(dut, words, 0, source="params")


async def run_rows(dut, rows: list[np.ndarray], params: dict[str, np.ndarray], lanes: int,
                   junk: np.random.Generator, rng: random.Random | None = None, **stalls):
    """Stream ``rows`` through the unit and check every output beat; returns the run and the golden rows."""
    width = len(params["gamma"])
    beats = []
    for row in rows:
        padded = np.concatenate([row, junk.integers(-128, 128, -width % lanes)]).reshape(-1, lanes)
        beats += [{"i__payload": pack(beat, 8)} for beat in padded]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    divisors = layernorm_divisors(width)
    want = int_layernorm(np.array(rows), params["gamma"], params["beta"], params["multiplier"], params["shift"],
                         divisors).astype(np.int64)
    check_rows(run.outputs, rows, want, OUT_BITS, lanes)
    return run, want


VARIANCE_CLASSES = ("constant row", "spread 1 LSB", "narrow", "full INT8 range")
OUTPUT_CLASSES = ("saturates at 127", "saturates at -128", "within range")


def variance_class(row: np.ndarray) -> str:
    spread = int(row.max()) - int(row.min())
    if spread == 0:
        return "constant row"
    if spread == 1:
        return "spread 1 LSB"
    return "full INT8 range" if row.min() == -128 and row.max() == 127 else "narrow"


def output_classes(out: np.ndarray) -> list[str]:
    """The classes of one output row, its last two channels left out (their beta saturates them)."""
    out = out[:-2]
    return ([name for name, hit in zip(OUTPUT_CLASSES, (np.any(out == 127), np.any(out == -128),
                                                           np.any((out > -128) & (out < 127)))) if hit])


@cocotb.test()
async def random_and_edge_rows(dut):
    """Edge rows and seeded random rows under random input gaps and output stalls."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"])
    params = channel_params(p["width"], rng)
    rows = edge_rows(p["width"], rng) + random_rows(p["rows"], p["width"], rng)
    await reset(dut)
    await load_params(dut, params, p["lanes"], rng)
    _, want = await run_rows(dut, rows, params, p["lanes"], rng, random.Random(p["seed"]), idle=0.2, stall=0.2)
    variances = VARIANCE_CLASSES if p["width"] > 1 else VARIANCE_CLASSES[:1]     # one value: constant
    cover("layernorm.variance", variances, [variance_class(row) for row in rows])
    if p["width"] > 2:
        cover("layernorm.output", OUTPUT_CLASSES, [name for out in want for name in output_classes(out)])
    bench_result(rows=len(rows))


@cocotb.test()
async def latency(dut):
    """Back-to-back rows with ``o.ready`` high: first input to last output, per row count."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"] + 1)
    params = channel_params(p["width"], rng)
    records = []
    await reset(dut)
    await load_params(dut, params, p["lanes"], rng)
    for rows in p["cycle_rows"]:
        run, _ = await run_rows(dut, random_rows(rows, p["width"], rng), params, p["lanes"], rng)
        records.append({"lanes": p["lanes"], "latency": p["latency"], "rows": rows, "width": p["width"],
                        "cycles": run.cycles})
    bench_result(records=records)
