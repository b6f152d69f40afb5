"""MatMul cycle model: closed forms vs hand-computed cases and vs cycle-stepped schedules."""

import itertools
import re
import time

import numpy as np
import pytest

from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.sim.config import AcceleratorConfig
from intvit.sim.matmul import MatMulUnit, compute_cycles, fold_plan
from intvit.sim.topology import vit_gemms


def unit(dataflow, rows=4, cols=3, latency=2, mode="native", **changes):
    cfg = AcceleratorConfig().with_(matmul__rows=rows, matmul__cols=cols, matmul__dataflow=dataflow,
                                    matmul__latency=latency, **changes)
    return MatMulUnit(cfg, mode)


# ---------------------------------------------------------------------------------------------
# Cycle-stepped reference schedules. Registers move one PE per cycle; a fold ends when the
# last result has left the array. They also compute the product, so the schedule is a real one.


def stepped_output_stationary(a, b, rows, cols, latency):
    """OS: beat k brings A[i0+i, k] to row i (delayed i) and B[k, j0+j] to column j (delayed j).

    Folds stream back to back, one beat per cycle, as the RTL takes them: a fold's rows drain
    one per cycle once complete (row i of a fold whose last beat entered at cycle t is complete
    after cycle t + (C - 1) + latency + i), and a fold's last beat waits until the previous
    fold's last row has left. Returns the product and the cycles from the first beat to the
    last row, both counted.
    """
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.int64)
    folds = []
    for j0 in range(0, n, cols):
        for i0 in range(0, m, rows):
            a_tile = np.zeros((rows, k), dtype=np.int64)
            b_tile = np.zeros((k, cols), dtype=np.int64)
            a_tile[: min(rows, m - i0)] = a[i0:i0 + rows]
            b_tile[:, : min(cols, n - j0)] = b[:, j0:j0 + cols]
            a_reg = np.zeros((rows, cols), dtype=np.int64)
            b_reg = np.zeros((rows, cols), dtype=np.int64)
            a_ok = np.zeros((rows, cols), dtype=bool)
            b_ok = np.zeros((rows, cols), dtype=bool)
            acc = np.zeros((rows, cols), dtype=np.int64)
            macs_done = np.zeros((rows, cols), dtype=np.int64)
            cycle = 0
            while macs_done.min() < k:
                a_reg[:, 1:], a_ok[:, 1:] = a_reg[:, :-1].copy(), a_ok[:, :-1].copy()
                b_reg[1:, :], b_ok[1:, :] = b_reg[:-1, :].copy(), b_ok[:-1, :].copy()
                for i in range(rows):
                    beat = cycle - i
                    a_ok[i, 0] = 0 <= beat < k
                    a_reg[i, 0] = a_tile[i, beat] if a_ok[i, 0] else 0
                for j in range(cols):
                    beat = cycle - j
                    b_ok[0, j] = 0 <= beat < k
                    b_reg[0, j] = b_tile[beat, j] if b_ok[0, j] else 0
                both = a_ok & b_ok
                acc += np.where(both, a_reg * b_reg, 0)
                macs_done += both
                cycle += 1
            # The last MAC of PE (i, j) happens k - 1 + i + j cycles after the first beat.
            assert cycle == k + (rows - 1) + (cols - 1)
            out[i0:i0 + rows, j0:j0 + cols] = acc[: min(rows, m - i0), : min(cols, n - j0)]
            folds.append(k)
    # Timing, cycle by cycle: beats in, rows out.
    lasts = [beat == depth - 1 for depth in folds for beat in range(depth)]
    sent, drained, cycle = 0, 0, 0
    row_ready = []                      # the pending fold: the first cycle each row may leave
    last_out = None
    while drained < len(folds) * rows:
        # A last beat is refused while a drain is pending (the state at the start of the cycle).
        if sent < len(lasts) and not (lasts[sent] and row_ready):
            if lasts[sent]:
                row_ready.append([cycle + (cols - 1) + latency + 1 + i for i in range(rows)])
            sent += 1
        if row_ready and cycle >= row_ready[0][0]:
            row_ready[0].pop(0)         # one row leaves this cycle
            drained += 1
            last_out = cycle
            if not row_ready[0]:
                row_ready.pop(0)
        cycle += 1
    return out, last_out + 1


