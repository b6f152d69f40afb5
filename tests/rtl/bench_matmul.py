"""cocotb bench for ``rtl.matmul.MatMulArray`` against ``quant.matmul.int_matmul`` (with bias).

Jobs are whole products ``A (M, K) @ B (K, N) + bias (N,)`` tiled into ``R x C`` folds (column
blocks outer, row blocks inner, as ``sim.matmul`` walks them; partial blocks padded with zeros).
Driver: one operand beat per cycle, dropping ``valid`` at random in the correctness phase.
Monitor: takes result rows, dropping ``ready`` at random in the correctness phase. Model:
``int_matmul`` of each job. Checker: every result element and every ``last`` flag, bit for bit.

A second phase runs the ``cycle_jobs`` with no stalls and hands back, per job, the cycles
from the first operand beat accepted to the last result row delivered, both included.
"""

from __future__ import annotations

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly
from cocotb.utils import get_sim_time

from quant.matmul import MAX_PRODUCT, int_matmul
from quant.requant import INT32_MAX
from runner import bench_params, bench_result, concat, pack_lanes, unpack_lanes

CLOCK_NS = 10
STALL_PROBABILITY = 0.25
SAFE_BIAS = 2**20


def cycle_now() -> int:
    return int(get_sim_time("ns")) // CLOCK_NS


