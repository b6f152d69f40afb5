"""The controller: instruction fetch over AXI4, decode and legality checks, dispatch into the load,
compute and store queues, dependency tokens, issue, END, and the control/status registers.

It implements docs/isa.md's "Execution rules" (``compiler.isa`` holds the constants):

* **Fetch.** After ``start`` the controller reads ``FETCH_BURST_INSTRUCTIONS`` (8) instructions
  per AXI4 INCR burst from ``insn_base`` on its own read-only master port ``imem``, one burst at
  a time (the first in the ``start`` cycle, each next one as early as the cycle the previous
  one's last beat arrives), and only while the fetch FIFO
  (``FETCH_QUEUE_DEPTH`` = 16) has room for a whole burst. A burst's instructions become
  dispatchable in the cycle its last beat arrives.
* **Dispatch.** One instruction per cycle, in order, to its module's queue (``QUEUE_DEPTH``
  = 16 each); a full queue stalls dispatch. Each instruction is checked here: an illegal one
  (bad opcode, reserved bits set, a zero count, a ``mem``/``elem``/``transpose`` combination
  outside the tables, a token flag on a LOAD's or STORE's missing side) raises ``error``,
  records its index in ``error_index`` and stops the controller. Dispatch stops after END.
* **Issue.** A module starts the instruction at the head of its queue when it is idle and
  every token counter the instruction pops is non-zero; it takes the tokens then. A module
  signals completion with ``done`` for one cycle; its pushes land in that cycle, and the next
  instruction of the same module (or a consumer of the token) may start in the same cycle.
  The compute module has two slots, the array (MATMUL) and the vector units (the rest), and
  issues one instruction per cycle: an instruction with ``overlap`` set needs only its own
  slot idle, one without it both; compute instructions retire (push their tokens) in program
  order through a reorder buffer of ``REORDER_DEPTH`` (``_slots``).
  SYNC and END run in the controller's own slot, need both free and take ``CONTROL_CYCLES``
  (1) cycle. A token counter that would overflow its ``TOKEN_BITS`` raises ``error``.

Control/status: ``start`` (one cycle, while not busy) latches ``insn_base`` and clears
``done``, ``error`` and ``cycles``. ``busy`` is high from the cycle after ``start`` until END
completes (``done`` rises and stays) or an error stops the controller (``error`` rises and
stays). ``cycles`` counts from the ``start`` cycle (cycle 0) to the cycle END completes, as
docs/isa.md's Timing section defines the total.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import (
    ELEMENT_BYTES, FETCH_BURST_INSTRUCTIONS, FETCH_QUEUE_DEPTH, FIELDS, FORMAT_OF, INSTRUCTION_BITS, QUEUE_DEPTH,
    REORDER_DEPTH, TOKEN_BITS, Format, Memory, Opcode, Queue,
)
from intvit.quant.errors import IntVitError
from intvit.rtl.axi import BURST_INCR, CACHE_NORMAL, AxiSignature

__all__ = ["ModuleSignature", "ComputeSignature", "Controller", "field_slice"]

CYCLE_BITS = 48
# Token counters, named producer->consumer, and the instruction flag that pushes or pops each.
COUNTERS = ((Queue.LOAD, Queue.COMPUTE), (Queue.COMPUTE, Queue.LOAD),
            (Queue.COMPUTE, Queue.STORE), (Queue.STORE, Queue.COMPUTE))


def field_slice(word, fmt: Format, name: str):
    """Bits of field ``name`` of an instruction word (``compiler.isa.FIELDS``)."""
    f = next(f for f in FIELDS[fmt] if f.name == name)
    bits = word[f.offset:f.offset + f.width]
    return bits.as_signed() if f.signed else bits


def _used_mask(fmt: Format) -> int:
    mask = 0
    for f in FIELDS[fmt]:
        mask |= ((1 << f.width) - 1) << f.offset
    return mask


def ModuleSignature() -> wiring.Signature:
    """The controller's side of one execution module: ``insn`` and a one-cycle ``start``; ``done``
    for one cycle when the instruction completes (writes finished)."""
    return wiring.Signature({"insn": Out(INSTRUCTION_BITS), "start": Out(1), "done": In(1)})


def ComputeSignature() -> wiring.Signature:
    """The compute module's side: bit 0 of ``done`` when a MATMUL completes (in order), bit 1
    when a vector instruction does; ``array_ready`` while a MATMUL may start."""
    return wiring.Signature({"insn": Out(INSTRUCTION_BITS), "start": Out(1), "done": In(2), "array_ready": In(1)})


class Controller(wiring.Component):
    """Fetch, dispatch, tokens and issue for the load, compute and store modules.

    Parameters
    ----------
    data_width : int
        ``imem`` data bits (32 to 256): one instruction is ``256 / data_width`` beats.
    addr_width : int
        ``imem`` address bits.
    opcodes : iterable of Opcode, optional
        The opcodes the attached modules execute (all by default); any other is illegal, so a
        top without some unit raises ``error`` on its instructions instead of waiting forever.

    Attributes
    ----------
    start : In(1)
    insn_base : In(addr_width)
        Byte address of the first instruction, read in the ``start`` cycle.
    busy, done, error : Out(1)
    error_index : Out(32)
        Index of the instruction that raised ``error`` (counted from 0 in the stream).
    cycles : Out(48)
    imem : Out(AxiSignature(addr_width, data_width, read_only=True))
    load, store : Out(ModuleSignature())
    compute : Out(ComputeSignature())
        ``compute`` never sees SYNC or END.
    """

    def __init__(self, *, data_width: int = 128, addr_width: int = 32, opcodes=tuple(Opcode)):
        if data_width not in (32, 64, 128, 256):
            raise IntVitError(f"imem data_width must be 32, 64, 128 or 256 bits, not {data_width!r}")
        self._data_width, self._addr_width = data_width, addr_width
        self._opcodes = tuple(Opcode(op) for op in opcodes)
        super().__init__({
            "start": In(1), "insn_base": In(addr_width),
            "busy": Out(1), "done": Out(1), "error": Out(1), "error_index": Out(32), "cycles": Out(CYCLE_BITS),
            "imem": Out(AxiSignature(addr_width, data_width, read_only=True)),
            "load": Out(ModuleSignature()), "compute": Out(ComputeSignature()), "store": Out(ModuleSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        running = Signal()
        stop = Signal()                              # an error: nothing more is issued
        m.d.comb += self.busy.eq(running & ~self.error)
        with m.If(self.start & ~running):
            # ``cycles`` reads c during cycle c, the start cycle being 0.
            m.d.sync += [running.eq(1), self.done.eq(0), self.error.eq(0), self.cycles.eq(1), stop.eq(0)]
        with m.Elif(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        started = self.start & ~running

        fetched = self._fetch(m, running, started)
        queues = {q: fifo.SyncFIFO(width=INSTRUCTION_BITS, depth=QUEUE_DEPTH) for q in Queue}
        for q, queue in queues.items():
            m.submodules[f"queue_{q.name.lower()}"] = queue
        self._dispatch(m, fetched, queues, running, stop, started)
        self._issue(m, queues, running, stop, started)
        return m

    def _fetch(self, m: Module, running, started) -> fifo.SyncFIFO:
        """imem bursts into the fetch FIFO; returns the FIFO (``r_*`` side for dispatch)."""
        w = self._data_width
        beats_per_insn = INSTRUCTION_BITS // w
        burst_beats = FETCH_BURST_INSTRUCTIONS * beats_per_insn
        axi = self.imem
        fetched = m.submodules.fetched = fifo.SyncFIFO(width=INSTRUCTION_BITS, depth=FETCH_QUEUE_DEPTH)
        self._visible = Signal(range(FETCH_QUEUE_DEPTH + 1))   # entries of fully arrived bursts
        self._fetch_stop = Signal()                            # END dispatched
        address = Signal(self._addr_width)
        in_flight = Signal()
        assembled = Signal(INSTRUCTION_BITS)
        beat = Signal(range(max(beats_per_insn, 2)))
        count = Signal(range(burst_beats + 1))
        arrived = Signal()                                     # a burst's last beat, this cycle
        with m.If(started):
            m.d.sync += [in_flight.eq(0), beat.eq(0), count.eq(0)]
        # The first burst goes out in the start cycle itself (cycle 0 of the schedule).
        base = Mux(started, self.insn_base, address)
        m.d.comb += [axi.araddr.eq(base), axi.arlen.eq(burst_beats - 1), axi.arsize.eq((w // 8).bit_length() - 1),
                     axi.arburst.eq(BURST_INCR), axi.arcache.eq(CACHE_NORMAL),
                     axi.arvalid.eq(started | (running & (~in_flight | arrived) & ~self._fetch_stop
                                               & (fetched.level + fetched.w_en
                                                  <= FETCH_QUEUE_DEPTH - FETCH_BURST_INSTRUCTIONS))),
                     axi.rready.eq(in_flight)]
        word = Signal(INSTRUCTION_BITS)
        if beats_per_insn == 1:
            m.d.comb += word.eq(axi.rdata)
        else:
            m.d.comb += word.eq(Mux(beat == beats_per_insn - 1, (axi.rdata << (INSTRUCTION_BITS - w))
                                    | (assembled >> w), 0))
        with m.If(axi.rvalid & axi.rready):
            m.d.sync += [assembled.eq((axi.rdata << (INSTRUCTION_BITS - w)) | (assembled >> w)),
                         beat.eq(Mux(beat == beats_per_insn - 1, 0, beat + 1)), count.eq(count + 1)]
            m.d.comb += [fetched.w_en.eq(beat == beats_per_insn - 1), fetched.w_data.eq(word)]
            with m.If(count == burst_beats - 1):
                m.d.sync += in_flight.eq(0)
                m.d.comb += arrived.eq(1)
        # The next burst may go out in the cycle the previous one's last beat arrives.
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [in_flight.eq(1), count.eq(0), address.eq(base + FETCH_BURST_INSTRUCTIONS * INSTRUCTION_BITS // 8)]
        self._arrived = arrived
        return fetched

    def _dispatch(self, m: Module, fetched, queues, running, stop, started):
        insn = fetched.r_data
        opcode = insn[0:4]
        pop_prev, pop_next, push_prev, push_next = insn[4], insn[5], insn[6], insn[7]
        index = Signal(32)
        legal = Signal()
        target = Signal(range(len(Queue)))
        is_end = opcode == Opcode.END
        with m.Switch(opcode):
            for op in self._opcodes:
                with m.Case(op):
                    fmt = FORMAT_OF[op]
                    checks = [(insn & ~Const(_used_mask(fmt), INSTRUCTION_BITS)) == 0]
                    if fmt == Format.DMA:
                        checks += self._dma_checks(insn, op)
                    elif fmt == Format.MATMUL:
                        checks.append(field_slice(insn, fmt, "k") != 0)
                    elif fmt == Format.VECTOR:
                        checks += [field_slice(insn, fmt, "rows") != 0, field_slice(insn, fmt, "length") != 0]
                    ok = checks[0]
                    for check in checks[1:]:
                        ok = ok & check
                    queue = Queue.LOAD if op == Opcode.LOAD else Queue.STORE if op == Opcode.STORE else Queue.COMPUTE
                    m.d.comb += [legal.eq(ok), target.eq(queue)]
            with m.Default():
                m.d.comb += legal.eq(0)
        side_ok = ~(((opcode == Opcode.LOAD) & (pop_prev | push_prev)) | ((opcode == Opcode.STORE) & (pop_next | push_next)))
        room = Signal()
        with m.Switch(target):
            for q, queue in queues.items():
                with m.Case(q):
                    m.d.comb += room.eq(queue.w_rdy)
        # A burst's instructions are dispatchable from the cycle its last beat arrives (the head
        # of the FIFO is then an earlier instruction, written before).
        can = running & ~stop & ~self._fetch_stop & ((self._visible != 0) | self._arrived)
        with m.If(started):
            m.d.sync += [index.eq(0), self._visible.eq(0), self._fetch_stop.eq(0)]
        take = Signal()
        with m.If(can):
            with m.If(~(legal & side_ok)):
                m.d.sync += [stop.eq(1), self.error.eq(1), self.error_index.eq(index)]
            with m.Elif(room):
                m.d.comb += take.eq(1)
        m.d.comb += fetched.r_en.eq(take)
        for q, queue in queues.items():
            m.d.comb += [queue.w_data.eq(insn), queue.w_en.eq(take & (target == q))]
        with m.If(take):
            m.d.sync += index.eq(index + 1)
            with m.If(is_end):
                m.d.sync += self._fetch_stop.eq(1)
        m.d.sync += self._visible.eq(self._visible + Mux(self._arrived, FETCH_BURST_INSTRUCTIONS, 0) - take)
        with m.If(started):
            m.d.sync += self._visible.eq(0)

    @staticmethod
    def _dma_checks(insn, op: Opcode) -> list:
        f = Format.DMA
        mem, transpose, elem = field_slice(insn, f, "mem"), field_slice(insn, f, "transpose"), field_slice(insn, f, "elem")
        counts = [field_slice(insn, f, name) != 0 for name in ("x_count", "y_count", "z_count")]
        one_byte, four_bytes = ELEMENT_BYTES.index(1), ELEMENT_BYTES.index(4)
        acc_elem = (mem == Memory.ACC) & (transpose == 0) & ((elem == one_byte) | (elem == four_bytes))
        if op == Opcode.STORE:
            combination = acc_elem
        else:
            combination = (((mem == Memory.A) | (mem == Memory.B)) & (elem == one_byte)) | acc_elem | \
                ((mem == Memory.PARAM) & (transpose == 0) & (elem == ELEMENT_BYTES.index(16)))
        return [*counts, combination]

    def _issue(self, m: Module, queues, running, stop, started):
        counters = {c: Signal(TOKEN_BITS, name=f"tokens_{c[0].name.lower()}_{c[1].name.lower()}") for c in COUNTERS}
        pops = {c: Signal(name=f"pop_{c[0].name.lower()}_{c[1].name.lower()}") for c in COUNTERS}
        pushes = {c: Signal(name=f"push_{c[0].name.lower()}_{c[1].name.lower()}") for c in COUNTERS}
        # Per module, the instruction completing this cycle and its push flags (push_prev, push_next):
        # load and store run one instruction at a time; compute retires one a cycle (``_slots``).
        retiring, go, free, control_end = {}, {}, {}, Signal()
        for q in (Queue.LOAD, Queue.STORE):
            port, busy, flags = getattr(self, q.name.lower()), Signal(name=f"{q.name.lower()}_busy"), \
                Signal(2, name=f"{q.name.lower()}_pushes")
            done = busy & port.done
            go[q] = Signal(name=f"{q.name.lower()}_go")
            with m.If(go[q]):
                m.d.sync += [busy.eq(1), flags.eq(queues[q].r_data[6:8])]
            with m.Elif(done | started):
                m.d.sync += busy.eq(0)
            m.d.comb += [port.insn.eq(queues[q].r_data), port.start.eq(go[q])]
            retiring[q] = (done, flags)
            free[q] = ~busy | done
        go[Queue.COMPUTE] = Signal(name="compute_go")
        free[Queue.COMPUTE], retiring[Queue.COMPUTE] = self._slots(m, queues[Queue.COMPUTE].r_data,
                                                                   go[Queue.COMPUTE], started, control_end)
        for producer, consumer in COUNTERS:
            done, flags = retiring[producer]
            m.d.comb += pushes[(producer, consumer)].eq(done & flags[1 if producer < consumer else 0])

        for q, queue in queues.items():
            head = queue.r_data
            ready = queue.r_rdy & running & ~stop & free[q]
            wanted = []
            for counter in COUNTERS:
                producer, consumer = counter
                if consumer != q:
                    continue
                flag = head[4] if producer < consumer else head[5]   # pop_prev / pop_next
                # A push in this very cycle counts: the consumer may start in the producer's completion cycle.
                ready = ready & (~flag | (counters[counter] != 0) | pushes[counter])
                wanted.append((counter, flag))
            m.d.comb += [go[q].eq(ready), queue.r_en.eq(go[q])]
            for counter, flag in wanted:
                m.d.comb += pops[counter].eq(go[q] & flag)

        for counter, value in counters.items():
            new = value + pushes[counter] - pops[counter]
            m.d.sync += value.eq(new)
            with m.If(new > (1 << TOKEN_BITS) - 1):
                m.d.sync += [stop.eq(1), self.error.eq(1)]
            with m.If(started):
                m.d.sync += value.eq(0)

        with m.If(control_end):
            # Stop counting in the cycle END completes: ``cycles`` then reads that cycle's number.
            m.d.sync += [self.done.eq(1), stop.eq(1), running.eq(0), self.cycles.eq(self.cycles)]
        with m.If(self.error):
            m.d.sync += running.eq(0)

    def _slots(self, m: Module, head, go, started, control_end):
        """The compute module's slots (docs/isa.md, "Execution rules"): the array (MATMUL), the
        vector units (the rest) and the controller's own (SYNC, END, one cycle).

        The head may start when its slot is idle (a MATMUL: when the array takes one, which is
        while the previous one drains), and the other slot is idle too unless ``overlap`` is
        set (SYNC and END: both idle), and when the reorder buffer has room. Each issued instruction
        enters the reorder buffer (its slot, its pushes, END); the oldest one retires (pushes
        its tokens) in the cycle its slot has signalled ``done`` for it, one per cycle, so the
        tokens keep program order while the slots finish out of it. Returns the issue
        condition and ``(retiring, its push_prev and push_next)``; sets ``control_end`` when
        END retires.
        """
        port = self.compute
        opcode, overlap = head[0:4], head[10]
        control = (opcode == Opcode.SYNC) | (opcode == Opcode.END)
        on_array = opcode == Opcode.MATMUL
        slot = Mux(control, 2, Mux(on_array, 0, 1))
        rob = m.submodules.reorder = fifo.SyncFIFO(width=5, depth=REORDER_DEPTH)   # slot, push_prev/next, END
        # Instructions running per slot: up to two MATMULs (one streaming, one draining), one
        # vector instruction, one SYNC or END (done the cycle after it starts).
        busy = [Signal(range(3), name=f"{name}_busy") for name in ("array", "vector", "control")]
        done = Signal(3)                                  # a slot's instruction finishes this cycle
        m.d.comb += done.eq(Cat(port.done, busy[2] != 0))
        idle = [(busy[k] == 0) | ((busy[k] == 1) & done[k]) for k in range(3)]
        free = rob.w_rdy & Mux(control, idle[0] & idle[1], Mux(on_array, port.array_ready & (overlap | idle[1]),
                                                                  idle[1] & (overlap | idle[0])))
        m.d.comb += [port.insn.eq(head), port.start.eq(go & ~control),
                     rob.w_en.eq(go), rob.w_data.eq(Cat(slot.as_unsigned()[:2], head[6:8], opcode == Opcode.END))]
        for k in range(3):
            m.d.sync += busy[k].eq(busy[k] + (go & (slot == k)) - done[k])
            with m.If(started):
                m.d.sync += busy[k].eq(0)
        # Finished but not yet retired, per slot; the oldest retires when its slot has one.
        pending = [Signal(range(REORDER_DEPTH + 1), name=f"{name}_finished") for name in ("array", "vector", "control")]
        oldest = rob.r_data[0:2]
        retire = Signal()
        with m.Switch(oldest):
            for k in range(3):
                with m.Case(k):
                    m.d.comb += retire.eq(rob.r_rdy & ((pending[k] != 0) | done[k]))
        m.d.comb += rob.r_en.eq(retire)
        for k in range(3):
            m.d.sync += pending[k].eq(pending[k] + done[k] - (retire & (oldest == k)))
            with m.If(started):
                m.d.sync += pending[k].eq(0)
        m.d.comb += control_end.eq(retire & rob.r_data[4])
        return free, (retire, rob.r_data[2:4])
