"""Cycle model of a compiled instruction stream: what the RTL's cycle counter must read.

It evaluates the "Timing" section of ``docs/isa.md`` exactly, instruction by instruction in
program order (every dependency points backwards, so one pass suffices):

* **fetch**: bursts of ``FETCH_BURST_INSTRUCTIONS`` on the instruction port, issued when the
  fetch FIFO has room, each costing ``read_latency_cycles`` plus its beats;
* **dispatch**: one instruction per cycle in program order, stalled while the target queue
  holds ``QUEUE_DEPTH`` instructions that have not started;
* **start**: after dispatch, after the module's previous instruction, and after the pushes
  of the tokens it pops (the n-th pop of a counter takes its n-th push); in the compute
  module, after the previous instruction of its slot (array, vector or control; a MATMUL
  only until the array takes its last beat, ``matmul_times``), after the other slot's
  unless the instruction has ``overlap`` set, a cycle after the previous
  compute instruction started (one issue per cycle) and a cycle after the compute
  instruction ``REORDER_DEPTH`` before it retired (the reorder buffer has room);
* **retirement**: a compute instruction pushes its tokens when it retires: when it has
  finished, and a cycle after the compute instruction before it retired;
* **duration**: DMA bursts at ``axi_data_bits`` with the memory latencies, and the units'
  own closed forms (``sim.matmul.fold_cycles``, ``sim.requant.requant_cycles``,
  ``sim.softmax.softmax_cycles``, ``sim.gelu.gelu_cycles``, ``sim.layernorm.layernorm_cycles``)
  plus ``ISSUE_CYCLES``, so a change to a unit's formula carries over here.

``schedule`` takes instructions (from ``compiler.compile_program`` or a binary stream);
``predict_cycles`` is the one number ``intvit rtl-run`` compares with the RTL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from intvit.compiler.isa import (
    AXI_BOUNDARY_BYTES, CONTROL_CYCLES, ELEMENT_BYTES, FETCH_BURST_INSTRUCTIONS, FETCH_QUEUE_DEPTH,
    INSTRUCTION_BYTES, ISSUE_CYCLES, QUEUE_DEPTH, QUEUE_OF, REORDER_DEPTH, SLOT_OF, TOKEN_BITS, Instruction,
    Memory, Opcode, Queue, Slot,
)
from intvit.quant.errors import IntVitError
from intvit.quant.program import IntProgram
from intvit.sim.config import AcceleratorConfig
from intvit.sim.gelu import gelu_cycles
from intvit.sim.layernorm import layernorm_cycles
from intvit.sim.matmul import fold_cycles, fold_plan
from intvit.sim.requant import requant_cycles
from intvit.sim.simulator import gemm_shape
from intvit.sim.softmax import softmax_cycles
from intvit.sim.timeline import LANES, Timeline

__all__ = ["UNIT_OF", "ScheduleReport", "burst_cost", "instruction_cycles", "matmul_times", "schedule",
           "predict_cycles", "program_macs"]

UNIT_OF = {
    Opcode.LOAD: "dma_load", Opcode.STORE: "dma_store", Opcode.MATMUL: "matmul", Opcode.REQUANT: "requant",
    Opcode.ADD: "requant", Opcode.SOFTMAX: "softmax", Opcode.GELU: "gelu", Opcode.LAYERNORM: "layernorm",
    Opcode.SYNC: "control", Opcode.END: "control",
}
TIMELINE_UNIT = {
    Opcode.LOAD: "load", Opcode.STORE: "store", Opcode.MATMUL: "array", Opcode.REQUANT: "requant",
    Opcode.ADD: "requant", Opcode.SOFTMAX: "softmax", Opcode.GELU: "gelu", Opcode.LAYERNORM: "layernorm",
    Opcode.SYNC: "control", Opcode.END: "control",
}
# What bound a start or a dispatch: the fetch burst's arrival, the previous dispatch (or, for a
# start, its own dispatch), the module's previous instruction, a token's push, a full queue,
# the previous compute instruction's issue (one a cycle).
_FETCHED, _DISPATCHED, _MODULE, _TOKEN, _QUEUE_FULL, _ISSUED = range(6)
# Token counters by (producer queue, consumer queue); which flag pushes and which pops.
COUNTERS = ((Queue.LOAD, Queue.COMPUTE), (Queue.COMPUTE, Queue.LOAD), (Queue.COMPUTE, Queue.STORE),
            (Queue.STORE, Queue.COMPUTE))


@dataclass
class ScheduleReport:
    """One compiled inference on the accelerator, cycle by cycle.

    Attributes
    ----------
    config : AcceleratorConfig
    total_cycles : int
        From ``start`` to END's completion: the RTL's cycle counter.
    start, end : int64 arrays
        Start and completion cycle of every instruction.
    opcodes : int array
    classes : dict of opcode name -> {"count", "busy_cycles"}
    units : dict of unit -> busy cycles (``dma_load``, ``dma_store``, ``matmul``, ...)
    dram_read_bytes, dram_write_bytes : int
    macs : int
        The program's useful multiply-accumulates, when the caller gives them.
    """

    config: AcceleratorConfig
    total_cycles: int
    start: np.ndarray
    end: np.ndarray
    opcodes: np.ndarray
    classes: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    macs: int = 0
    causes: _Causes | None = None

    @property
    def latency_us(self) -> float:
        return self.total_cycles / self.config.clock_mhz

    @property
    def mac_utilization(self) -> float:
        m = self.config.matmul
        return self.macs / (m.rows * m.cols * self.total_cycles)

    def as_dict(self) -> dict:
        m = self.config.matmul
        return {
            "total_cycles": self.total_cycles, "latency_us": self.latency_us,
            "array": f"{m.rows}x{m.cols}", "clock_mhz": self.config.clock_mhz,
            "instructions": int(self.opcodes.size), "macs": self.macs, "mac_utilization": self.mac_utilization,
            "dram_read_bytes": self.dram_read_bytes, "dram_write_bytes": self.dram_write_bytes,
            "classes": self.classes,
            "units": {unit: {"busy_cycles": busy, "utilization": busy / self.total_cycles}
                      for unit, busy in self.units.items()},
        }


    def timeline(self, names: list[str] | None = None) -> Timeline:
        """Busy intervals per unit and the critical path (``sim.timeline``).

        The path is walked back from END: each start is bound by its module's previous
        instruction, a token's push or its dispatch; a dispatch by the previous dispatch, a
        full queue (the start that frees it) or its fetch burst. ``names`` (the op of every
        instruction, ``CompiledProgram.origins``) groups the path by model part.
        """
        from intvit.sim.report import op_groups

        c = self.causes
        start, end = self.start, self.end
        n = len(start)
        unit = [TIMELINE_UNIT[Opcode(op)] for op in self.opcodes.tolist()]
        parts = op_groups(names[:n]) if names is not None else ["program"] * n
        units = np.array(unit)
        busy = {lane: np.stack([start[units == lane], end[units == lane]], axis=1) for lane in LANES}
        path = [(int(start[-1]), self.total_cycles, unit[-1], parts[-1])]
        kind, i = "start", n - 1
        while True:
            if kind == "start":
                by, j = c.start_by[i]
                if by in (_MODULE, _TOKEN):
                    if end[j] < start[i]:        # a push at retirement, or room in the reorder buffer
                        path.append((int(end[j]), int(start[i]), "control", parts[i]))
                    # (a MATMUL may start while the one before it still drains)
                    path.append((int(start[j]), int(min(end[j], start[i])), unit[j], parts[j]))
                    i = int(j)
                elif by == _ISSUED:
                    path.append((int(start[j]), int(start[i]), "control", parts[i]))
                    i = int(j)
                else:
                    path.append((int(c.dispatch[i]), int(start[i]), "control", parts[i]))
                    kind = "dispatch"
                continue
            by, j = c.dispatch_by[i]
            if by == _DISPATCHED:
                path.append((int(c.dispatch[j]), int(c.dispatch[i]), "control", parts[i]))
                i = int(j)
                continue
            if by == _QUEUE_FULL:
                path.append((int(start[j]), int(c.dispatch[i]), "control", parts[i]))
                kind, i = "start", int(j)
                continue
            burst, t = int(j), int(c.dispatch[i])          # fetch-bound: walk back through the bursts
            while True:
                issue = int(c.arrival[burst]) - c.fetch_cost
                path.append((issue, t, "control", parts[i]))
                room = int(c.issued_by[burst])
                if room >= 0:
                    path.append((int(c.dispatch[room]), issue, "control", parts[i]))
                    kind, i = "dispatch", room
                    break
                if burst == 0:
                    return Timeline.build(self.total_cycles, busy, path[::-1])
                burst, t = burst - 1, issue


@dataclass(frozen=True)
class _Causes:
    """What bound each time of a schedule, for ``ScheduleReport.timeline``."""

    dispatch: np.ndarray
    start_by: np.ndarray
    dispatch_by: np.ndarray
    arrival: np.ndarray
    issued_by: np.ndarray
    fetch_cost: int


@lru_cache(maxsize=1 << 16)
def burst_cost(offset: int, size: int, beat_bytes: int, max_beats: int) -> tuple[int, int]:
    """``(bursts, beats)`` of one contiguous run of ``size`` bytes starting ``offset`` bytes into a 4 KiB page.

    A burst ends at the run's end, at a 4 KiB boundary or after ``max_beats`` beats; it has
    ``ceil(end / W) - floor(start / W)`` beats (``W = beat_bytes``).
    """
    bursts = beats = 0
    position, end = offset, offset + size
    while position < end:
        first = position // beat_bytes
        limit = min(end, (position // AXI_BOUNDARY_BYTES + 1) * AXI_BOUNDARY_BYTES, (first + max_beats) * beat_bytes)
        bursts += 1
        beats += -(-limit // beat_bytes) - first
        position = limit
    return bursts, beats


def _runs(ins: Instruction, cols: int) -> tuple[np.ndarray, int]:
    """Start addresses and length of the contiguous runs of a LOAD or STORE (docs/isa.md, "Runs").

    Every ACC plane starts at lane 0 of a ``cols``-lane word, so an ACC transfer is one run across
    planes only when each plane fills whole words (docs/isa.md, "RTL notes", point 1); otherwise
    each plane is its own run, as in ``rtl.loadstore``.
    """
    row = ins.x_count * ELEMENT_BYTES[ins.elem]
    if ins.y_count == 1 or ins.y_stride == row:
        plane = row * ins.y_count
        whole_words = ins.mem != Memory.ACC or (ins.x_count * ins.y_count) % cols == 0
        if ins.z_count == 1 or (ins.z_stride == plane and whole_words):
            return np.array([ins.dram_addr]), plane * ins.z_count
        return ins.dram_addr + np.arange(ins.z_count) * ins.z_stride, plane
    starts = ins.dram_addr + (np.arange(ins.z_count)[:, None] * ins.z_stride
                              + np.arange(ins.y_count)[None, :] * ins.y_stride)
    return starts.reshape(-1), row


def dma_cycles(ins: Instruction, config: AcceleratorConfig) -> int:
    """Cycles of one LOAD or STORE: ``ISSUE_CYCLES`` plus ``latency + beats`` per burst."""
    mem = config.memory
    latency = mem.read_latency_cycles if ins.opcode == Opcode.LOAD else mem.write_latency_cycles
    starts, size = _runs(ins, config.matmul.cols)
    offsets, counts = np.unique(starts % AXI_BOUNDARY_BYTES, return_counts=True)
    total = ISSUE_CYCLES
    for offset, count in zip(offsets.tolist(), counts.tolist()):
        bursts, beats = burst_cost(offset, size, mem.axi_data_bits // 8, mem.max_burst_beats)
        total += count * (bursts * latency + beats)
    return total


def instruction_cycles(ins: Instruction, config: AcceleratorConfig) -> int:
    """Cycles from start to completion of one instruction (docs/isa.md, "Timing")."""
    op = ins.opcode
    if op in (Opcode.LOAD, Opcode.STORE):
        return dma_cycles(ins, config)
    if op in (Opcode.SYNC, Opcode.END):
        return CONTROL_CYCLES
    if op == Opcode.MATMUL:
        m = config.matmul
        return ISSUE_CYCLES + fold_cycles(fold_plan(m.rows, ins.k, m.cols, m.rows, m.cols, "os"), "native", m.latency)
    unit = UNIT_OF[op]
    lanes, latency = getattr(config, unit).lanes, getattr(config, unit).latency
    beats = ins.rows * -(-ins.length // lanes)
    if op in (Opcode.REQUANT, Opcode.ADD):
        return ISSUE_CYCLES + requant_cycles(lanes, latency, beats * lanes)
    if op == Opcode.GELU:
        return ISSUE_CYCLES + gelu_cycles(lanes, latency, beats * lanes)
    if op == Opcode.SOFTMAX:
        return ISSUE_CYCLES + softmax_cycles(lanes, latency, ins.rows, ins.length)
    return ISSUE_CYCLES + -(-ins.length // lanes) + layernorm_cycles(lanes, latency, ins.rows, ins.length)


def matmul_times(start: int, k: int, previous_row: int, config: AcceleratorConfig) -> tuple[int, int]:
    """``(last_beat, last_row)``: the cycles the array takes a MATMUL's last beat and delivers its
    last result row, for a MATMUL issued at ``start`` whose predecessor delivered its last row
    at ``previous_row``.

    Beats stream from ``start + 1``, one a cycle; only the last waits for the cycle after the
    previous fold's last row (``rtl.matmul``). The rows follow ``R + C - 1 + latency`` cycles
    after the last beat; the MATMUL completes a cycle later (its last ACC write), and the
    next may start in the last-beat cycle. Alone this is ``ISSUE_CYCLES + fold_cycles``.
    """
    m = config.matmul
    last_beat = max(start + ISSUE_CYCLES + k - 1, previous_row + 1)
    drain = fold_cycles(fold_plan(m.rows, k, m.cols, m.rows, m.cols, "os"), "native", m.latency) - k
    return last_beat, last_beat + drain


def _durations(instructions: list[Instruction], config: AcceleratorConfig) -> np.ndarray:
    cache: dict = {}
    out = np.empty(len(instructions), dtype=np.int64)
    for i, ins in enumerate(instructions):
        if ins.opcode in (Opcode.LOAD, Opcode.STORE):
            out[i] = dma_cycles(ins, config)
            continue
        key = (ins.opcode, ins.fields.get("k"), ins.fields.get("rows"), ins.fields.get("length"))
        if key not in cache:
            cache[key] = instruction_cycles(ins, config)
        out[i] = cache[key]
    return out


def schedule(instructions: list[Instruction], config: AcceleratorConfig, macs: int = 0,
             durations: np.ndarray | None = None) -> ScheduleReport:
    """Start and completion cycle of every instruction of a compiled stream, and the totals.

    ``macs`` (the program's useful multiply-accumulates) only feeds ``mac_utilization``;
    ``durations`` replaces the instructions' cycle counts (tests jitter them to show that the
    dependency tokens alone, not the particular timing, keep the data correct); a MATMUL then
    runs alone on the array for its duration.

    Raises
    ------
    IntVitError
        If the stream has no END, pops a token that no earlier instruction pushes (the
        controller would hang) or overflows a ``TOKEN_BITS`` counter.
    """
    ends = [i for i, ins in enumerate(instructions) if ins.opcode == Opcode.END]
    if not ends:
        raise IntVitError("instruction stream has no END")
    instructions = instructions[:ends[0] + 1]
    n = len(instructions)
    mem = config.memory
    duration = _durations(instructions, config) if durations is None else np.asarray(durations[:n], dtype=np.int64)
    fetch_beats = -(-FETCH_BURST_INSTRUCTIONS * INSTRUCTION_BYTES // (mem.axi_data_bits // 8))
    fetch_cost = mem.read_latency_cycles + fetch_beats
    dispatch = np.zeros(n, dtype=np.int64)
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    # What bound each time (for the critical path): start by (kind, index), dispatch by (kind, index),
    # fetch burst issue by the previous burst (-1) or the dispatch that made room (its index).
    start_by = np.zeros((n, 2), dtype=np.int64)
    dispatch_by = np.zeros((n, 2), dtype=np.int64)
    arrival: list[int] = []
    issued_by: list[int] = []
    queue_members: dict[Queue, list[int]] = {q: [] for q in Queue}
    last_end = {q: 0 for q in Queue}
    last_index = {q: -1 for q in Queue}
    # The compute module: when each slot is idle again (and the instruction that ran there),
    # the previous compute instruction's start, and every compute instruction's retirement.
    slot_free = {slot: (0, -1) for slot in Slot}
    last_issue, issuer, retired = -1, -1, []
    array_takes, last_row = (0, -1), -1       # when the array takes the next MATMUL; its last row so far
    pushes: dict[tuple, list[int]] = {c: [] for c in COUNTERS}     # completion cycles, in push order
    pushers: dict[tuple, list[int]] = {c: [] for c in COUNTERS}    # and the pushing instructions
    pops: dict[tuple, list[int]] = {c: [] for c in COUNTERS}
    for i, ins in enumerate(instructions):
        burst = i // FETCH_BURST_INSTRUCTIONS
        while len(arrival) <= burst:
            b = len(arrival)
            issue, by = (arrival[-1], -1) if arrival else (0, -1)
            room = b * FETCH_BURST_INSTRUCTIONS - FETCH_QUEUE_DEPTH + FETCH_BURST_INSTRUCTIONS - 1
            if room >= 0 and int(dispatch[room]) + 1 > issue:
                issue, by = int(dispatch[room]) + 1, room
            arrival.append(issue + fetch_cost)
            issued_by.append(by)
        queue = QUEUE_OF[ins.opcode]
        members = queue_members[queue]
        d, dby = arrival[burst], (_FETCHED, burst)
        if i and int(dispatch[i - 1]) + 1 > d:
            d, dby = int(dispatch[i - 1]) + 1, (_DISPATCHED, i - 1)
        if len(members) >= QUEUE_DEPTH and int(start[members[-QUEUE_DEPTH]]) + 1 > d:
            d, dby = int(start[members[-QUEUE_DEPTH]]) + 1, (_QUEUE_FULL, members[-QUEUE_DEPTH])
        dispatch[i], dispatch_by[i] = d, dby
        s, sby = d + 1, (_DISPATCHED, i)
        f = ins.fields
        if queue == Queue.COMPUTE:
            slot = SLOT_OF[ins.opcode]
            if last_issue + 1 > s:
                s, sby = last_issue + 1, (_ISSUED, issuer)
            waits = [slot, Slot.CONTROL] if f.get("overlap") else list(Slot)
            for other in waits:
                free, by = array_takes if other == slot == Slot.ARRAY else slot_free[other]
                if by >= 0 and free >= s:
                    s, sby = free, (_MODULE, by)
            if len(retired) >= REORDER_DEPTH and retired[-REORDER_DEPTH][0] + 1 > s:
                s, sby = retired[-REORDER_DEPTH][0] + 1, (_MODULE, retired[-REORDER_DEPTH][1])
        elif last_end[queue] >= s and last_index[queue] >= 0:
            s, sby = last_end[queue], (_MODULE, last_index[queue])
        for counter in COUNTERS:
            producer, consumer = counter
            if consumer == queue and f.get("pop_prev" if producer < consumer else "pop_next"):
                taken = len(pops[counter])
                if taken >= len(pushes[counter]):
                    raise IntVitError(f"instruction {i} ({ins.opcode.name}) waits for a {producer.name.lower()}->"
                                      f"{consumer.name.lower()} token that no earlier instruction gives: "
                                      "the controller would hang")
                if pushes[counter][taken] > s:
                    s, sby = pushes[counter][taken], (_TOKEN, pushers[counter][taken])
        start[i], end[i] = s, s + int(duration[i])
        if ins.opcode == Opcode.MATMUL:
            if durations is None:
                last_beat, last_row = matmul_times(s, ins.k, last_row, config)
                end[i] = last_row + 1
            else:
                last_beat = int(end[i])
            array_takes = (last_beat, i)
        start_by[i] = sby
        done, completer = int(end[i]), i
        if queue == Queue.COMPUTE:
            slot_free[slot], last_issue, issuer = (done, i), s, i
            if retired and retired[-1][0] + 1 > done:
                done, completer = retired[-1][0] + 1, retired[-1][1]
            retired.append((done, completer))
        for counter in COUNTERS:
            producer, consumer = counter
            if consumer == queue and f.get("pop_prev" if producer < consumer else "pop_next"):
                pops[counter].append(s)
            if producer == queue and f.get("push_next" if producer < consumer else "push_prev"):
                pushes[counter].append(done)
                pushers[counter].append(completer)
        members.append(i)
        last_end[queue], last_index[queue] = int(end[i]), i
    _check_counters(pushes, pops)
    report = _report(instructions, config, start, end, retired[-1][0])    # END's retirement
    report.macs = macs
    report.causes = _Causes(dispatch, start_by, dispatch_by, np.array(arrival), np.array(issued_by), fetch_cost)
    return report


def _check_counters(pushes: dict, pops: dict) -> None:
    limit = (1 << TOKEN_BITS) - 1
    for counter, times in pushes.items():
        if len(times) <= limit:
            continue
        given = np.arange(1, len(times) + 1)
        taken = np.searchsorted(np.sort(pops[counter]), np.asarray(times), side="left")
        if np.max(given - taken) > limit:
            raise IntVitError(f"{counter[0].name.lower()}->{counter[1].name.lower()} token counter overflows "
                              f"its {TOKEN_BITS} bits")


def _covered(start: np.ndarray, end: np.ndarray) -> int:
    """Cycles covered by the intervals ``[start, end)`` (in program order, so starts never decrease)."""
    reach = np.maximum.accumulate(end)
    begin = np.maximum(start, np.concatenate(([0], reach[:-1])))
    return int(np.maximum(end - begin, 0).sum())


def _report(instructions, config, start, end, total: int) -> ScheduleReport:
    opcodes = np.array([int(ins.opcode) for ins in instructions])
    classes, units = {}, {}
    for op in Opcode:
        mask = opcodes == op
        if mask.any():
            busy = _covered(start[mask], end[mask])          # MATMULs overlap while one drains
            classes[op.name] = {"count": int(mask.sum()), "busy_cycles": busy}
            units[UNIT_OF[op]] = units.get(UNIT_OF[op], 0) + busy
    moved = {Opcode.LOAD: 0, Opcode.STORE: 0}
    for ins in instructions:
        if ins.opcode in moved:
            moved[ins.opcode] += ins.x_count * ins.y_count * ins.z_count * ELEMENT_BYTES[ins.elem]
    return ScheduleReport(config, total, start, end, opcodes, classes, units,
                          moved[Opcode.LOAD], moved[Opcode.STORE])


def predict_cycles(instructions: list[Instruction], config: AcceleratorConfig) -> int:
    """The cycles the RTL should count for this stream on this config (``schedule(...).total_cycles``)."""
    return schedule(instructions, config).total_cycles


def program_macs(program: IntProgram) -> int:
    """Useful multiply-accumulates of one image (batch 1), for ``mac_utilization``."""
    shapes = program.tensor_shapes(1)
    return sum(math.prod(gemm_shape(op, shapes)) for op in program.matmuls())
