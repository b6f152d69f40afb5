"""cocotb bench for ``rtl.softmax.Softmax``: rows of Q.12 scores against ``int_softmax``, and latency.

Parameters (``bench_params``): ``lanes``, ``max_length``, ``latency``, ``seed``, ``rows``
(random rows besides the edge rows) and ``cycle_cases`` (``[rows, length]`` pairs to time).
Hands back ``records``: ``{"lanes", "latency", "rows", "length", "cycles"}`` for
``sim.softmax.softmax_cycles``, and the edge classes the rows covered.

Inputs the unit must ignore carry random junk: the lanes past the row end, and ``length``
on every beat but a row's first (the only one where it is sampled).
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from bench_streams import check_rows, cover, pack, reset, stream_through
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


def random_rows(count: int, max_length: int, lanes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded rows: lengths from 1 to ``max_length`` (the edges often), score spreads from a few
    LSBs to far past exp's cut-off."""
    edges = [1, max(lanes - 1, 1), lanes, lanes + 1, max_length]
    rows = []
    for _ in range(count):
        length = min(int(rng.choice(edges) if rng.random() < 0.3 else rng.integers(1, max_length + 1)), max_length)
        spread = int(rng.choice([4, 600, 4096, 20000, 60000, 1 << 20]))
        offset = int(rng.integers(-(1 << 24), 1 << 24))
        rows.append(offset + rng.integers(-spread, spread + 1, length))
    return rows


async def run_rows(dut, rows: list[np.ndarray], lanes: int, max_length: int, junk: np.random.Generator,
                   rng: random.Random | None = None, **stalls):
    """Stream ``rows`` through the unit and check every output beat; returns the run and the golden rows."""
    beats = []
    for row in rows:
        padded = np.concatenate([row, junk.integers(INT32_MIN, INT32_MAX + 1, -len(row) % lanes)]).reshape(-1, lanes)
        lengths = [len(row)] + junk.integers(0, 1 << max_length.bit_length(), len(padded) - 1).tolist()
        beats += [{"i__payload": pack(beat, SCORE_BITS), "length": length} for beat, length in zip(padded, lengths)]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    want = [int_softmax(row).astype(np.int64) for row in rows]
    check_rows(run.outputs, rows, want, PROB_BITS, lanes)
    return run, want


LENGTH_CLASSES = ("1", "below lanes", "partial last beat", "full last beat", "max_length")
VALUE_CLASSES = ("constant", "INT32 extremes", "probability 127", "exp cut off to 0", "plain")


def length_class(length: int, lanes: int, max_length: int) -> str:
    if length == max_length:
        return "max_length"
    if length == 1:
        return "1"
    if length < lanes:
        return "below lanes"
    return "full last beat" if length % lanes == 0 else "partial last beat"


def value_class(row: np.ndarray, probs: np.ndarray) -> str:
    if np.all(row == row[0]):
        return "constant"
    if np.any((row == INT32_MIN) | (row == INT32_MAX)):
        return "INT32 extremes"
    if np.any(probs == 127):
        return "probability 127"
    return "exp cut off to 0" if np.any(probs == 0) else "plain"


@cocotb.test()
async def random_and_edge_rows(dut):
    """Edge rows and seeded random rows under random input gaps and output stalls."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"])
    rows = edge_rows(p["max_length"], rng) + random_rows(p["rows"], p["max_length"], p["lanes"], rng)
    await reset(dut)
    _, want = await run_rows(dut, rows, p["lanes"], p["max_length"], rng, random.Random(p["seed"]),
                             idle=0.2, stall=0.2)
    reachable = [name for name in LENGTH_CLASSES if p["lanes"] > 1 or name not in ("below lanes", "partial last beat")]
    cover("softmax.length", reachable, [length_class(len(row), p["lanes"], p["max_length"]) for row in rows])
    cover("softmax.values", VALUE_CLASSES, [value_class(row, probs) for row, probs in zip(rows, want)])
    bench_result(rows=len(rows))


@cocotb.test()
async def latency(dut):
    """Back-to-back rows with ``o.ready`` high: first input to last output, per (rows, length)."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"] + 1)
    records = []
    await reset(dut)
    for rows, length in p["cycle_cases"]:
        run, _ = await run_rows(dut, [rng.integers(-40000, 40000, length) for _ in range(rows)], p["lanes"],
                                p["max_length"], rng)
        records.append({"lanes": p["lanes"], "latency": p["latency"], "rows": rows, "length": length,
                        "cycles": run.cycles})
    bench_result(records=records)