def tile(a: np.ndarray, b: np.ndarray, bias: np.ndarray, rows: int, cols: int) -> list[tuple[int, bool]]:
    """Operand beats (payload word, last) of every fold of ``a @ b + bias``, zero-padded to R x C blocks."""
    m, k = a.shape
    n = b.shape[1]
    pad_m, pad_n = -(-m // rows) * rows, -(-n // cols) * cols
    a_pad = np.zeros((pad_m, k), dtype=np.int64)
    b_pad = np.zeros((k, pad_n), dtype=np.int64)
    bias_pad = np.zeros(pad_n, dtype=np.int64)
    a_pad[:m], b_pad[:, :n], bias_pad[:n] = a, b, bias
    beats = []
    for c0 in range(0, pad_n, cols):
        for r0 in range(0, pad_m, rows):
            bias_word = pack_lanes(bias_pad[c0:c0 + cols], 32)
            for step in range(k):
                beats.append((concat((pack_lanes(a_pad[r0:r0 + rows, step], 8), 8 * rows),
                                     (pack_lanes(b_pad[step, c0:c0 + cols], 8), 8 * cols),
                                     (bias_word if step == 0 else 0, 32 * cols),
                                     (step == k - 1, 1)), step == k - 1))
    return beats


def untile(rows_out: list[int], m: int, n: int, rows: int, cols: int) -> tuple[np.ndarray, list[int]]:
    """Reassemble result rows into ``(M, N)`` and list their ``last`` flags."""
    pad_m, pad_n = -(-m // rows) * rows, -(-n // cols) * cols
    out = np.zeros((pad_m, pad_n), dtype=np.int64)
    lasts, index = [], 0
    for c0 in range(0, pad_n, cols):
        for r0 in range(0, pad_m, rows):
            for i in range(rows):
                word = rows_out[index]
                out[r0 + i, c0:c0 + cols] = unpack_lanes(word, 32, cols)
                lasts.append((word >> (32 * cols)) & 1)
                index += 1
    return out[:m, :n], lasts


def random_job(rng: np.random.Generator, rows: int, cols: int, max_k: int):
    m = int(rng.integers(1, 2 * rows + 2))
    n = int(rng.integers(1, 2 * cols + 2))
    k = int(rng.integers(1, max_k + 1))
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    if rng.random() < 0.2:
        a[rng.integers(m)] = 0                          # an all-zero row
    bias = rng.integers(-SAFE_BIAS, SAFE_BIAS, size=n, dtype=np.int32)
    return a, b, bias


def full(shape: tuple[int, int], value: int) -> np.ndarray:
    return np.full(shape, value, dtype=np.int8)


def edge_jobs(rows: int, cols: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sums at the INT32 limits int_matmul accepts, extreme operands, K = 1, zeros."""
    k = 64
    m, n = rows + 1, cols + 1
    top = np.full(n, INT32_MAX - k * MAX_PRODUCT, dtype=np.int32)
    bottom = np.full(n, -INT32_MAX + k * MAX_PRODUCT, dtype=np.int32)
    return [
        (full((m, k), -128), full((k, n), -128), top),             # every output is INT32_MAX
        (full((m, k), 127), full((k, n), -128), bottom),           # every output is -INT32_MAX + 128 K
        (full((m, 1), -128), full((1, n), 127), np.zeros(n, dtype=np.int32)),
        (full((m, 5), 0), full((5, n), -128), np.arange(n, dtype=np.int32) - n // 2),
    ]


async def run_jobs(dut, jobs, rows: int, cols: int, stall: float, rng) -> list[tuple[int, int]]:
    """Stream ``jobs`` through the array; check results; return (first accept, last delivery) cycles per job."""
    beats, job_of_beat = [], []
    for index, (a, b, bias) in enumerate(jobs):
        job_beats = tile(a, b, bias, rows, cols)
        beats += job_beats
        job_of_beat += [index] * len(job_beats)
    folds = [-(-a.shape[0] // rows) * -(-b.shape[1] // cols) for a, b, _ in jobs]
    total_rows = sum(folds) * rows
    budget = int((len(beats) + sum(folds) * (2 * rows + cols + 2)) / (1 - stall) ** 2) + 100
    accepted, delivered, rows_out = [], [], []

    async def driver():
        index = 0
        while index < len(beats):
            await FallingEdge(dut.clk)
            valid = rng.random() >= stall
            dut.operands__valid.value = int(valid)
            dut.operands__payload.value = beats[index][0]
            await ReadOnly()
            if valid and int(dut.operands__ready.value):
                accepted.append(cycle_now())
                index += 1
        await FallingEdge(dut.clk)
        dut.operands__valid.value = 0

    async def monitor():
        start = cycle_now()
        while len(rows_out) < total_rows:
            await FallingEdge(dut.clk)
            ready = rng.random() >= stall
            dut.results__ready.value = int(ready)
            await ReadOnly()
            if ready and int(dut.results__valid.value):
                rows_out.append(dut.results__payload.value.to_unsigned())
                delivered.append(cycle_now())
            assert cycle_now() - start < budget, f"no progress: {len(rows_out)} of {total_rows} rows in {budget} cycles"
        await FallingEdge(dut.clk)
        dut.results__ready.value = 0

    drive = cocotb.start_soon(driver())
    await monitor()
    await drive

    spans, row0, beat0 = [], 0, 0
    for index, (a, b, bias) in enumerate(jobs):
        m, n = a.shape[0], b.shape[1]
        job_rows = folds[index] * rows
        got, lasts = untile(rows_out[row0:row0 + job_rows], m, n, rows, cols)
        expected = int_matmul(a, b, bias)
        bad = np.argwhere(got != expected)
        assert bad.size == 0, (f"job {index} (M={m}, K={a.shape[1]}, N={n}): first mismatch at {bad[0].tolist()}: "
                               f"got {got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}")
        assert lasts == ([0] * (rows - 1) + [1]) * folds[index], f"job {index}: last flags {lasts}"
        job_beats = job_of_beat.count(index)
        spans.append((accepted[beat0], delivered[row0 + job_rows - 1]))
        row0 += job_rows
        beat0 += job_beats
    return spans


@cocotb.test()
async def matmul_matches_int_matmul(dut):
    params = bench_params()
    rows, cols = params["rows"], params["cols"]
    rng = np.random.default_rng(params["seed"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    dut.operands__valid.value = 0
    dut.results__ready.value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    jobs = edge_jobs(rows, cols) + [random_job(rng, rows, cols, params["max_k"]) for _ in range(params["random_jobs"])]
    await run_jobs(dut, jobs, rows, cols, STALL_PROBABILITY, rng)

    cycle_jobs = []
    for spec in params["cycle_jobs"]:
        m, k, n = spec["m"], spec["k"], spec["n"]
        cycle_jobs.append((rng.integers(-128, 128, size=(m, k), dtype=np.int8),
                           rng.integers(-128, 128, size=(k, n), dtype=np.int8),
                           rng.integers(-SAFE_BIAS, SAFE_BIAS, size=n, dtype=np.int32)))
    spans = await run_jobs(dut, cycle_jobs, rows, cols, 0.0, rng)
    bench_result(cycles=[last - first + 1 for first, last in spans],
                 elements=int(sum(a.shape[0] * b.shape[1] for a, b, _ in jobs)))
