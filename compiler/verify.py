"""A static check that the dependency tokens order every conflicting access, whatever the timing.

The hardware checks no hazards (``docs/isa.md``, "Execution rules"): if two instructions of
different modules touch the same scratchpad cells or external bytes and one of them writes,
a chain of tokens and in-order queues must make the earlier complete before the later starts.
``check_hazards`` proves that for a whole stream, independently of the compiler's own
bookkeeping and of any cycle counts:

* **happens-before**: walking the stream in program order, each instruction knows, per
  module, the latest instruction guaranteed complete when it starts (its module's previous
  instruction, and for each token it pops, everything the pushing instruction knew at its end;
  the n-th pop of a counter takes its n-th push). A compute instruction with ``overlap`` set
  knows only what the compute instruction before it knew when it started (issue is in
  order; the slots finish out of order, tokens are pushed in order), so the other slot's
  instructions not known complete are checked against it like another module's. The array
  adds one guarantee of its own: it holds at most two MATMULs (one streaming, one draining),
  so when a MATMUL starts, every MATMUL two or more before it has completed; an instruction
  issued after that start knows them complete;
* **footprints**: each instruction's reads and writes as boxes (bank range x byte range in A
  and B, word range in ACC, record range in PARAM, byte range in external memory), taken from
  its fields alone, conservatively (a strided access covers its bounding range).
"""

from __future__ import annotations

import bisect

import numpy as np

from intvit.compiler.isa import ELEMENT_BYTES, QUEUE_OF, SLOT_OF, Geometry, Instruction, Memory, Opcode, Queue, Slot
from intvit.quant.errors import IntVitError

__all__ = ["check_hazards", "footprint", "mark_overlaps"]

# Spaces with a bank dimension (A, B) and flat ones (ACC, PARAM, DRAM).
SPACES = ("A", "B", "ACC", "PARAM", "DRAM")
# The sequential lanes of execution: the load and store modules and the compute module's two slots.
VECTOR_LANE = len(Queue)
LANES = (*Queue, VECTOR_LANE)
# Instructions a compute slot holds at once: the array streams one MATMUL while the previous drains.
SLOT_DEPTH = {Slot.ARRAY: 2, Slot.VECTOR: 1}
COUNTERS = ((Queue.LOAD, Queue.COMPUTE), (Queue.COMPUTE, Queue.LOAD), (Queue.COMPUTE, Queue.STORE),
            (Queue.STORE, Queue.COMPUTE))


