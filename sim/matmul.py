"""Cycle and data-movement model of the systolic MatMul unit, in closed form.

An (M x K) @ (K x N) product runs on an R x C array in *folds*: each fold maps a block of
two of the three GEMM dimensions onto the array (the spatial dimensions S_R, S_C) and
streams the third (the temporal dimension T) through it. Which is which depends on the
dataflow, exactly as SCALE-Sim v2 maps a GEMM (``topology_utils.calc_spatio_temporal_params``)::

    dataflow   stationary      S_R   S_C   T    folds
    os         outputs         M     N     K    ceil(M/R) * ceil(N/C)
    ws         weights (B)     K     N     M    ceil(K/R) * ceil(N/C)
    is         inputs (A)      K     M     N    ceil(K/R) * ceil(M/C)

A partial block costs a full fold. Folds run back to back and never overlap. Folds are
walked column-fold outer, row-fold inner (SCALE-Sim's order), which decides operand reuse.

Two counting conventions (``mode``):

``native``: what our RTL does, with L = ``matmul.latency`` pipeline stages. For OS (the
RTL's ``MatMulArray``) each PE copies its finished sum to a result register on the fold's last
term, so a fold's R result rows drain while the next fold streams in; the next fold's last
beat waits for the drain to end. One fold alone, and the period of back-to-back folds::

    os:  fold = T + R + (C-1) + L          stream K beats, skew, drain R rows as they complete
         period = max(T, R + C + L)        the drain of a fold hides under the next fold's beats

and a product of F folds streamed back to back takes ``fold + (F - 1) * period``: about K
cycles per fold once K >= R + C + L. WS and IS (no RTL) keep non-overlapping folds::

    ws:  R + T + (R-1) + (C-1) + L         preload R weight rows, stream M rows, skew fill/flush
    is:  R + T + (R-1) + (C-1) + L         preload R input rows, stream N columns, skew fill/flush

(the SCALE-Sim paper's fold length 2*S_R + S_C + T - 2, plus latency; period = fold).

``scalesim``: SCALE-Sim v2.0.2's code, which differs from its paper for OS. Its compute
classes build per-fold demand matrices of ``R + C + T - 2`` rows for OS (the drain of the
R accumulator rows overlaps the skew, unlike the paper) and ``2R + C + T - 2`` rows for
WS and IS; the memory system reports the cycle of the last demand row, i.e. the row count
minus one::

    os:      folds * (R + C + T - 2) - 1
    ws, is:  folds * (2R + C + T - 2) - 1

Data movement counts INT8 operands as one byte and outputs as ``out_bytes`` each (INT32
accumulators, 4, in native mode; SCALE-Sim's one-byte word in scalesim mode). An operand
that fits its whole buffer is fetched from off-chip once; one that does not is re-fetched
for every fold pass that reuses it. Buffers are double-buffered, so memory transfers overlap
compute and a layer takes ``max(compute_cycles, memory_cycles)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from intvit.quant.errors import IntVitError
from intvit.sim.config import DATAFLOWS, AcceleratorConfig

__all__ = [
    "MODES",
    "FoldPlan",
    "MatMulReport",
    "MatMulUnit",
    "fold_plan",
    "fold_cycles",
    "fold_period",
    "compute_cycles",
]

MODES = ("native", "scalesim")
OPERAND_BYTES = 1  # INT8 activations and weights
ACCUMULATOR_BYTES = 4  # INT32 results drained from the array
SCALESIM_WORD_BYTES = 1  # SCALE-Sim counts every element as one one-byte word


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_dims(m: int, k: int, n: int) -> None:
    for name, value in (("M", m), ("K", k), ("N", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise IntVitError(f"GEMM {name} must be a positive integer, not {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise IntVitError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class FoldPlan:
    """How one GEMM is cut into folds on an R x C array.

    Attributes
    ----------
    dataflow : str
    spatial_rows, spatial_cols, temporal : int
        S_R (mapped on array rows), S_C (on array columns), T (streamed in time).
    rows, cols : int
        The array size R x C.
    row_folds, col_folds : int
        ``ceil(S_R / R)`` and ``ceil(S_C / C)``.
    """

    dataflow: str
    spatial_rows: int
    spatial_cols: int
    temporal: int
    rows: int
    cols: int

    @property
    def row_folds(self) -> int:
        return _ceil_div(self.spatial_rows, self.rows)

    @property
    def col_folds(self) -> int:
        return _ceil_div(self.spatial_cols, self.cols)

    @property
    def folds(self) -> int:
        return self.row_folds * self.col_folds

    def rows_used(self, row_fold: int) -> int:
        """Array rows holding real data in row fold ``row_fold`` (the last may be partial)."""
        return min(self.rows, self.spatial_rows - row_fold * self.rows)

    def cols_used(self, col_fold: int) -> int:
        return min(self.cols, self.spatial_cols - col_fold * self.cols)


def fold_plan(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> FoldPlan:
    """Map an (M x K) @ (K x N) GEMM onto an R x C array the way SCALE-Sim v2 does."""
    _check_dims(m, k, n)
    _check_choice("dataflow", dataflow, DATAFLOWS)
    spatial_rows, spatial_cols, temporal = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    return FoldPlan(dataflow, spatial_rows, spatial_cols, temporal, rows, cols)


def fold_cycles(plan: FoldPlan, mode: str = "native", latency: int = 0) -> int:
    """Cycles of one fold alone, first beat to last result; see the module docstring for the formulas."""
    _check_choice("mode", mode, MODES)
    r, c, t = plan.rows, plan.cols, plan.temporal
    if mode == "scalesim":
        return (r + c + t - 2) if plan.dataflow == "os" else (2 * r + c + t - 2)
    if plan.dataflow == "os":
        return t + r + (c - 1) + latency            # the R rows drain as they complete
    return t + (r - 1) + (c - 1) + r + latency      # the extra R is the stationary preload


def fold_period(plan: FoldPlan, mode: str = "native", latency: int = 0) -> int:
    """Cycles between the starts of back-to-back folds: ``max(T, R + C + L)`` for native OS, else a fold."""
    if mode == "native" and plan.dataflow == "os":
        return max(plan.temporal, plan.rows + plan.cols + latency)
    return fold_cycles(plan, mode, latency)


def compute_cycles(
    m: int, k: int, n: int, rows: int, cols: int, dataflow: str, mode: str = "native", latency: int = 0
) -> int:
    """Compute cycles of an (M x K) @ (K x N) product on an R x C array.

    Parameters
    ----------
    m, k, n : int
        GEMM shape.
    rows, cols : int
        Array size R x C.
    dataflow : {"os", "ws", "is"}
    mode : {"native", "scalesim"}
        ``"scalesim"`` equals SCALE-Sim v2.0.2's reported cycles without memory stalls.
    latency : int
        Pipeline stages paid once per fold (native mode only).
    """
    plan = fold_plan(m, k, n, rows, cols, dataflow)
    total = fold_cycles(plan, mode, latency) + (plan.folds - 1) * fold_period(plan, mode, latency)
    # SCALE-Sim reports the index of the last demand cycle, not the count.
    return total - 1 if mode == "scalesim" else total


@dataclass(frozen=True)
class MatMulReport:
    """One GEMM on the MatMul unit: cycles, utilisation and data movement.

    Attributes
    ----------
    name : str
    m, k, n : int
    plan : FoldPlan
    mode : str
    fold_cycles, compute_cycles : int
    memory_cycles : int
        Off-chip bytes divided by the bandwidth, rounded up.
    cycles : int
        ``max(compute_cycles, memory_cycles)``: transfers overlap compute (double buffering).
    bound : str
        ``"compute"`` or ``"memory"``.
    a_sram_reads, b_sram_reads, out_sram_writes : int
        Bytes the array reads from the ifmap and weight SRAMs and writes to the ofmap SRAM.
    a_fits, b_fits, out_fits : bool
        Whether A, B and the accumulated outputs stay on chip for the whole layer.
    a_dram_bytes, b_dram_bytes, out_dram_bytes : int
        Off-chip traffic, including re-fetches when an operand does not fit.
    """

    name: str
    m: int
    k: int
    n: int
    plan: FoldPlan
    mode: str
    fold_cycles: int
    compute_cycles: int
    memory_cycles: int
    cycles: int
    bound: str
    a_sram_reads: int
    b_sram_reads: int
    out_sram_writes: int
    a_fits: bool
    b_fits: bool
    out_fits: bool
    a_dram_bytes: int
    b_dram_bytes: int
    out_dram_bytes: int

    @property
    def dataflow(self) -> str:
        return self.plan.dataflow

    @property
    def folds(self) -> int:
        return self.plan.folds

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def dram_bytes(self) -> int:
        return self.a_dram_bytes + self.b_dram_bytes + self.out_dram_bytes

    @property
    def stall_cycles(self) -> int:
        return self.cycles - self.compute_cycles

    @property
    def utilization(self) -> float:
        """MACs over MAC slots in the layer's cycles, ``M*K*N / (cycles * R * C)``."""
        return self.macs / (self.cycles * self.plan.rows * self.plan.cols)

    @property
    def compute_utilization(self) -> float:
        """As ``utilization`` but over compute cycles only."""
        return self.macs / (self.compute_cycles * self.plan.rows * self.plan.cols)