def stepped_stationary(x, s, rows, cols, latency):
    """WS/IS: S (K x P) held in the array, X (Q x K) streamed; returns X @ S and its cycles.

    Per fold: R cycles shift the stationary block in row by row; then row q of X enters array
    row i at cycle q + i and moves right one PE per cycle while partial sums move down one
    PE per cycle and leave the bottom of column j. Partial sums accumulate across K folds.
    """
    q_len, k = x.shape
    p = s.shape[1]
    out = np.zeros((q_len, p), dtype=np.int64)
    cycles = 0
    for p0 in range(0, p, cols):
        for k0 in range(0, k, rows):
            block = np.zeros((rows, cols), dtype=np.int64)
            block[: min(rows, k - k0), : min(cols, p - p0)] = s[k0:k0 + rows, p0:p0 + cols]
            held = np.zeros((rows, cols), dtype=np.int64)
            cycle = 0
            for step in range(rows):
                held[1:] = held[:-1].copy()
                held[0] = block[rows - 1 - step]
                cycle += 1
            assert (held == block).all()
            stream = np.zeros((q_len, rows), dtype=np.int64)
            stream[:, : min(rows, k - k0)] = x[:, k0:k0 + rows]
            x_reg = np.zeros((rows, cols), dtype=np.int64)
            x_ok = np.zeros((rows, cols), dtype=bool)
            psum = np.zeros((rows, cols), dtype=np.int64)
            fold_out = np.zeros((q_len, cols), dtype=np.int64)
            collected = 0
            tick = 0
            while collected < q_len * cols:
                x_reg[:, 1:], x_ok[:, 1:] = x_reg[:, :-1].copy(), x_ok[:, :-1].copy()
                for i in range(rows):
                    row = tick - i
                    x_ok[i, 0] = 0 <= row < q_len
                    x_reg[i, 0] = stream[row, i] if x_ok[i, 0] else 0
                incoming = np.vstack([np.zeros((1, cols), dtype=np.int64), psum[:-1]])
                psum = incoming + np.where(x_ok, x_reg * held, 0)
                for j in range(cols):
                    if x_ok[rows - 1, j]:
                        fold_out[tick - (rows - 1) - j, j] = psum[rows - 1, j]
                        collected += 1
                tick += 1
            cycle += tick + latency
            out[:, p0:p0 + cols] += fold_out[:, : min(cols, p - p0)]
            cycles += cycle
    return out, cycles


SMALL_SHAPES = [(1, 1, 1), (4, 3, 5), (5, 6, 7), (8, 3, 6), (3, 9, 2), (7, 4, 4)]
ARRAYS = [(4, 3), (2, 2), (1, 3), (3, 1)]


@pytest.mark.parametrize("m,k,n", SMALL_SHAPES)
@pytest.mark.parametrize("rows,cols", ARRAYS)
def test_native_matches_stepped_schedule(m, k, n, rows, cols):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = rng.integers(-128, 128, size=(m, k))
    b = rng.integers(-128, 128, size=(k, n))
    latency = 2
    product, os_cycles = stepped_output_stationary(a, b, rows, cols, latency)
    assert (product == a @ b).all()
    assert compute_cycles(m, k, n, rows, cols, "os", "native", latency) == os_cycles
    product, ws_cycles = stepped_stationary(a, b, rows, cols, latency)
    assert (product == a @ b).all()
    assert compute_cycles(m, k, n, rows, cols, "ws", "native", latency) == ws_cycles
    product_t, is_cycles = stepped_stationary(b.T, a.T, rows, cols, latency)
    assert (product_t == (a @ b).T).all()
    assert compute_cycles(m, k, n, rows, cols, "is", "native", latency) == is_cycles


# Hand-computed: M=5, K=6, N=7 on a 4 x 3 array, latency 2.
#   os: folds ceil(5/4)*ceil(7/3) = 6, fold 6 + 4 + 2 + 2 = 14, period max(6, 4 + 3 + 2) = 9
#                                                                            -> 14 + 5 * 9 = 59
#   ws: folds ceil(6/4)*ceil(7/3) = 6, fold 4 + 5 + 3 + 2 + 2 = 16           -> 96
#   is: folds ceil(6/4)*ceil(5/3) = 4, fold 4 + 7 + 3 + 2 + 2 = 18           -> 72
# SCALE-Sim (its reports, checked in test_scalesim): os 6*(4+3+6-2)-1 = 65,
#   ws 6*(8+3+5-2)-1 = 83, is 4*(8+3+7-2)-1 = 63.
@pytest.mark.parametrize("dataflow,native,scalesim", [("os", 59, 65), ("ws", 96, 83), ("is", 72, 63)])
def test_hand_computed(dataflow, native, scalesim):
    assert unit(dataflow).compute_cycles(5, 6, 7) == native
    assert unit(dataflow, mode="scalesim").compute_cycles(5, 6, 7) == scalesim