def footprint(ins: Instruction, g: Geometry) -> list[tuple[str, int, int, int, int, bool]]:
    """``(space, bank_lo, bank_hi, lo, hi, write)`` boxes, half-open, of one instruction."""
    op, c = ins.opcode, g.cols
    boxes = []
    if op in (Opcode.LOAD, Opcode.STORE):
        elem = ELEMENT_BYTES[ins.elem]
        last = ins.dram_addr + (ins.z_count - 1) * ins.z_stride + (ins.y_count - 1) * ins.y_stride
        boxes.append(("DRAM", 0, 1, ins.dram_addr, last + ins.x_count * elem, op == Opcode.STORE))
        e = ins.x_count * ins.y_count
        mem = Memory(ins.mem)
        if mem in (Memory.A, Memory.B):
            banks, depth = (e, ins.z_count) if ins.transpose else (ins.z_count, e)
            boxes.append((mem.name, ins.sp_bank, ins.sp_bank + banks, ins.sp_addr, ins.sp_addr + depth, True))
        elif mem == Memory.ACC:
            end = ins.sp_addr + (ins.z_count - 1) * ins.sp_stride + -(-e // c)
            boxes.append(("ACC", 0, 1, ins.sp_addr, end, op == Opcode.LOAD))
        else:
            boxes.append(("PARAM", 0, 1, ins.sp_addr, ins.sp_addr + (ins.z_count - 1) * ins.sp_stride + e, True))
    elif op == Opcode.MATMUL:
        boxes.append(("A", 0, g.rows, ins.a_addr, ins.a_addr + ins.k, False))
        boxes.append(("B", 0, g.cols, ins.b_addr, ins.b_addr + ins.k, False))
        end = ins.acc_addr + (g.rows - 1) * ins.acc_stride + 1
        boxes.append(("ACC", 0, 1, ins.acc_addr, end, True))
        if ins.bias:
            boxes.append(("PARAM", 0, 1, ins.param_addr, ins.param_addr + c, False))
    elif op in (Opcode.REQUANT, Opcode.ADD, Opcode.SOFTMAX, Opcode.GELU, Opcode.LAYERNORM):
        span = (ins.rows - 1) * ins.stride + -(-ins.length // c)
        boxes.append(("ACC", 0, 1, ins.src, ins.src + span, False))
        if op == Opcode.ADD:
            boxes.append(("ACC", 0, 1, ins.src_b, ins.src_b + span, False))
        boxes.append(("ACC", 0, 1, ins.dst, ins.dst + span, True))
        if op in (Opcode.REQUANT, Opcode.ADD, Opcode.LAYERNORM):
            boxes.append(("PARAM", 0, 1, ins.param_addr, ins.param_addr + ins.length, False))
    return boxes


def mark_overlaps(instructions: list[Instruction], geometry: Geometry) -> list[Instruction]:
    """The stream with ``overlap`` set on every MATMUL and vector instruction that may run beside
    the other slot's instructions still in flight when it issues.

    An instruction with ``overlap`` knows complete what the compute instruction before it knew
    when it started, and what each slot's order implies (``_settled``); ``overlap`` is set when
    none of the other slot's instructions not known complete touches ACC words this one
    writes, or writes words it reads. Tokens need no care: they are pushed in program order.
    """
    out = list(instructions)
    issued: dict[Slot, list[int]] = {Slot.ARRAY: [], Slot.VECTOR: []}
    acc: dict[int, list[tuple[int, int, bool]]] = {}
    known = {Slot.ARRAY: -1, Slot.VECTOR: -1}      # per slot, complete when the previous compute instruction started
    previous = -1
    for i, ins in enumerate(instructions):
        if QUEUE_OF[ins.opcode] != Queue.COMPUTE:
            continue
        slot = SLOT_OF[ins.opcode]
        free = False
        if slot != Slot.CONTROL:
            now = {s: max(known[s], _settled(issued[s], s, s == slot)) for s in known}
            acc[i] = [(lo, hi, write) for space, _, _, lo, hi, write in footprint(ins, geometry) if space == "ACC"]
            other_slot = Slot.VECTOR if slot == Slot.ARRAY else Slot.ARRAY
            other = issued[other_slot]
            window = other[bisect.bisect_right(other, now[other_slot]):]
            free = bool(window) and not any((w or w2) and lo < hi2 and lo2 < hi for j in window
                                            for lo2, hi2, w2 in acc[j] for lo, hi, w in acc[i])
            issued[slot].append(i)
        if free:
            out[i] = ins.replace(overlap=1)
            known = now
        elif slot == Slot.ARRAY:        # it waits for the array to take the last MATMUL's last beat, not its rows
            known = {Slot.ARRAY: now[Slot.ARRAY], Slot.VECTOR: previous}
        else:
            known = dict.fromkeys(known, previous)
        previous = i
    return out


def _settled(issued: list[int], slot: Slot, own: bool) -> int:
    """The latest of ``slot``'s ``issued`` instructions complete when a later compute instruction
    starts, from that slot's order alone (-1: none); ``own``: the later one is of ``slot`` too.

    Issue is in order, so the last one issued has started. The vector slot runs one instruction
    at a time: the one before the last is complete (and the last, for the next vector
    instruction). The array holds at most two MATMULs, one streaming while the one before
    drains: the one two before the last is complete (one before, for the next MATMUL).
    """
    back = SLOT_DEPTH[slot] + (not own)
    return issued[-back] if len(issued) >= back else -1


def _happens_before(instructions: list[Instruction]) -> np.ndarray:
    """``known[i, lane]``: the latest instruction of each of ``LANES`` complete whenever ``i`` starts (-1: none).

    The compute module's lanes are its array (with SYNC and END) and its vector units.
    """
    n = len(instructions)
    known = np.full((n, len(LANES)), -1, dtype=np.int64)
    after = {q: np.full(len(LANES), -1, dtype=np.int64) for q in Queue}     # at the end of each queue's last
    pushed: dict[tuple, list[np.ndarray]] = {c: [] for c in COUNTERS}
    popped = dict.fromkeys(COUNTERS, 0)
    last_compute = -1
    issued: dict[Slot, list[int]] = {Slot.ARRAY: [], Slot.VECTOR: []}
    for i, ins in enumerate(instructions):
        queue = QUEUE_OF[ins.opcode]
        now = after[queue].copy()
        if queue == Queue.COMPUTE:
            own = SLOT_OF[ins.opcode]
            before = known[last_compute] if last_compute >= 0 else np.full(len(LANES), -1, dtype=np.int64)
            array = max(before[Queue.COMPUTE], _settled(issued[Slot.ARRAY], Slot.ARRAY, own == Slot.ARRAY))
            if ins.fields.get("overlap"):
                now = before.copy()
                now[Queue.COMPUTE] = array
                now[VECTOR_LANE] = max(now[VECTOR_LANE], _settled(issued[Slot.VECTOR], Slot.VECTOR,
                                                                  own == Slot.VECTOR))
            elif own == Slot.ARRAY:    # it waits for the array to take the last MATMUL's last beat, not its rows
                now[Queue.COMPUTE] = array
        for counter in COUNTERS:
            producer, consumer = counter
            if consumer == queue and ins.fields.get("pop_prev" if producer < consumer else "pop_next"):
                if popped[counter] >= len(pushed[counter]):
                    raise IntVitError(f"instruction {i} ({ins.opcode.name}) pops a token no earlier instruction gives")
                now = np.maximum(now, pushed[counter][popped[counter]])
                popped[counter] += 1
        known[i] = now
        done = np.maximum(now, after[queue])            # tokens are pushed in order within a module
        done[queue] = i
        if queue == Queue.COMPUTE:
            done[VECTOR_LANE] = i                       # retirement is in program order across both slots
            last_compute = i
            if SLOT_OF[ins.opcode] != Slot.CONTROL:
                issued[SLOT_OF[ins.opcode]].append(i)
        after[queue] = done
        for counter in COUNTERS:
            producer, consumer = counter
            if producer == queue and ins.fields.get("push_next" if producer < consumer else "push_prev"):
                pushed[counter].append(done)
    return known


def check_hazards(instructions: list[Instruction], geometry: Geometry) -> int:
    """Raise ``IntVitError`` naming a pair of conflicting instructions the tokens leave unordered.

    Only instructions of another module that are not yet known complete when an instruction
    starts can race with it, so each instruction is compared with that window alone.
    Returns the number of (instruction, unordered earlier instruction) pairs examined.
    """
    known = _happens_before(instructions)
    # Instructions race across modules, and across the compute module's two slots (with ``overlap``).
    lane_of = [VECTOR_LANE if SLOT_OF.get(ins.opcode) == Slot.VECTOR else QUEUE_OF[ins.opcode] for ins in instructions]
    boxes = [(i, lane_of[i], *box) for i, ins in enumerate(instructions) for box in footprint(ins, geometry)]
    examined = 0
    for space in SPACES:
        sel = [b for b in boxes if b[2] == space]
        if not sel:
            continue
        index, lane, _, b0, b1, lo, hi, write = (np.array(col) for col in zip(*sel))
        by_lane = {q: np.flatnonzero(lane == q) for q in LANES}
        for k in range(len(sel)):
            j = index[k]
            for q, rows in by_lane.items():
                if q == lane[k] or not rows.size:
                    continue
                first = np.searchsorted(index[rows], known[j, q], side="right")
                last = np.searchsorted(index[rows], j, side="left")
                window = rows[first:last]
                examined += window.size
                clash = window[(write[window] | write[k]) & (lo[window] < hi[k]) & (lo[k] < hi[window])
                               & (b0[window] < b1[k]) & (b0[k] < b1[window])]
                if clash.size:
                    i = int(index[clash[-1]])
                    raise IntVitError(f"instruction {j} ({instructions[j].opcode.name}) may overtake instruction {i} "
                                      f"({instructions[i].opcode.name}): both touch {space} and no token orders them")
    return examined
