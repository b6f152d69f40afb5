"""cocotb bench for ``rtl.matmul.MatMulArray`` against ``quant.matmul.int_matmul`` (with bias).

Jobs are whole products ``A (M, K) @ B (K, N) + bias (N,)`` tiled into ``R x C`` folds (column
blocks outer, row blocks inner, as ``sim.matmul`` walks them; partial blocks padded with zeros).
Driver and monitor: ``bench_streams.stream_through`` (one operand beat per cycle; in the
correctness phase ``valid`` and ``ready`` drop at random). Model: ``int_matmul`` of each job.
Checker: every result element and every ``last`` flag, bit for bit.

A second phase runs the ``cycle_jobs`` with no stalls and hands back, per job, the cycles
from the first operand beat accepted to the last result row delivered, both included.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np

from bench_streams import cover, pack, reset, stream_through, unpack
from intvit.quant.matmul import MAX_PRODUCT, int_matmul
from intvit.quant.requant import INT32_MAX
from runner import bench_params, bench_result

STALL_PROBABILITY = 0.25
SAFE_BIAS = 2**20


def tile(a: np.ndarray, b: np.ndarray, bias: np.ndarray, rows: int, cols: int) -> list[int]:
    """Operand payload words of every fold of ``a @ b + bias``, zero-padded to R x C blocks."""
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
            bias_word = pack(bias_pad[c0:c0 + cols], 32)
            for step in range(k):
                # StructLayout order, low bits first: a (8R), b (8C), bias (32C), last (1).
                word = (pack(a_pad[r0:r0 + rows, step], 8)
                        | pack(b_pad[step, c0:c0 + cols], 8) << (8 * rows)
                        | (bias_word if step == 0 else 0) << (8 * (rows + cols))
                        | int(step == k - 1) << (8 * (rows + cols) + 32 * cols))
                beats.append(word)
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
                out[r0 + i, c0:c0 + cols] = unpack(word, 32, cols)
                lasts.append((word >> (32 * cols)) & 1)
                index += 1
    return out[:m, :n], lasts


def random_job(rng: np.random.Generator, rows: int, cols: int, max_k: int):
    """A product of 1 to 3 row and column blocks; K short (1-16), medium or long (256 and up) a third each."""
    m = int(rng.integers(1, 2 * rows + 2))
    n = int(rng.integers(1, 2 * cols + 2))
    k = int(rng.choice([rng.integers(1, 17), rng.integers(17, 256), rng.integers(256, max_k + 1)]))
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    if rng.random() < 0.2:
        a[rng.integers(m)] = 0                          # an all-zero row
    bias = rng.integers(-SAFE_BIAS, SAFE_BIAS, size=n, dtype=np.int32)
    return a, b, bias


def full(shape: tuple[int, int], value: int) -> np.ndarray:
    return np.full(shape, value, dtype=np.int8)


def edge_jobs(rows: int, cols: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sums at the INT32 limits int_matmul accepts, extreme operands, K = 1, zeros, whole blocks of K = 256."""
    k = 64
    m, n = rows + 1, cols + 1
    top = np.full(n, INT32_MAX - k * MAX_PRODUCT, dtype=np.int32)
    bottom = np.full(n, -INT32_MAX + k * MAX_PRODUCT, dtype=np.int32)
    return [
        (full((m, k), -128), full((k, n), -128), top),             # every output is INT32_MAX
        (full((m, k), 127), full((k, n), -128), bottom),           # every output is -INT32_MAX + 128 K
        (full((m, 1), -128), full((1, n), 127), np.zeros(n, dtype=np.int32)),
        (full((m, 5), 0), full((5, n), -128), np.arange(n, dtype=np.int32) - n // 2),
        (full((2 * rows, 256), 127), full((256, 2 * cols), 127), np.zeros(2 * cols, dtype=np.int32)),  # whole blocks
    ]


def check_job(index: int, job, rows_out: list[int], rows: int, cols: int) -> None:
    """Compare one job's result rows and ``last`` flags with ``int_matmul``."""
    a, b, bias = job
    m, n = a.shape[0], b.shape[1]
    got, lasts = untile(rows_out, m, n, rows, cols)
    expected = int_matmul(a, b, bias)
    bad = np.argwhere(got != expected)
    assert bad.size == 0, (f"job {index} (M={m}, K={a.shape[1]}, N={n}): first mismatch at {bad[0].tolist()}: "
                           f"got {got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}")
    assert lasts == ([0] * (rows - 1) + [1]) * folds(job, rows, cols), f"job {index}: last flags {lasts}"


def folds(job, rows: int, cols: int) -> int:
    return -(-job[0].shape[0] // rows) * -(-job[1].shape[1] // cols)


async def stream_jobs(dut, jobs, rows: int, cols: int, rng: random.Random | None):
    """Stream ``jobs`` back to back (stalling at random with ``rng``) and check every result."""
    beats = [{"operands__payload": word} for job in jobs for word in tile(*job, rows, cols)]
    run = await stream_through(dut, beats, sum(folds(job, rows, cols) for job in jobs) * rows,
                               source="operands", sink="results", rng=rng, idle=STALL_PROBABILITY,
                               stall=STALL_PROBABILITY)
    row0 = 0
    for index, job in enumerate(jobs):
        job_rows = folds(job, rows, cols) * rows
        check_job(index, job, run.outputs[row0:row0 + job_rows], rows, cols)
        row0 += job_rows
    return run


DEPTH_CLASSES = ("K = 1", "K 2-16", "K 17-255", "K >= 256")
BLOCK_CLASSES = ("whole blocks", "partial row block", "partial column block", "both partial")


def depth_class(k: int) -> str:
    return "K = 1" if k == 1 else "K 2-16" if k <= 16 else "K 17-255" if k < 256 else "K >= 256"


def block_class(m: int, n: int, rows: int, cols: int) -> str:
    partial = (m % rows != 0, n % cols != 0)
    return {(False, False): "whole blocks", (True, False): "partial row block",
            (False, True): "partial column block", (True, True): "both partial"}[partial]


@cocotb.test()
async def matmul_matches_int_matmul(dut):
    params = bench_params()
    rows, cols = params["rows"], params["cols"]
    rng = np.random.default_rng(params["seed"])
    dut.operands__valid.value = 0
    dut.results__ready.value = 0
    await reset(dut)

    jobs = edge_jobs(rows, cols) + [random_job(rng, rows, cols, params["max_k"]) for _ in range(params["random_jobs"])]
    await stream_jobs(dut, jobs, rows, cols, random.Random(params["seed"]))
    cover("matmul.depth", DEPTH_CLASSES, [depth_class(a.shape[1]) for a, _, _ in jobs])
    shapes = {block_class(m, n, rows, cols) for m in range(1, 2 * rows + 2) for n in range(1, 2 * cols + 2)}
    blocks = [name for name in BLOCK_CLASSES if name in shapes]         # a 1 x 1 array has whole blocks only
    cover("matmul.blocks", blocks, [block_class(a.shape[0], b.shape[1], rows, cols) for a, b, _ in jobs])

    cycles = []
    for spec in params["cycle_jobs"]:
        m, k, n = spec["m"], spec["k"], spec["n"]
        job = (rng.integers(-128, 128, size=(m, k), dtype=np.int8),
               rng.integers(-128, 128, size=(k, n), dtype=np.int8),
               rng.integers(-SAFE_BIAS, SAFE_BIAS, size=n, dtype=np.int32))
        cycles.append((await stream_jobs(dut, [job], rows, cols, None)).cycles)
    bench_result(cycles=cycles, elements=int(sum(a.shape[0] * b.shape[1] for a, b, _ in jobs)))