def test_scalesim_mode_ignores_latency():
    assert unit("os", latency=7, mode="scalesim").compute_cycles(5, 6, 7) == 65


def test_fold_plan_mapping():
    assert [(p.spatial_rows, p.spatial_cols, p.temporal) for p in
            (fold_plan(5, 6, 7, 4, 3, df) for df in ("os", "ws", "is"))] == [(5, 7, 6), (6, 7, 5), (6, 5, 7)]
    plan = fold_plan(5, 6, 7, 4, 3, "os")
    assert (plan.row_folds, plan.col_folds, plan.rows_used(1), plan.cols_used(2)) == (2, 3, 1, 1)


def test_utilization():
    report = unit("os", rows=4, cols=4, latency=0).layer(4, 8, 4)
    # One fold: 8 + 4 + 3 = 15 cycles for 128 MACs on 16 PEs.
    assert report.compute_cycles == 15
    assert report.compute_utilization == pytest.approx(128 / (15 * 16))
    # Back to back, a fold of K >= R + C + L costs K: 16 folds of K = 64 on 16 PEs.
    report = unit("os", rows=4, cols=4, latency=1).layer(16, 64, 16)
    assert report.compute_cycles == (64 + 4 + 3 + 1) + 15 * 64


def test_traffic_when_everything_fits():
    report = unit("os", rows=4, cols=3, mode="native").layer(5, 6, 7, name="fc")
    assert (report.a_sram_reads, report.b_sram_reads, report.out_sram_writes) == (3 * 30, 2 * 42, 35 * 4)
    assert (report.a_dram_bytes, report.b_dram_bytes, report.out_dram_bytes) == (30, 42, 140)
    assert report.a_fits and report.b_fits and report.out_fits
    assert report.memory_cycles == -(-212 // 16)
    assert report.bound == "compute" and report.cycles == report.compute_cycles


def test_refetch_and_memory_bound():
    # A (64 x 64 = 4096 B) does not fit a 2 KiB ifmap buffer: re-read once per column fold.
    u = unit("os", rows=4, cols=4, latency=0, buffers__ifmap_bytes=2048, memory__bandwidth_bytes_per_cycle=1)
    report = u.layer(64, 64, 16)
    assert not report.a_fits
    assert report.a_dram_bytes == 4 * 64 * 64
    assert report.memory_cycles == report.a_dram_bytes + 64 * 16 + 64 * 16 * 4
    assert report.bound == "memory" and report.cycles == report.memory_cycles
    assert report.stall_cycles == report.memory_cycles - report.compute_cycles


def test_partial_sums_spill_in_weight_stationary():
    # WS keeps M x C partial sums (INT32); 100 x 4 x 4 = 1600 B does not fit 1 KiB: 2*Kf - 1 passes.
    u = unit("ws", rows=4, cols=4, buffers__ofmap_bytes=1024)
    report = u.layer(100, 12, 4)
    assert not report.out_fits
    assert report.out_dram_bytes == (2 * 3 - 1) * 100 * 4 * 4


def test_tile_too_big_is_reported():
    u = unit("os", rows=16, cols=16, buffers__ifmap_bytes=1024)
    message = ("layer block0.fc2: ifmap buffer of 1024 bytes cannot hold one A tile of 12288 bytes "
               "(os on a 16x16 array); enlarge buffers.ifmap_bytes")
    with pytest.raises(IntVitError, match=f"^{re.escape(message)}$"):
        u.layer(197, 768, 192, name="block0.fc2")
    # SCALE-Sim streams what does not fit instead of refusing the layer.
    streamed = unit("os", rows=16, cols=16, mode="scalesim", buffers__ifmap_bytes=1024).layer(197, 768, 192)
    assert streamed.a_dram_bytes == streamed.a_sram_reads


def test_bad_shapes_and_modes():
    with pytest.raises(IntVitError, match=r"^GEMM K must be a positive integer, not 0$"):
        compute_cycles(4, 0, 4, 4, 4, "os")
    with pytest.raises(IntVitError, match=r"^mode must be one of native, scalesim, not 'rtl'$"):
        MatMulUnit(AcceleratorConfig(), "rtl")


def test_vit_base_all_dataflows_is_fast():
    gemms = vit_gemms(get_config("deit-base"))
    units = [unit(df, rows=16, cols=16, mode=mode) for df, mode in itertools.product(("os", "ws", "is"), ("native", "scalesim"))]
    start = time.perf_counter()
    totals = [sum(u.layer(g.m, g.k, g.n, name=g.name).cycles for g in gemms) for u in units]
    assert time.perf_counter() - start < 1.0
    assert all(total > 0 for total in totals)
