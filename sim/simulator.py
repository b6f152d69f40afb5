"""Whole-model simulation: the integer program run through the accelerator's units.

Each op of an ``IntProgram`` is mapped to the unit that executes it and costed with
that unit's closed-form cycle model; with ``functional=True`` the op is also executed,
through the very kernels of ``quant`` (matmuls fold by fold over K, as the array's
accumulators see them), so the simulated output equals the golden executor's bit for bit.

=============== ===================== ================================================
op kind         unit                  cycles
=============== ===================== ================================================
matmul          MatMul array          ``sim.matmul`` per GEMM; per-head products are
                                      separate GEMMs, weight layers stack the batch
requant, add,   Requantiser           ``sim.requant.requant_cycles`` (token_mean: the
token_mean,                           INT8 tokens stream through once, a sum and one
average                               constant division per channel; average: one add
                                      and a rounding shift per element)
softmax         Softmax               ``sim.softmax.softmax_cycles`` per row
gelu            GELU                  ``sim.gelu.gelu_cycles``
layernorm       LayerNorm             ``sim.layernorm.layernorm_cycles`` per row
patchify, concat_token, split_heads,
merge_heads, select_token             none: buffer address generation, 0 cycles
=============== ===================== ================================================

Schedule: ops run in program order, one unit at a time, except that a requant which
consumes the accumulators of the matmul just before it streams from the array's drain
port; it overlaps that matmul and only the larger of its pipeline latency and the cycles
by which it outlasts the matmul are exposed. Element-wise ops whose operands exceed the
activation (ifmap) buffer stream through off-chip memory and may become memory-bound.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from intvit.quant.errors import IntVitError
from intvit.quant.executor import execute_op
from intvit.quant.matmul import check_accumulator, int_matmul
from intvit.quant.program import IntProgram, Op
from intvit.sim.config import AcceleratorConfig
from intvit.sim.gelu import gelu_cycles
from intvit.sim.layernorm import layernorm_cycles
from intvit.sim.matmul import MatMulUnit
from intvit.sim.requant import requant_cycles
from intvit.sim.softmax import softmax_cycles
from intvit.sim.timeline import Timeline

__all__ = ["OpReport", "SimReport", "gemm_shape", "simulate"]

UNIT_OF = {
    "matmul": "matmul", "requant": "requant", "add": "requant", "softmax": "softmax",
    "gelu": "gelu", "layernorm": "layernorm", "token_mean": "requant", "average": "requant",
}
ELEMENT_BYTES = {np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 4}


@dataclass(frozen=True)
class OpReport:
    """One op on its unit.

    Attributes
    ----------
    name, kind, unit : str
        ``unit`` is ``"none"`` for pure data-layout ops.
    cycles : int
        Cycles the unit is busy (compute or memory, whichever is longer).
    exposed_cycles : int
        Cycles the op adds to the end-to-end latency under the schedule.
    macs : int
    utilization : float
        MACs per MAC slot over ``cycles`` (matmul only, else 0).
    sram_bytes, dram_bytes : int
        Bytes read and written on chip and off chip.
    bound : str
        ``"compute"``, ``"memory"`` or ``"-"``.
    compute_cycles : int
        Cycles the unit computes (``cycles`` less any wait for memory).
    dram_write_bytes : int
        The part of ``dram_bytes`` written off chip.
    """

    name: str
    kind: str
    unit: str
    cycles: int
    exposed_cycles: int
    macs: int = 0
    utilization: float = 0.0
    sram_bytes: int = 0
    dram_bytes: int = 0
    bound: str = "-"
    compute_cycles: int = 0
    dram_write_bytes: int = 0


@dataclass
class SimReport:
    """A whole simulated inference."""

    config: AcceleratorConfig
    model: str
    batch: int
    ops: list[OpReport]
    logits: np.ndarray | None = None
    tensors: dict = field(default_factory=dict)

    @property
    def total_cycles(self) -> int:
        return sum(op.exposed_cycles for op in self.ops)

    @property
    def latency_us(self) -> float:
        return self.total_cycles / self.config.clock_mhz

    @property
    def images_per_second(self) -> float:
        return self.batch * 1e6 / self.latency_us

    @property
    def total_macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def macs_per_cycle(self) -> float:
        return self.total_macs / self.total_cycles

    @property
    def utilization(self) -> float:
        m = self.config.matmul
        return self.macs_per_cycle / (m.rows * m.cols)

    def unit_cycles(self) -> dict[str, int]:
        """Exposed cycles per unit."""
        totals: dict[str, int] = {}
        for op in self.ops:
            totals[op.unit] = totals.get(op.unit, 0) + op.exposed_cycles
        return totals

    def dram_bytes(self) -> int:
        return sum(op.dram_bytes for op in self.ops)

    def timeline(self) -> Timeline:
        """Busy intervals per unit and the critical path of this schedule (``sim.timeline``).

        Ops run one after another; a requant fused to its matmul's drain ends ``exposed_cycles``
        after the matmul and runs for its ``cycles`` up to then. Off-chip transfers share one
        port at ``bandwidth_bytes_per_cycle``: an op's reads occupy ``load`` from its start,
        its writes ``store`` up to its end. The op's exposed cycles are on the critical path,
        bound by its unit, or by ``load``/``store`` for an op that waits for memory.
        """
        from intvit.sim.report import op_groups

        bandwidth = self.config.memory.bandwidth_bytes_per_cycle
        lane = {"matmul": "array"}
        busy: dict[str, list] = {}
        path = []
        t = previous_start = 0
        names = [op.name for op in self.ops]
        for op, part in zip(self.ops, op_groups(names)):
            if op.unit == "none":
                continue
            unit = lane.get(op.unit, op.unit)
            compute = op.compute_cycles or op.cycles
            if op.exposed_cycles < op.cycles:                  # streams from the previous matmul's drain
                end = t + op.exposed_cycles
                op_start = max(previous_start, end - compute)
            else:
                op_start, end = t, t + op.cycles
            busy.setdefault(unit, []).append((op_start, op_start + compute))
            reads = math.ceil((op.dram_bytes - op.dram_write_bytes) / bandwidth)
            writes = math.ceil(op.dram_write_bytes / bandwidth)
            busy.setdefault("load", []).append((op_start, op_start + reads))
            busy.setdefault("store", []).append((end - writes, end))
            if op.bound == "memory" and op.exposed_cycles == op.cycles:
                path += [(t, end - writes, "load", part), (end - writes, end, "store", part)]
            else:
                path.append((t, end, unit, part))
            previous_start, t = op_start, end
        return Timeline.build(self.total_cycles, busy, path)

    def as_dict(self) -> dict:
        m = self.config.matmul
        return {
            "model": self.model, "batch": self.batch,
            "array": f"{m.rows}x{m.cols}", "dataflow": m.dataflow, "clock_mhz": self.config.clock_mhz,
            "total_cycles": self.total_cycles, "latency_us": self.latency_us,
            "images_per_second": self.images_per_second, "macs": self.total_macs,
            "macs_per_cycle": self.macs_per_cycle, "mac_utilization": self.utilization,
            "dram_bytes": self.dram_bytes(), "unit_cycles": self.unit_cycles(),
            "ops": [op.__dict__ for op in self.ops],
        }


def _elementwise_report(op: Op, unit: str, compute: int, in_bytes: int, out_bytes: int,
                        config: AcceleratorConfig) -> OpReport:
    traffic = in_bytes + out_bytes
    spills = max(in_bytes, out_bytes) > config.buffers.ifmap_bytes
    dram = traffic if spills else 0
    memory = math.ceil(dram / config.memory.bandwidth_bytes_per_cycle)
    cycles = max(compute, memory)
    return OpReport(op.name, op.kind, unit, cycles, cycles, sram_bytes=traffic, dram_bytes=dram,
                    bound="memory" if memory > compute else "compute", compute_cycles=compute,
                    dram_write_bytes=out_bytes if spills else 0)


def gemm_shape(op: Op, shapes: dict) -> tuple[int, int, int, int]:
    """(count, M, K, N) of a matmul op: weight layers stack every leading dim into M; per-head
    products are ``count`` separate GEMMs."""
    a, b = shapes[op.inputs[0]], shapes[op.inputs[1]]
    m, k = math.prod(a[:-1]), a[-1]
    n = b[-2] if op.attrs.get("transpose_b") else b[-1]
    if len(b) == 2:
        return 1, m, k, n
    return math.prod(a[:-2]), a[-2], k, n


class _Costing:
    """Per-op cycle models of one accelerator configuration."""

    def __init__(self, config: AcceleratorConfig, mode: str):
        self.config = config
        self.matmul = MatMulUnit(config, mode)

    def cost(self, op: Op, shapes: dict, dtypes: dict) -> OpReport:
        cfg = self.config
        if op.kind == "matmul":
            count, m, k, n = gemm_shape(op, shapes)
            layer = self.matmul.layer(m, k, n, name=op.name)
            cycles = count * layer.cycles
            return OpReport(op.name, op.kind, "matmul", cycles, cycles, macs=count * layer.macs,
                            utilization=layer.macs / (layer.cycles * layer.plan.rows * layer.plan.cols),
                            sram_bytes=count * (layer.a_sram_reads + layer.b_sram_reads + layer.out_sram_writes),
                            dram_bytes=count * layer.dram_bytes, bound=layer.bound,
                            compute_cycles=count * layer.compute_cycles,
                            dram_write_bytes=count * layer.out_dram_bytes)
        shape = shapes[op.inputs[0]]
        size = math.prod(shape)
        activations = op.inputs[:2] if op.kind in ("add", "average") else op.inputs[:1]  # constants live on chip
        in_bytes = sum(math.prod(shapes[name]) * dtypes.get(name, 1) for name in activations)
        out_bytes = size * dtypes.get(op.output, 1)
        unit = UNIT_OF.get(op.kind, "none")
        if unit == "none":
            return OpReport(op.name, op.kind, "none", 0, 0)
        units = {"requant": cfg.requant, "softmax": cfg.softmax, "gelu": cfg.gelu, "layernorm": cfg.layernorm}
        lanes, latency = units[unit].lanes, units[unit].latency
        rows, width = size // shape[-1], shape[-1]
        compute = {
            "requant": lambda: requant_cycles(lanes, latency, size),
            "softmax": lambda: softmax_cycles(lanes, latency, rows, width),
            "gelu": lambda: gelu_cycles(lanes, latency, size),
            "layernorm": lambda: layernorm_cycles(lanes, latency, rows, width),
        }[unit]()
        return _elementwise_report(op, unit, compute, in_bytes, out_bytes, cfg)


def _fold_matmul(op: Op, args: list[np.ndarray], k_chunk: int) -> np.ndarray:
    """``int_matmul`` as the array accumulates it: one partial product per K fold of ``k_chunk``,
    the bias entering with the first, the partials summed in the INT32 output buffer."""
    a, b, bias = (args + [None])[:3]
    transpose = bool(op.attrs.get("transpose_b"))
    depth = a.shape[-1]
    check_accumulator(depth, bias, op.name)
    if depth <= k_chunk:
        return int_matmul(a, b, bias, transpose_b=transpose, name=op.name)
    folds = -(-depth // k_chunk)
    pad = [(0, 0)] * (a.ndim - 1) + [(0, folds * k_chunk - depth)]
    a_folds = np.moveaxis(np.pad(a, pad).reshape(*a.shape[:-1], folds, k_chunk), -2, 0)  # (F, ..., M, k)
    b_t = b if transpose else np.swapaxes(b, -1, -2)                                    # (..., N, K)
    pad = [(0, 0)] * (b_t.ndim - 1) + [(0, folds * k_chunk - depth)]
    b_folds = np.moveaxis(np.pad(b_t, pad).reshape(*b_t.shape[:-1], folds, k_chunk), -2, 0)  # (F, ..., N, k)
    if b_folds.ndim < a_folds.ndim:                                                   # shared weights
        b_folds = np.broadcast_to(b_folds.reshape(folds, *[1] * (a.ndim - 2), *b_folds.shape[1:]),
                                  (*a_folds.shape[:-2], *b_folds.shape[-2:]))
    partials = int_matmul(a_folds, b_folds, transpose_b=True, name=op.name)           # (F, ..., M, N)
    total = partials.sum(axis=0, dtype=np.int32)       # INT32: int_matmul's static bound covers the sum
    return total if bias is None else total + bias


def simulate(program: IntProgram, config: AcceleratorConfig, x: np.ndarray | None = None, *,
             batch: int | None = None, mode: str = "native", functional: bool = True,
             collect: bool = False, progress=None) -> SimReport:
    """Simulate one batch of the program on the accelerator.

    Parameters
    ----------
    program : IntProgram
    config : AcceleratorConfig
    x : int8 images (B, C, H, W) from ``program.quantize_input``; required when ``functional``
    batch : int
        Batch size for a cycle-only run (``x`` gives it otherwise).
    mode : {"native", "scalesim"}
        MatMul cycle convention (``sim.matmul``).
    functional : bool
        Also compute every tensor; the report then carries the INT32 logits.
    collect : bool
        Keep every intermediate tensor in ``report.tensors``.
    progress : optional callable wrapping the op iterator (e.g. tqdm)
    """
    if functional:
        if x is None:
            raise IntVitError("a functional simulation needs input images")
        if x.dtype != np.int8:
            raise IntVitError(f"simulate takes int8 images from IntProgram.quantize_input, got {x.dtype}")
        batch = len(x)
    batch = batch or 1
    shapes = program.tensor_shapes(batch)
    if functional and tuple(x.shape) != shapes["input"]:
        raise IntVitError(f"images are {tuple(x.shape)}, program for {program.config.name!r} takes "
                          f"{shapes['input']}")
    dtypes = {name: 4 if info.bits > 8 else 1 for name, info in program.tensors.items()}
    costing = _Costing(config, mode)
    # WS and IS keep K on the array rows: partial sums over K folds meet in the output buffer.
    k_chunk = config.matmul.rows if config.matmul.dataflow in ("ws", "is") else math.inf
    env = {"input": x} if functional else {}
    reports: list[OpReport] = []
    previous: Op | None = None
    for op in progress(program.ops) if progress else program.ops:
        report = costing.cost(op, shapes, dtypes)
        if op.kind == "requant" and previous is not None and previous.kind == "matmul" \
                and op.inputs[0] in previous.outputs:
            hidden = max(config.requant.latency, report.cycles - reports[-1].cycles)
            report = dataclasses.replace(report, exposed_cycles=hidden)
        reports.append(report)
        previous = op
        if functional:
            if op.kind == "matmul":
                args = [env[n] if n in env else program.constants[n] for n in op.inputs]
                outputs = (_fold_matmul(op, args, k_chunk),)
            else:
                outputs = execute_op(op, env, program.constants)
            env.update(zip(op.outputs, outputs))
    return SimReport(config, program.config.name, batch, reports,
                     logits=env.get(program.output) if functional else None,
                     tensors=env if collect else {})
