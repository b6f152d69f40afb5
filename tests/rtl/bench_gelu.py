"""cocotb bench for ``rtl.gelu.Gelu``: seeded random and edge Q.10 inputs against ``int_gelu``, and latency.

Parameters (``bench_params``): ``lanes``, ``latency``, ``seed``, ``vectors`` (random inputs
besides the edge cases) and ``cycle_elements`` (element counts to time). Hands back
``records``: ``{"lanes", "latency", "elements", "cycles"}`` for ``sim.gelu.gelu_cycles``.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from bench_streams import pack, reset, stream_through, unpack
from runner import bench_params, bench_result

from intvit.quant.gelu import ERF_CLIP, GELU_INPUT_BITS, GELU_INPUT_FRAC_BITS, int_gelu

OUTPUT_BITS = 32
LOW, HIGH = -(1 << (GELU_INPUT_BITS - 1)), (1 << (GELU_INPUT_BITS - 1)) - 1
EDGES = [LOW, LOW + 1, HIGH, HIGH - 1, 0, 1, -1, 2, -2, -128, 127, 1 << GELU_INPUT_FRAC_BITS,
         -(1 << GELU_INPUT_FRAC_BITS), ERF_CLIP, -ERF_CLIP, ERF_CLIP + 1, -ERF_CLIP - 1, ERF_CLIP - 1, 1 - ERF_CLIP]


async def run_elements(dut, x: np.ndarray, lanes: int, rng: random.Random | None = None, **stalls):
    """Stream ``x`` through the unit (zero-padded to whole beats); outputs and the run record."""
    padded = np.concatenate([x, np.zeros(-len(x) % lanes, dtype=np.int64)]).reshape(-1, lanes)
    beats = [{"i__payload": pack(row, GELU_INPUT_BITS)} for row in padded]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    got = np.concatenate([unpack(w, OUTPUT_BITS, lanes) for w in run.outputs])[:len(x)]
    return got, run


def check(x: np.ndarray, got: np.ndarray) -> None:
    want = int_gelu(x).astype(np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} mismatches, first x={x[bad[0]]}: got {got[bad[0]]}, want {want[bad[0]]}"


@cocotb.test()
async def random_and_edge_vectors(dut):
    """Edge inputs and seeded random ones (full range and the curved region) under random stalls."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"])
    count = p["vectors"]
    x = np.concatenate([
        np.array(EDGES, dtype=np.int64),
        rng.integers(LOW, HIGH + 1, count // 2),
        rng.integers(-3 * ERF_CLIP, 3 * ERF_CLIP, count - count // 2),
    ])
    await reset(dut)
    got, _ = await run_elements(dut, x, p["lanes"], random.Random(p["seed"]), idle=0.2, stall=0.2)
    check(x, got)


@cocotb.test()
async def latency(dut):
    """Back-to-back beats with ``o.ready`` high: first input to last output, per element count."""
    p = bench_params()
    rng = np.random.default_rng(p["seed"] + 1)
    records = []
    await reset(dut)
    for elements in p["cycle_elements"]:
        x = rng.integers(LOW, HIGH + 1, elements)
        got, run = await run_elements(dut, x, p["lanes"])
        check(x, got)
        records.append({"lanes": p["lanes"], "latency": p["latency"], "elements": elements, "cycles": run.cycles})
    bench_result(records=records)