class MatMulUnit:
    """The MatMul unit of one accelerator configuration.

    Parameters
    ----------
    config : AcceleratorConfig
        Array size, dataflow and latency come from ``config.matmul``; buffer sizes and
        bandwidth from ``config.buffers`` and ``config.memory``.
    mode : {"native", "scalesim"}
        Cycle convention (module docstring). In native mode a fold's tiles must fit the
        SRAMs (the RTL stages them there) or ``layer`` raises; in scalesim mode a tile that
        does not fit streams from off-chip memory on every fold, as SCALE-Sim allows.
    """

    def __init__(self, config: AcceleratorConfig, mode: str = "native"):
        _check_choice("mode", mode, MODES)
        self.config = config
        self.mode = mode

    @property
    def rows(self) -> int:
        return self.config.matmul.rows

    @property
    def cols(self) -> int:
        return self.config.matmul.cols

    @property
    def dataflow(self) -> str:
        return self.config.matmul.dataflow

    def plan(self, m: int, k: int, n: int) -> FoldPlan:
        return fold_plan(m, k, n, self.rows, self.cols, self.dataflow)

    def compute_cycles(self, m: int, k: int, n: int) -> int:
        """Compute cycles of (M x K) @ (K x N) in this unit's mode."""
        latency = self.config.matmul.latency if self.mode == "native" else 0
        return compute_cycles(m, k, n, self.rows, self.cols, self.dataflow, self.mode, latency)

    def layer(self, m: int, k: int, n: int, name: str = "", out_bytes: int | None = None) -> MatMulReport:
        """Cycles and traffic of one (M x K) @ (K x N) layer.

        Parameters
        ----------
        m, k, n : int
            GEMM shape.
        name : str
            Layer name, used in reports and errors.
        out_bytes : int, optional
            Bytes per output element; 4 (INT32) in native mode, 1 in scalesim mode.

        Raises
        ------
        IntVitError
            In native mode, when a buffer cannot hold one fold's tile.
        """
        plan = self.plan(m, k, n)
        if out_bytes is None:
            out_bytes = ACCUMULATOR_BYTES if self.mode == "native" else SCALESIM_WORD_BYTES
        traffic = self._traffic(plan, m, k, n, out_bytes, name or f"{m}x{k}x{n}")
        latency = self.config.matmul.latency if self.mode == "native" else 0
        per_fold = fold_cycles(plan, self.mode, latency)
        compute = self.compute_cycles(m, k, n)
        dram = traffic["a_dram_bytes"] + traffic["b_dram_bytes"] + traffic["out_dram_bytes"]
        memory = math.ceil(dram / self.config.memory.bandwidth_bytes_per_cycle)
        return MatMulReport(
            name=name, m=m, k=k, n=n, plan=plan, mode=self.mode,
            fold_cycles=per_fold, compute_cycles=compute, memory_cycles=memory,
            cycles=max(compute, memory), bound="memory" if memory > compute else "compute",
            **traffic,
        )

    def _traffic(self, plan: FoldPlan, m: int, k: int, n: int, out_bytes: int, label: str) -> dict:
        r, c = self.rows, self.cols
        a_size, b_size, out_size = m * k * OPERAND_BYTES, k * n * OPERAND_BYTES, m * n * out_bytes
        buffers = self.config.buffers
        # Per dataflow: SRAM reads of A and B and writes of outputs over the whole layer, the
        # tile of each that one fold needs on chip, and how many passes re-read A and B.
        if plan.dataflow == "os":
            row_folds, col_folds = plan.row_folds, plan.col_folds
            a_reads, b_reads = col_folds * a_size, row_folds * b_size
            out_writes = out_size
            a_tile, b_tile = min(m, r) * k, k * min(n, c)
            out_tile = min(m, r) * min(n, c) * out_bytes
            # A row block is reused across column folds (outer loop): only if all of A stays.
            a_fits = a_size <= buffers.ifmap_bytes
            # A B column block is reused across the inner row-fold loop while it stays.
            b_fits = b_tile <= buffers.weight_bytes
            a_dram = a_size if a_fits else a_reads
            b_dram = b_size if b_fits else b_reads
            out_fits, out_dram = out_tile <= buffers.ofmap_bytes, out_size
            if self.mode == "scalesim":
                # SCALE-Sim v2.0.2 adds R + C phantom writes per OS fold (systolic_compute_os).
                out_writes = m * n + plan.folds * (r + c)
        else:
            k_folds = plan.row_folds
            if plan.dataflow == "ws":
                spatial_out = min(n, c)
                a_reads, b_reads = plan.col_folds * a_size, b_size
                a_tile, b_tile = m * min(k, r), min(k, r) * min(n, c)
                a_fits = a_size <= buffers.ifmap_bytes
                b_fits = True
                out_tile = m * spatial_out * out_bytes
            else:
                spatial_out = min(m, c)
                a_reads, b_reads = a_size, plan.col_folds * b_size
                a_tile, b_tile = min(k, r) * min(m, c), min(k, r) * n
                a_fits = True
                b_fits = b_size <= buffers.weight_bytes
                out_tile = spatial_out * n * out_bytes
            a_dram = a_size if a_fits else a_reads
            b_dram = b_size if b_fits else b_reads
            # Partial sums accumulate across K folds; if they cannot stay they are written
            # out and read back once per K fold after the first.
            out_writes = k_folds * out_size
            out_fits = out_tile <= buffers.ofmap_bytes
            out_dram = out_size if out_fits else (2 * k_folds - 1) * out_size
        for buffer, tile, size, what in (
            ("ifmap", a_tile, buffers.ifmap_bytes, "A"),
            ("weight", b_tile, buffers.weight_bytes, "B"),
        ):
            if tile > size:
                if self.mode == "native":
                    raise IntVitError(
                        f"layer {label}: {buffer} buffer of {size} bytes cannot hold one {what} tile "
                        f"of {tile} bytes ({plan.dataflow} on a {r}x{c} array); enlarge buffers.{buffer}_bytes"
                    )
                # SCALE-Sim streams what does not fit: every SRAM read becomes an off-chip read.
                if what == "A":
                    a_dram = a_reads
                else:
                    b_dram = b_reads
        if self.mode == "native" and r * c * out_bytes > buffers.ofmap_bytes:
            raise IntVitError(
                f"layer {label}: ofmap buffer of {buffers.ofmap_bytes} bytes cannot hold one {r}x{c} "
                f"accumulator tile of {r * c * out_bytes} bytes; enlarge buffers.ofmap_bytes"
            )
        return dict(
            a_sram_reads=a_reads, b_sram_reads=b_reads, out_sram_writes=out_writes,
            a_fits=a_fits and a_tile <= buffers.ifmap_bytes,
            b_fits=b_fits and b_tile <= buffers.weight_bytes,
            out_fits=out_fits,
            a_dram_bytes=a_dram, b_dram_bytes=b_dram, out_dram_bytes=out_dram,
        )
