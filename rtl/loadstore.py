"""The load and store modules: LOAD and STORE instructions (docs/isa.md) on an AXI4 master port.

Both walk an instruction's transfer as *runs* of contiguous external bytes (the rows of a plane
form one run when ``y_stride`` equals the row's bytes, the whole transfer when ``z_stride``
also equals the plane's) and cut each run into INCR bursts at every 4 KiB boundary and after
``max_burst_beats`` beats. One burst at a time: the next address goes out in the cycle the
previous burst ends (its last R beat for a load, its B response for a store), so a LOAD takes
``1 + sum(Lr + beats)`` and a STORE ``1 + sum(Lw + beats)`` cycles when the memory answers a
read ``Lr`` cycles after its address handshake with one beat a cycle, and a write ``Lw``
cycles after it (docs/isa.md, "Timing"). ``done`` is high in the completion cycle.

Data move one beat (``W`` bytes) per cycle. A beat holds up to ``W / elem_bytes`` elements,
called *slots*; the ``j``-th element of the transfer in ``(z, y, x)`` order is element
``e = y * x_count + x`` of plane ``z``, and its scratchpad place follows the ISA's table. The
slot map (``_SlotMap``) finds ``(z, e)`` of every slot of a beat from the first one's with
multiples of the plane size precomputed at issue, so a beat never waits, and holds them in
registers, so the scratchpad addresses built from them start at a register.

Supported: ``W`` of 4 to 32 bytes, external addresses and strides of 4- and 16-byte elements
aligned to the element (the compiler aligns every region), ``W <= cols`` (a beat of INT8
elements writes distinct ACC lanes) and ``cols`` a power of two.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import ELEMENT_BYTES, INSTRUCTION_BITS, Format, Memory
from intvit.quant.errors import IntVitError
from intvit.rtl.controller import field_slice
from intvit.rtl.axi import BURST_INCR, CACHE_NORMAL, AxiSignature

__all__ = ["LoadUnit", "StoreUnit", "SpGeometry"]

F = Format.DMA


class SpGeometry:
    """Scratchpad shapes the load and store modules address (from ``compiler.isa.Geometry``)."""

    def __init__(self, rows: int, cols: int, a_depth: int, b_depth: int, acc_words: int, param_records: int,
                 beat_bytes: int):
        if cols & (cols - 1):
            raise IntVitError(f"matmul.cols must be a power of two for the RTL's ACC lanes, not {cols}")
        if beat_bytes not in (4, 8, 16, 32):
            raise IntVitError(f"memory.axi_data_bits must be 32 to 256 for the RTL, not {beat_bytes * 8}")
        if beat_bytes > cols:
            raise IntVitError(f"memory.axi_data_bits ({beat_bytes * 8}) must not exceed 8 x matmul.cols ({cols}): "
                              "one beat of INT8 elements writes distinct ACC lanes")
        self.rows, self.cols, self.beat_bytes = rows, cols, beat_bytes
        self.a_words = -(-a_depth // beat_bytes)
        self.b_words = -(-b_depth // beat_bytes)
        self.acc_words = acc_words
        self.param_words = -(-param_records // cols)
        # A legal transfer puts every element of a plane inside its memory (docs/isa.md), so a plane
        # holds at most this many: bytes of an A/B bank, A/B banks (transposed), ACC elements or
        # PARAM records. The slot map's element arithmetic is this wide, not 32 bits.
        self.plane_elements = max(self.a_words * beat_bytes, self.b_words * beat_bytes, rows, cols,
                                  acc_words * cols, self.param_words * cols)


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class _Runs(wiring.Component):
    """Bursts of an instruction's runs: ``addr``/``beats`` of the next burst, byte window of each beat.

    ``start`` (with ``insn``) loads the walk; ``next`` moves to the next burst. ``first_lo`` is the
    first valid byte lane of the burst's first beat, ``last_hi`` one past the last valid byte of
    its last beat (``W`` when whole).
    """

    def __init__(self, beat_bytes: int, max_beats: int, cols: int, addr_width: int = 32):
        self._w, self._max, self._cols = beat_bytes, max_beats, cols
        super().__init__({"start": In(1), "insn": In(INSTRUCTION_BITS), "base": In(addr_width), "next": In(1),
                          "busy": Out(1), "addr": Out(addr_width), "beats": Out(range(max_beats + 1)),
                          "first_lo": Out(range(beat_bytes)), "last_hi": Out(range(beat_bytes + 1))})

    def elaborate(self, platform):
        m = Module()
        w = self._w
        wb = w.bit_length() - 1
        insn = self.insn
        eb = Signal(5)
        with m.Switch(field_slice(insn, F, "elem")):
            for code, size in enumerate(ELEMENT_BYTES):
                with m.Case(code):
                    m.d.comb += eb.eq(size)
        x, y, z = (field_slice(insn, F, n) for n in ("x_count", "y_count", "z_count"))
        y_stride, z_stride = field_slice(insn, F, "y_stride"), field_slice(insn, F, "z_stride")
        row_bytes = x * eb
        rows_run = (y == 1) | (y_stride == row_bytes)
        # ACC planes start at lane 0 of a word: one run across planes whose size is not a whole
        # number of words would put two planes' elements on one lane in a beat.
        plane_words = ((x * y)[:(self._cols - 1).bit_length()] == 0) | (field_slice(insn, F, "mem") != Memory.ACC)
        whole = rows_run & ((z == 1) | (z_stride == row_bytes * y)) & ((z == 1) | plane_words)

        run_bytes = Signal(32)
        runs_y = Signal(16)              # runs per plane (1 when a plane is one run)
        runs_z = Signal(16)              # planes walked run by run (1 when the transfer is one run)
        ystep, zstep = Signal(32), Signal(32)
        yi, zi = Signal(16), Signal(16)
        run_start, plane_start = Signal(32), Signal(32)
        pos = Signal(32)                 # next byte of the current run
        end = Signal(32)                 # one past its last byte
        with m.If(self.start):
            m.d.sync += [run_bytes.eq(Mux(whole, row_bytes * y * z, Mux(rows_run, row_bytes * y, row_bytes))),
                         runs_y.eq(Mux(rows_run, 1, y)), runs_z.eq(Mux(whole, 1, z)),
                         ystep.eq(y_stride), zstep.eq(z_stride), yi.eq(0), zi.eq(0),
                         run_start.eq(self.base + field_slice(insn, F, "dram_addr")),
                         plane_start.eq(self.base + field_slice(insn, F, "dram_addr")),
                         pos.eq(self.base + field_slice(insn, F, "dram_addr")),
                         end.eq(self.base + field_slice(insn, F, "dram_addr")
                                + Mux(whole, row_bytes * y * z, Mux(rows_run, row_bytes * y, row_bytes))),
                         self.busy.eq(1)]
        first = pos[wb:]
        page_end = Cat(Const(0, 12), pos[12:] + 1)
        beat_end = (first + self._max) << wb
        limit = Signal(32)
        m.d.comb += limit.eq(end)
        with m.If((page_end < end) & (page_end <= beat_end)):
            m.d.comb += limit.eq(page_end)
        with m.Elif(beat_end < end):
            m.d.comb += limit.eq(beat_end)
        m.d.comb += [self.addr.eq(pos), self.beats.eq(((limit + w - 1) >> wb) - first),
                     self.first_lo.eq(pos[:wb]), self.last_hi.eq(Mux(limit[:wb] == 0, w, limit[:wb]))]
        with m.If(self.next & ~self.start):
            with m.If(limit != end):
                m.d.sync += pos.eq(limit)
            with m.Elif((yi + 1 < runs_y)):
                m.d.sync += [yi.eq(yi + 1), run_start.eq(run_start + ystep), pos.eq(run_start + ystep),
                             end.eq(run_start + ystep + run_bytes)]
            with m.Elif(zi + 1 < runs_z):
                m.d.sync += [yi.eq(0), zi.eq(zi + 1), plane_start.eq(plane_start + zstep),
                             run_start.eq(plane_start + zstep), pos.eq(plane_start + zstep),
                             end.eq(plane_start + zstep + run_bytes)]
            with m.Else():
                m.d.sync += self.busy.eq(0)
        return m


class _SlotMap(wiring.Component):
    """``(z, e)`` of each slot of a beat: slot ``j`` is element ``first + j`` of the transfer.

    ``start`` loads the plane size ``P = x_count * y_count`` (and its multiples); ``advance``
    moves the first element on by ``count`` slots. ``z[j]``, ``e[j]`` come from registers, valid
    from the cycle after ``start`` and after each ``advance``: the plane walk ends at a register,
    so an address built from them (through a stride multiplier) starts at one. Planes of up to
    ``plane_elements`` elements (``SpGeometry.plane_elements``) are walked exactly; the arithmetic
    is no wider than they need (a larger plane is an illegal transfer).
    """

    def __init__(self, slots: int, plane_elements: int):
        self._slots = slots
        self._e_bits = (plane_elements + slots).bit_length()      # e0 + j, e0 < P <= plane_elements
        self._m_bits = (plane_elements * slots).bit_length()      # P * k, k <= slots
        super().__init__({"start": In(1), "insn": In(INSTRUCTION_BITS), "advance": In(1),
                          "count": In(range(slots + 1)),
                          "z": Out(16).array(slots), "e": Out(self._e_bits).array(slots)})

    def elaborate(self, platform):
        m = Module()
        s = self._slots
        plane = (field_slice(self.insn, F, "x_count") * field_slice(self.insn, F, "y_count"))[:self._m_bits]
        multiples = [Signal(self._m_bits, name=f"plane_x{k}") for k in range(s + 1)]
        # Slot j's place for j = 0 .. s: slot s's is where the next beat starts after a full one.
        places = [(Signal(16, name=f"z{j}"), Signal(self._e_bits, name=f"e{j}")) for j in range(s + 1)]
        m.d.comb += [out.eq(reg) for j in range(s) for out, reg in zip((self.z[j], self.e[j]), places[j])]
        with m.If(self.start):
            m.d.sync += [multiple.eq(plane * k) for k, multiple in enumerate(multiples)]
            # Element j <= s of the transfer is j // P, j % P. Against constants, not the plane's
            # multiples (loaded in this same cycle): j >= k * P exactly when P <= j // k.
            small = plane[:s.bit_length()]                       # P itself whenever P <= s
            for j, (z, e) in enumerate(places):
                wraps = Signal(range(s + 1), name=f"start_wraps{j}")
                m.d.comb += wraps.eq(sum((plane <= j // k) for k in range(1, j + 1)) if j else 0)
                m.d.sync += z.eq(wraps)
                with m.Switch(wraps):
                    for k in range(j + 1):
                        with m.Case(k):
                            m.d.sync += e.eq(j - small * k)
        with m.Elif(self.advance):
            first_z, first_e = Signal(16), Signal(self._e_bits)
            with m.Switch(self.count):
                for n in range(s + 1):
                    with m.Case(n):
                        m.d.comb += [first_z.eq(places[n][0]), first_e.eq(places[n][1])]
            for j, (z, e) in enumerate(places):
                raw = first_e + j
                wraps = Signal(range(s + 1), name=f"wraps{j}")
                m.d.comb += wraps.eq(sum((raw >= multiples[k]) for k in range(1, s + 1)))
                sub = Signal(self._m_bits, name=f"sub{j}")
                with m.Switch(wraps):
                    for k in range(s + 1):
                        with m.Case(k):
                            m.d.comb += sub.eq(multiples[k])
                m.d.sync += [z.eq(first_z + wraps), e.eq(raw - sub)]
        return m


def _any(values):
    """OR of the values (one-hot selections), as a balanced tree."""
    values = list(values)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def _elem_code(insn):
    return field_slice(insn, F, "elem")


class LoadUnit(wiring.Component):
    """LOAD: AXI4 reads into A, B, ACC or PARAM.

    Attributes
    ----------
    start : In(1), insn : In(256), done : Out(1)
        From the controller (``ModuleSignature``, flipped).
    base : In(32)
        ``DATA_BASE``.
    axi : Out(AxiSignature(32, 8 W, read_only=True))
    a_we, b_we : Out(1).array(banks x W); a_addr, b_addr : Out(word bits).array(...); a_data, b_data
        One write per byte-lane memory of every bank (``bank * W + lane``).
    acc_we, acc_addr, acc_data : per ACC lane (``cols``), INT32.
    param_we, param_addr, param_data : per PARAM lane (``cols``), 128 bits; record ``r`` is
        lane ``r % cols`` word ``r // cols``.
    """

    def __init__(self, geometry: SpGeometry, max_burst_beats: int):
        g = self._g = geometry
        self._max = max_burst_beats
        w, c = g.beat_bytes, g.cols
        members = {"start": In(1), "insn": In(INSTRUCTION_BITS), "done": Out(1), "base": In(32),
                   "axi": Out(AxiSignature(32, 8 * w, read_only=True))}
        for name, banks, words in (("a", g.rows, g.a_words), ("b", g.cols, g.b_words)):
            members |= {f"{name}_we": Out(1).array(banks * w), f"{name}_addr": Out(_bits(words)).array(banks * w),
                        f"{name}_data": Out(8).array(banks * w)}
        members |= {"acc_we": Out(1).array(c), "acc_addr": Out(_bits(g.acc_words)).array(c),
                    "acc_data": Out(32).array(c),
                    "param_we": Out(1).array(c), "param_addr": Out(_bits(g.param_words)).array(c),
                    "param_data": Out(128).array(c)}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        g = self._g
        w, c = g.beat_bytes, g.cols
        wb = w.bit_length() - 1
        insn = Signal(INSTRUCTION_BITS)
        busy = Signal()
        with m.If(self.done):
            m.d.sync += busy.eq(0)
        with m.If(self.start):        # may come in the completion cycle of the previous one
            m.d.sync += [insn.eq(self.insn), busy.eq(1)]
        runs = m.submodules.runs = _Runs(w, self._max, c)
        slots = m.submodules.slots = _SlotMap(w, g.plane_elements)
        m.d.comb += [runs.start.eq(self.start), runs.insn.eq(self.insn), runs.base.eq(self.base),
                     slots.start.eq(self.start), slots.insn.eq(self.insn)]

        axi = self.axi
        in_flight = Signal()
        left = Signal(range(self._max + 1))
        lo, hi = Signal(range(w)), Signal(range(w + 1))
        first_beat = Signal()
        last_beat = left == 1
        handshake = axi.rvalid & axi.rready
        burst_end = handshake & last_beat
        m.d.comb += [axi.araddr.eq(Cat(Const(0, wb), runs.addr[wb:])), axi.arlen.eq(runs.beats - 1),
                     axi.arsize.eq(wb), axi.arburst.eq(BURST_INCR), axi.arcache.eq(CACHE_NORMAL),
                     axi.arvalid.eq(busy & runs.busy & (~in_flight | burst_end)), axi.rready.eq(in_flight)]
        with m.If(handshake):
            m.d.sync += [left.eq(left - 1), first_beat.eq(0)]
            with m.If(last_beat):
                m.d.sync += in_flight.eq(0)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [in_flight.eq(1), left.eq(runs.beats), lo.eq(runs.first_lo), hi.eq(runs.last_hi),
                         first_beat.eq(1)]
        m.d.comb += runs.next.eq(axi.arvalid & axi.arready)
        m.d.comb += self.done.eq(busy & burst_end & ~runs.busy)

        # Byte window of this beat; elements of e bytes occupy slots [lo_e, hi_e) of W / e.
        beat_lo = Mux(first_beat, lo, 0)
        beat_hi = Mux(last_beat, hi, w)
        code = _elem_code(insn)
        eb_shift = Mux(code == 0, 0, Mux(code == 1, 2, 4))
        # 16-byte records on a narrower bus arrive in W-byte parts: assemble them.
        parts = max(16 // w, 1)
        record = Signal(128)
        part = Signal(range(parts + 1))
        whole_record = Signal()
        if parts > 1:
            with m.If(handshake & (code == 2)):
                m.d.sync += [record.eq(Cat(record[8 * w:], axi.rdata)), part.eq(Mux(part == parts - 1, 0, part + 1))]
            m.d.comb += whole_record.eq(part == parts - 1)
        count = Signal(range(w + 1))
        with m.If(code == 2):
            m.d.comb += count.eq(Mux(w >= 16, (beat_hi - beat_lo) >> 4, whole_record))
        with m.Elif(code == 1):
            m.d.comb += count.eq((beat_hi - beat_lo) >> 2)
        with m.Else():
            m.d.comb += count.eq(beat_hi - beat_lo)
        m.d.comb += [slots.advance.eq(handshake), slots.count.eq(count)]

        mem = field_slice(insn, F, "mem")
        transpose = field_slice(insn, F, "transpose")
        sp_addr, sp_bank, sp_stride = (field_slice(insn, F, n) for n in ("sp_addr", "sp_bank", "sp_stride"))
        data_bytes = [axi.rdata[8 * i:8 * i + 8] for i in range(w)]
        start_slot = beat_lo >> eb_shift
        bank_hits = {"a": [], "b": []}
        for j in range(w):
            valid = handshake & (j < count)
            z, e = slots.z[j], slots.e[j]
            # Slot j's bytes start at byte lane (start_slot + j) << eb_shift of the beat.
            lane = Signal(range(w), name=f"slot{j}_lane")
            m.d.comb += lane.eq((start_slot + j) << eb_shift)
            byte = Signal(8, name=f"slot{j}_byte")
            word32 = Signal(32, name=f"slot{j}_word32")
            with m.Switch(lane):
                for i in range(w):
                    with m.Case(i):
                        m.d.comb += byte.eq(data_bytes[i])
                        if i + 4 <= w:
                            m.d.comb += word32.eq(axi.rdata[8 * i:8 * i + 32])
            # A and B: bank and byte offset of the element.
            bank = Signal(16, name=f"slot{j}_bank")
            offset = Signal(24, name=f"slot{j}_offset")
            m.d.comb += [bank.eq(Mux(transpose, sp_bank + e, sp_bank + z)),
                         offset.eq(Mux(transpose, sp_addr + z, sp_addr + e))]
            for name, banks, kind in (("a", g.rows, Memory.A), ("b", g.cols, Memory.B)):
                target = Signal(range(banks * w), name=f"slot{j}_{name}_target")
                m.d.comb += target.eq(bank * w + offset[:wb])
                bank_hits[name].append((valid & (mem == kind) & (bank < banks), target, offset[wb:], byte))
            # ACC: word sp_addr + z * sp_stride + e // C, lane e % C.
            cb = c.bit_length() - 1
            acc_word = Signal(24, name=f"slot{j}_acc_word")
            m.d.comb += acc_word.eq(sp_addr + z * sp_stride + (e >> cb))
            value = Mux(code == 0, byte.as_signed(), word32)
            for lane_c in range(c):
                with m.If(valid & (mem == Memory.ACC) & (e[:cb] == lane_c)):
                    m.d.comb += [self.acc_we[lane_c].eq(1), self.acc_addr[lane_c].eq(acc_word),
                                 self.acc_data[lane_c].eq(value)]
            # PARAM: record sp_addr + z * sp_stride + e.
            if j < max(w // 16, 1):
                rec = Signal(24, name=f"slot{j}_record")
                m.d.comb += rec.eq(sp_addr + z * sp_stride + e)
                rec_data = axi.rdata[128 * j:128 * j + 128] if w >= 16 else Cat(record[8 * w:], axi.rdata)
                for lane_c in range(c):
                    with m.If(valid & (mem == Memory.PARAM) & (rec[:cb] == lane_c)):
                        m.d.comb += [self.param_we[lane_c].eq(1), self.param_addr[lane_c].eq(rec[cb:]),
                                     self.param_data[lane_c].eq(rec_data)]
        # Each byte-lane memory of A and B takes the one slot aimed at it (slots never collide):
        # one-hot target per slot, then an OR over the slots per memory (no per-memory decision
        # trees, which Yosys would write out once per output).
        for name in ("a", "b"):
            we, addr, data = (getattr(self, f"{name}_{x}") for x in ("we", "addr", "data"))
            onehots = []
            for j, (hit, target, _word, _byte) in enumerate(bank_hits[name]):
                onehot = Signal(len(we), name=f"{name}_slot{j}_onehot")
                m.d.comb += onehot.eq(hit << target)
                onehots.append(onehot)
            for t in range(len(we)):
                picks = [(onehot[t], word, byte) for onehot, (_, _, word, byte) in zip(onehots, bank_hits[name])]
                m.d.comb += [we[t].eq(_any(pick for pick, _, _ in picks)),
                             addr[t].eq(_any(Mux(pick, word, 0) for pick, word, _ in picks)),
                             data[t].eq(_any(Mux(pick, byte, 0) for pick, _, byte in picks))]
        return m


class StoreUnit(wiring.Component):
    """STORE: ACC lanes (INT8 low bytes or INT32) out over AXI4's write channels.

    Attributes
    ----------
    start, insn, done, base
        As ``LoadUnit``.
    axi : Out(AxiSignature(32, 8 W)) (write channels only are driven)
    acc_ren : Out(1); acc_raddr : Out(word bits).array(cols); acc_rdata : In(32).array(cols)
        One read port per ACC lane, data the cycle after an enabled address, held otherwise.
    """

    def __init__(self, geometry: SpGeometry, max_burst_beats: int):
        g = self._g = geometry
        self._max = max_burst_beats
        super().__init__({"start": In(1), "insn": In(INSTRUCTION_BITS), "done": Out(1), "base": In(32),
                          "axi": Out(AxiSignature(32, 8 * g.beat_bytes)),
                          "acc_ren": Out(1), "acc_raddr": Out(_bits(g.acc_words)).array(g.cols),
                          "acc_rdata": In(32).array(g.cols)})

    def elaborate(self, platform):
        m = Module()
        g = self._g
        w, c = g.beat_bytes, g.cols
        wb, cb = w.bit_length() - 1, c.bit_length() - 1
        insn = Signal(INSTRUCTION_BITS)
        busy = Signal()
        with m.If(self.done):
            m.d.sync += busy.eq(0)
        with m.If(self.start):        # may come in the completion cycle of the previous one
            m.d.sync += [insn.eq(self.insn), busy.eq(1)]
        runs = m.submodules.runs = _Runs(w, self._max, c)
        slots = m.submodules.slots = _SlotMap(w, g.plane_elements)
        m.d.comb += [runs.start.eq(self.start), runs.insn.eq(self.insn), runs.base.eq(self.base),
                     slots.start.eq(self.start), slots.insn.eq(self.insn)]
        axi = self.axi
        in_flight = Signal()            # AW taken, B not yet back
        sending = Signal()              # W beats of the burst still to go
        left = Signal(range(self._max + 1))
        lo, hi = Signal(range(w)), Signal(range(w + 1))
        last_beat = left == 1
        w_handshake = axi.wvalid & axi.wready
        b_handshake = axi.bvalid & axi.bready
        m.d.comb += [axi.awaddr.eq(Cat(Const(0, wb), runs.addr[wb:])), axi.awlen.eq(runs.beats - 1),
                     axi.awsize.eq(wb), axi.awburst.eq(BURST_INCR), axi.awcache.eq(CACHE_NORMAL),
                     axi.awvalid.eq(busy & runs.busy & (~in_flight | b_handshake)), axi.bready.eq(in_flight)]
        m.d.comb += runs.next.eq(axi.awvalid & axi.awready)
        with m.If(b_handshake):
            m.d.sync += in_flight.eq(0)
        with m.If(w_handshake):
            m.d.sync += left.eq(left - 1)
            with m.If(last_beat):
                m.d.sync += sending.eq(0)
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += [in_flight.eq(1), sending.eq(1), left.eq(runs.beats), lo.eq(runs.first_lo),
                         hi.eq(runs.last_hi)]
        m.d.comb += self.done.eq(busy & b_handshake & ~runs.busy)

        # The ACC words of a beat are read one cycle ahead: from the AW handshake for the first
        # beat, from each W handshake for the next; the slot map then describes the next beat.
        code = _elem_code(insn)
        four = code == 1
        aw_now = axi.awvalid & axi.awready
        next_lo = Mux(aw_now, runs.first_lo, 0)
        next_hi = Mux(aw_now, Mux(runs.beats == 1, runs.last_hi, w), Mux(left == 2, hi, w))
        fetch = aw_now | (w_handshake & ~last_beat)
        count = Signal(range(w + 1))
        m.d.comb += count.eq(Mux(four, (next_hi - next_lo) >> 2, next_hi - next_lo))
        taken = Signal(range(w + 1))    # slots of the beat on the bus
        beat_lo = Signal(range(w))
        with m.If(fetch):
            m.d.sync += [taken.eq(count), beat_lo.eq(next_lo)]
        m.d.comb += [slots.advance.eq(fetch), slots.count.eq(count), self.acc_ren.eq(fetch)]
        sp_addr, sp_stride = field_slice(insn, F, "sp_addr"), field_slice(insn, F, "sp_stride")
        slot_lane = []
        for j in range(w):
            z, e = slots.z[j], slots.e[j]
            word = sp_addr + z * sp_stride + (e >> cb)
            lane = Signal(cb, name=f"slot{j}_lane")
            m.d.comb += lane.eq(e[:cb])
            for lane_c in range(c):
                with m.If((j < count) & (lane == lane_c)):      # slots past the beat must not steal a lane
                    m.d.comb += self.acc_raddr[lane_c].eq(word)
            s1_lane = Signal(cb, name=f"s1_slot{j}_lane")
            with m.If(fetch):
                m.d.sync += s1_lane.eq(lane)
            slot_lane.append(s1_lane)
        values = []
        for j in range(w):
            value = Signal(32, name=f"s1_slot{j}_value")
            with m.Switch(slot_lane[j]):
                for lane_c in range(c):
                    with m.Case(lane_c):
                        m.d.comb += value.eq(self.acc_rdata[lane_c])
            values.append(value)
        # Bytes of the beat: slot j's value at byte lane ((beat_lo >> s) + j) << s, s = log2(elem bytes).
        data = Signal(8 * w)
        strb = Signal(w)
        shift = Mux(four, 2, 0)
        for j in range(w):
            pos = Signal(range(2 * w), name=f"s1_slot{j}_pos")
            m.d.comb += pos.eq(((beat_lo >> shift) + j) << shift)
            for i in range(w):
                for k in range(4):
                    if i + k >= w:
                        continue
                    with m.If((j < taken) & (pos == i) & (four | (k == 0))):
                        m.d.comb += [data[8 * (i + k):8 * (i + k) + 8].eq(values[j][8 * k:8 * k + 8]),
                                     strb[i + k].eq(1)]
        m.d.comb += [axi.wdata.eq(data), axi.wstrb.eq(strb), axi.wlast.eq(last_beat), axi.wvalid.eq(sending)]
        return m
