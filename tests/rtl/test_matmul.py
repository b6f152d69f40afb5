"""MatMulArray: parameter checks, an Amaranth-simulator fold, and the cocotb bench with latency records."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from intvit.quant.errors import IntVitError
from intvit.quant.matmul import int_matmul
from intvit.rtl.matmul import MatMulArray
from runner import check_cycles

# (rows, cols, random jobs): shapes with R != C, a 1 x 1 array, and a square one (2 x 3 under -m slow:
# 3 x 5 has R != C too, and the default suite runs close to its 15 minutes).
BENCH_SHAPES = [(1, 1, 24), pytest.param(2, 3, 30, marks=pytest.mark.slow), (4, 4, 30), (3, 5, 24)]
MAX_K = 300


def cycle_jobs(rows: int, cols: int) -> list[dict]:
    """Single folds of several depths, then multi-fold products with partial blocks."""
    return ([{"m": rows, "k": k, "n": cols} for k in (1, 8, 33)]
            + [{"m": 2 * rows + 1, "k": 16, "n": 3 * cols}, {"m": 3 * rows, "k": 5, "n": cols + 1},
               {"m": 2 * rows, "k": 64, "n": 2 * cols}])


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 0, "cols": 2}, r"^rows must be a positive integer, not 0$"),
    ({"rows": 2, "cols": -1}, r"^cols must be a positive integer, not -1$"),
    ({"rows": 2.0, "cols": 2}, r"^rows must be a positive integer, not 2\.0$"),
])
def test_matmul_rejects_bad_shape(kwargs, message):
    with pytest.raises(IntVitError, match=message):
        MatMulArray(**kwargs)


def test_matmul_exposes_parameters():
    array = MatMulArray(rows=3, cols=5)
    assert (array.rows, array.cols, MatMulArray.LATENCY) == (3, 5, 1)
    assert MatMulArray.fold_cycles(3, 5, 7) == 7 + 3 + 4 + 1
    assert (MatMulArray.fold_period(3, 5, 7), MatMulArray.fold_period(3, 5, 64)) == (3 + 5 + 1, 64)
    with pytest.raises(AttributeError):
        array.rows = 4


def test_matmul_fold_in_amaranth_sim():
    rows, cols, depth = 2, 3, 4
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, size=(rows, depth), dtype=np.int8)
    b = rng.integers(-128, 128, size=(depth, cols), dtype=np.int8)
    bias = np.array([-5, 0, 9], dtype=np.int32)
    dut = MatMulArray(rows=rows, cols=cols)
    got, cycles = [], {}

    async def testbench(ctx):
        cycle = 0
        for k in range(depth):
            ctx.set(dut.operands.valid, 1)
            ctx.set(dut.operands.payload, {"a": a[:, k].tolist(), "b": b[k].tolist(),
                                           "bias": bias.tolist(), "last": k == depth - 1})
            assert ctx.get(dut.operands.ready)
            cycles.setdefault("first", cycle)
            await ctx.tick()
            cycle += 1
        ctx.set(dut.operands.valid, 0)
        ctx.set(dut.results.ready, 1)
        while len(got) < rows:
            if ctx.get(dut.results.valid):
                payload = ctx.get(dut.results.payload)
                got.append([payload.data[j] for j in range(cols)])
                cycles["last"] = cycle
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert np.array_equal(np.array(got), int_matmul(a, b, bias))
    assert cycles["last"] - cycles["first"] + 1 == MatMulArray.fold_cycles(rows, cols, depth)


def test_back_to_back_folds_overlap_in_amaranth_sim():
    # Folds of depths below and above R + C + 1 streamed back to back: each fold's drain overlaps
    # the next fold's beats, so the total is one fold plus a period per further fold.
    rows, cols, depths = 3, 4, (1, 2, 5, 9, 12, 1, 20)
    rng = np.random.default_rng(3)
    jobs = [(rng.integers(-128, 128, size=(rows, k), dtype=np.int8), rng.integers(-128, 128, size=(k, cols), dtype=np.int8),
             rng.integers(-1000, 1000, size=cols, dtype=np.int32)) for k in depths]
    beats = [{"a": a[:, k].tolist(), "b": b[k].tolist(), "bias": bias.tolist() if k == 0 else [0] * cols,
              "last": k == a.shape[1] - 1} for a, b, bias in jobs for k in range(a.shape[1])]
    dut = MatMulArray(rows=rows, cols=cols)
    got, cycles = [], {}

    async def testbench(ctx):
        ctx.set(dut.results.ready, 1)
        sent = cycle = 0
        while len(got) < rows * len(jobs):
            assert cycle < 1000, f"stuck: {sent}/{len(beats)} beats in, {len(got)} rows out"
            if sent < len(beats):
                ctx.set(dut.operands.payload, beats[sent])
            ctx.set(dut.operands.valid, sent < len(beats))
            taken = sent < len(beats) and ctx.get(dut.operands.ready)
            if taken:
                cycles.setdefault("first", cycle)
            if ctx.get(dut.results.valid):
                payload = ctx.get(dut.results.payload)
                got.append([payload.data[j] for j in range(cols)])
                cycles["last"] = cycle
            await ctx.tick()
            sent += bool(taken)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert np.array_equal(np.array(got), np.concatenate([int_matmul(*job) for job in jobs]))
    assert cycles["last"] - cycles["first"] + 1 == (MatMulArray.fold_cycles(rows, cols, depths[0])
                                                    + sum(MatMulArray.fold_period(rows, cols, k) for k in depths[1:]))


@pytest.mark.parametrize("rows, cols, random_jobs", BENCH_SHAPES)
def test_matmul_bench_matches_int_matmul(bench, rows, cols, random_jobs):
    jobs = cycle_jobs(rows, cols)
    run = bench(MatMulArray(rows=rows, cols=cols), toplevel="matmul_array", test_module="bench_matmul",
                params={"rows": rows, "cols": cols, "seed": 1000 * rows + cols, "max_k": MAX_K,
                        "random_jobs": random_jobs, "cycle_jobs": jobs})
    records = [{"rows": rows, "cols": cols, **job, "latency": MatMulArray.LATENCY, "cycles": cycles}
               for job, cycles in zip(jobs, run["cycles"])]
    # The RTL's declared fold timing against its measured cycles.
    for record in records:
        folds = -(-record["m"] // rows) * -(-record["n"] // cols)
        assert record["cycles"] == (MatMulArray.fold_cycles(rows, cols, record["k"])
                                    + (folds - 1) * MatMulArray.fold_period(rows, cols, record["k"])), record
    check_cycles("matmul", records)
