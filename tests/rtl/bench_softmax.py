"""cocotb bench for ``rtl.softmax.Softmax``: rows of Q.12 scores against ``int_softmax``, and latency.

Parameters (``bench_params``): ``lanes``, ``max_length``, ``latency``, ``seed``, ``rows``
(random rows besides the edge rows) and ``cycle_cases`` (``[rows, length]`` pairs to time).
Hands back ``records``: ``{"lanes", "latency", "rows", "length", "cycles"}`` for
``sim.softmax.softmax_cycles``.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from bench_streams import check_rows, pack, reset, stream_through
from runner import bench_params, bench_result

from intvit.quant.requant import INT32_MAX, INT32_MIN
from intvit.quant.softmax import EXP_LN2, int_softmax

SCORE_BITS, PROB_BITS = 32, 8


def edge_rows(max_length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows of length 1, all-zero, constant, extreme INT32 and saturating rows."""
    full = max_length
    return [
        np.array([0]), np.array([INT32_MIN]), np.array([INT32_MAX]),
        np.zeros(full, dtype=np.int64), np.full(full, -77777), np.full(3, INT32_MAX),
        np.array([INT32_MAX, INT32_MIN] * (full // 2) + [0] * (full % 2)),
        np.array([INT32_MIN, INT32_MIN, INT32_MIN + 1]),
        np.array([0, -16 * EXP_LN2, -16 * EXP_LN2 + 1, -15 * EXP_LN2, -EXP_LN2, -1, 1]),
        np.array([5000, -100000]),                                   # one probability saturates at 127
        rng.integers(INT32_MIN, INT32_MAX + 1, full),
        np.arange(full) * 37 - 4000,
    ]


def random_rows(count: int, max_length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded rows: random lengths, score spreads from a few LSBs to far past exp's cut-off."""
    rows = []
    for _ in range(count):
        length = int(rng.integers(1, max_length + 1))
        spread = int(rng.choice([4, 600, 4096, 20000, 60000, 1 << 20]))
        offset = int(rng.integers(-(1 << 24), 1 << 24))
        rows.append(offset + rng.integers(-spread, spread + 1, length))
    return rows


async def run_rows(dut, rows: list[np.ndarray], lanes: int, rng: random.Random | None = None, **stalls):
    """Stream ``rows`` through the unit and check every output beat; returns the run."""
    beats = []
    for row in rows:
        padded = np.concatenate([row, rng_pad(len(row), lanes)]).reshape(-1, lanes)
        beats += [{"i__payload": pack(beat, SCORE_BITS), "length": len(row)} for beat in padded]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    check_rows(run.outputs, rows, [int_softmax(row).astype(np.int64) for row in rows], PROB_BITS, lanes)
    return run


def rng_pad(length: int, lanes: int) -> np.ndarray:
    """Junk in the lanes past the row end: the unit must ignore it."""
    return np.full(-length % lanes, INT32_MAX, dtype=np.int64)


@cocotb.test()
async def random_and_edge_rows(dut):
    """Edge rows and seeded random rows under random input gaps and output stalls."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"])
    rows = edge_rows(p["max_length"], rng) + random_rows(p["rows"], p["max_length"], rng)
    await reset(dut)
    await run_rows(dut, rows, p["lanes"], random.Random(p["seed"]), idle=0.2, stall=0.2)


@cocotb.test()
async def latency(dut):
    """Back-to-back rows with ``o.ready`` high: first input to last output, per (rows, length)."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"] + 1)
    records = []
    await reset(dut)
    for rows, length in p["cycle_cases"]:
        run = await run_rows(dut, [rng.integers(-40000, 40000, length) for _ in range(rows)], p["lanes"])
        records.append({"lanes": p["lanes"], "latency": p["latency"], "rows": rows, "length": length,
                        "cycles": run.cycles})
    bench_result(records=records)
