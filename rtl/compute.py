"""The compute module: MATMUL (docs/isa.md) on ``rtl.matmul.MatMulArray``, operands from A and B, bias
from PARAM, results into ACC.

The array and the vector units are two slots that run side by side (docs/isa.md, "Execution
rules"): each latches its own instruction at its start, has its own ACC and PARAM ports, and
signals its own completion (``done[0]`` the array, ``done[1]`` the vector units); the
controller decides what may start beside what.

MATMUL. In the issue cycle the module reads beat 0 of every A and B bank
and the ``cols`` bias records; from the next cycle it streams the ``k`` operand beats to the
array (bias on the first), reading one beat ahead and holding while the array holds. Each
result row is written to ``ACC[acc_addr + r * acc_stride]`` the cycle after the array delivers
it (ACC is read in the delivery cycle for ``accumulate``); the instruction completes in the
cycle of the last write, so a MATMUL alone takes ``1 + fold_cycles`` cycles. The next MATMUL
may start (``array_ready``) in the cycle the array takes this one's last beat: its beats
stream while these rows drain, and only its last beat waits for this fold's last row
(``rtl.matmul``; ``sim.schedule.matmul_times`` states the timing).

REQUANT, ADD, GELU, SOFTMAX and LAYERNORM stream ``rows * ceil(length / lanes)`` beats from ACC
(and PARAM) through ``rtl.requant.Requantiser``, ``rtl.gelu.Gelu``, ``rtl.softmax.Softmax`` or
``rtl.layernorm.LayerNorm`` and back into ACC: beat 0 is read in the issue cycle, each next one
in the cycle the unit takes the one before, and the instruction completes the cycle after the
last result is written, so its cycles are ``1`` plus the unit's own (LAYERNORM first streams
``ceil(length / lanes)`` beats of PARAM records into the unit's parameter port).
"""

from amaranth import Cat, Module, Mux, Shape, Signal, signed
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import INSTRUCTION_BITS, Format, Opcode
from intvit.quant.errors import IntVitError
from intvit.rtl.controller import field_slice
from intvit.rtl.gelu import Gelu
from intvit.rtl.layernorm import LayerNorm
from intvit.rtl.loadstore import SpGeometry, _bits
from intvit.rtl.matmul import MatMulArray
from intvit.rtl.requant import PROGRAM_WIDTHS, Requantiser
from intvit.rtl.softmax import Softmax

__all__ = ["ComputeUnit"]

F = Format.MATMUL
# Where a MATMUL's result rows go, in the order of the instruction word's fields.
PLACE_LAYOUT = data.StructLayout({"acc_addr": 24, "acc_stride": 24, "accumulate": 1})


class ComputeUnit(wiring.Component):
    """MATMUL on the array (see the module docstring).

    Attributes
    ----------
    start, insn : In(1), In(256)
        From the controller's compute port: start MATMUL on the array, any other on the vector units.
    done : Out(2)
        Bit 0: an array instruction completes (in order; two may be in flight); bit 1: the vector units'.
    array_ready : Out(1)
        A MATMUL may start this cycle.
    a_raddr : Out(word bits).array(rows); a_ren : Out(1); a_rdata : In(8).array(rows * W)
        One word address per A bank (all its byte lanes read together), data a cycle later.
    b_raddr, b_ren, b_rdata
        The same for B's ``cols`` banks.
    mm_param_raddr : Out(word bits).array(cols); mm_param_ren : Out(1); mm_param_rdata : In(128).array(cols)
        The array's bias records.
    mm_acc_raddr, mm_acc_ren, mm_acc_rdata; mm_acc_waddr, mm_acc_we, mm_acc_wdata
        The array's ACC read (``accumulate``) and write of one word, all lanes.
    param_raddr, param_ren, param_rdata : the vector units' PARAM records.
    acc_raddr, acc_ren, acc_rdata : one ACC word (all lanes) read, data a cycle later.
    acc_rbaddr, acc_rbdata : a second ACC read (ADD's ``src_b``), enabled with ``acc_ren``.
    acc_waddr, acc_we, acc_wdata : one ACC word written, a write enable per lane.
    """

    def __init__(self, geometry: SpGeometry, *, requant_lanes: int, gelu_lanes: int, softmax_lanes: int,
                 layernorm_lanes: int, softmax_max_length: int, layernorm_width: int):
        g = self._g = geometry
        w, r, c = g.beat_bytes, g.rows, g.cols
        for name, lanes in (("requant_lanes", requant_lanes), ("gelu_lanes", gelu_lanes),
                            ("softmax_lanes", softmax_lanes), ("layernorm_lanes", layernorm_lanes)):
            if not isinstance(lanes, int) or lanes < 1 or c % lanes:
                raise IntVitError(f"{name} must be a positive divisor of cols ({c}), not {lanes!r}")
        self.array = MatMulArray(rows=r, cols=c)
        self._units = {
            "requant": Requantiser(lanes=requant_lanes, widths=PROGRAM_WIDTHS, residual=True),
            "gelu": Gelu(lanes=gelu_lanes),
            "softmax": Softmax(lanes=softmax_lanes, max_length=softmax_max_length),
            "layernorm": LayerNorm(lanes=layernorm_lanes, width=layernorm_width),
        }
        super().__init__({
            "start": In(1), "insn": In(INSTRUCTION_BITS), "done": Out(2), "array_ready": Out(1),
            "a_raddr": Out(_bits(g.a_words)).array(r), "a_ren": Out(1), "a_rdata": In(8).array(r * w),
            "b_raddr": Out(_bits(g.b_words)).array(c), "b_ren": Out(1), "b_rdata": In(8).array(c * w),
            "mm_param_raddr": Out(_bits(g.param_words)).array(c), "mm_param_ren": Out(1),
            "mm_param_rdata": In(128).array(c),
            "mm_acc_raddr": Out(_bits(g.acc_words)), "mm_acc_ren": Out(1), "mm_acc_rdata": In(32).array(c),
            "mm_acc_waddr": Out(_bits(g.acc_words)), "mm_acc_we": Out(1), "mm_acc_wdata": Out(32).array(c),
            "param_raddr": Out(_bits(g.param_words)).array(c), "param_ren": Out(1),
            "param_rdata": In(128).array(c),
            "acc_raddr": Out(_bits(g.acc_words)), "acc_ren": Out(1), "acc_rdata": In(32).array(c),
            "acc_rbaddr": Out(_bits(g.acc_words)), "acc_rbdata": In(32).array(c),
            "acc_waddr": Out(_bits(g.acc_words)), "acc_we": Out(1).array(c), "acc_wdata": Out(32).array(c),
        })

    def elaborate(self, platform):
        m = Module()
        g = self._g
        w, rows, cols = g.beat_bytes, g.rows, g.cols
        wb, cb = w.bit_length() - 1, cols.bit_length() - 1
        array = m.submodules.array = self.array
        matmul_start = self.start & (self.insn[0:4] == Opcode.MATMUL)
        vector_start = self.start & (self.insn[0:4] != Opcode.MATMUL)
        insn = Signal(INSTRUCTION_BITS)
        with m.If(matmul_start):
            m.d.sync += insn.eq(self.insn)
        cur = Mux(matmul_start, self.insn, insn)
        k = field_slice(insn, F, "k")
        matmul_done, vector_done = Signal(), Signal()
        m.d.comb += self.done.eq(Cat(matmul_done, vector_done))

        # Operand beats: t counts beats read; beat t is on the array's input in the cycle after its read.
        feeding = Signal()
        t = Signal(16)
        accepted = array.operands.valid & array.operands.ready
        read_next = matmul_start | accepted
        next_t = Mux(matmul_start, 0, t + 1)
        a_byte = field_slice(cur, F, "a_addr") + next_t
        b_byte = field_slice(cur, F, "b_addr") + next_t
        m.d.comb += [self.a_ren.eq(read_next), self.b_ren.eq(read_next), self.mm_param_ren.eq(matmul_start)]
        m.d.comb += [addr.eq(a_byte[wb:]) for addr in self.a_raddr]
        m.d.comb += [addr.eq(b_byte[wb:]) for addr in self.b_raddr]
        a_lane, b_lane = Signal(range(w)), Signal(range(w))
        with m.If(read_next):
            m.d.sync += [t.eq(next_t), a_lane.eq(a_byte[:wb]), b_lane.eq(b_byte[:wb])]
        with m.If(matmul_start):
            m.d.sync += feeding.eq(1)
        with m.Elif(accepted & array.operands.payload.last):
            m.d.sync += feeding.eq(0)
        first = Signal()
        with m.If(matmul_start):
            m.d.sync += first.eq(1)
        with m.Elif(accepted):
            m.d.sync += first.eq(0)
        beat = array.operands.payload
        m.d.comb += [array.operands.valid.eq(feeding), beat.last.eq(t == k - 1)]
        for r in range(rows):
            with m.Switch(a_lane):
                for lane in range(w):
                    with m.Case(lane):
                        m.d.comb += beat.a[r].eq(self.a_rdata[r * w + lane])
        for c in range(cols):
            with m.Switch(b_lane):
                for lane in range(w):
                    with m.Case(lane):
                        m.d.comb += beat.b[c].eq(self.b_rdata[c * w + lane])

        # Bias: record param_addr + c sits in lane (param_addr + c) % C, word (param_addr + c) // C.
        param_addr = field_slice(cur, F, "param_addr")
        m.d.comb += [self.mm_param_raddr[lane].eq((param_addr + (lane - param_addr[:cb])[:cb])[cb:])
                     for lane in range(cols)]
        with_bias = field_slice(insn, F, "bias")
        rotate = field_slice(insn, F, "param_addr")[:cb]
        for c in range(cols):
            record = Signal(128, name=f"bias_record{c}")
            with m.Switch((rotate + c)[:cb]):
                for lane in range(cols):
                    with m.Case(lane):
                        m.d.comb += record.eq(self.mm_param_rdata[lane])
            m.d.comb += beat.bias[c].eq(Mux(with_bias & first, record[:32], 0))

        # Results: read ACC in the delivery cycle, write the sum (or the row) in the next. A
        # MATMUL's rows may still drain while the next one streams, so each leaves its ACC
        # placement in a two-entry queue at its start, for the rows to find when they come.
        places = m.submodules.places = fifo.SyncFIFO(width=Shape.cast(PLACE_LAYOUT).width, depth=2)
        m.d.comb += [places.w_en.eq(matmul_start),
                     places.w_data.eq(Cat(*(field_slice(self.insn, F, name) for name in PLACE_LAYOUT.members)))]
        place = data.View(PLACE_LAYOUT, places.r_data)
        m.d.comb += self.array_ready.eq((~feeding | (accepted & beat.last)) & places.w_rdy)
        row = Signal(range(rows))
        offset = Signal(24)
        delivered = array.results.valid
        last_row = delivered & (row == rows - 1)
        m.d.comb += [array.results.ready.eq(1), places.r_en.eq(last_row)]
        s1_valid, s1_last, s1_accumulate = Signal(), Signal(), Signal()
        s1_data = Signal(data.ArrayLayout(signed(32), cols))
        s1_addr = Signal(24)
        row_addr = place.acc_addr + offset
        m.d.comb += [self.mm_acc_ren.eq(delivered), self.mm_acc_raddr.eq(row_addr)]
        m.d.sync += [s1_valid.eq(delivered), s1_last.eq(last_row)]
        with m.If(delivered):
            m.d.sync += [s1_data.eq(array.results.payload.data), s1_addr.eq(row_addr),
                         s1_accumulate.eq(place.accumulate), row.eq(Mux(last_row, 0, row + 1)),
                         offset.eq(Mux(last_row, 0, offset + place.acc_stride))]
        m.d.comb += [self.mm_acc_we.eq(s1_valid), self.mm_acc_waddr.eq(s1_addr)]
        m.d.comb += [self.mm_acc_wdata[c].eq(s1_data[c] + Mux(s1_accumulate, self.mm_acc_rdata[c], 0))
                     for c in range(cols)]
        m.d.comb += matmul_done.eq(s1_valid & s1_last)

        ports = self._vector(m, vector_start, vector_done)
        m.d.comb += [self.acc_ren.eq(ports["acc_ren"]), self.acc_raddr.eq(ports["acc_raddr"]),
                     self.acc_rbaddr.eq(ports["acc_rbaddr"]), self.param_ren.eq(ports["param_ren"]),
                     self.acc_waddr.eq(ports["acc_waddr"])]
        m.d.comb += [self.param_raddr[lane].eq(addr) for lane, addr in enumerate(ports["param_raddr"])]
        m.d.comb += [self.acc_we[c].eq(we) for c, we in enumerate(ports["acc_we"])]
        m.d.comb += [self.acc_wdata[c].eq(value) for c, value in enumerate(ports["acc_wdata"])]
        return m

    def _vector(self, m: Module, start, done) -> dict:
        """REQUANT, ADD, GELU, SOFTMAX, LAYERNORM: beats of ``lanes`` elements from ACC through a unit and back.

        Beat ``b`` of row ``i`` is elements ``j = b * lanes ..`` of ACC word ``src + i * stride + j // C``,
        lanes ``j % C ..``; it is read in the cycle before the unit takes it (the issue cycle for
        the first), and its result is written to the same place from ``dst`` when the unit delivers
        it. LAYERNORM first streams one row's worth of PARAM records into the unit's parameter port.
        """
        g = self._g
        cols = g.cols
        cb = cols.bit_length() - 1
        V = Format.VECTOR
        units = self._units
        for name, unit in units.items():
            m.submodules[name] = unit
        requant, gelu, softmax, layernorm = (units[n] for n in ("requant", "gelu", "softmax", "layernorm"))
        kinds = {Opcode.REQUANT: 0, Opcode.ADD: 0, Opcode.GELU: 1, Opcode.SOFTMAX: 2, Opcode.LAYERNORM: 3}
        lane_counts = [len(requant.operands.payload.x), len(gelu.i.payload), len(softmax.i.payload),
                       len(layernorm.i.payload)]
        insn = Signal(INSTRUCTION_BITS)
        with m.If(start):
            m.d.sync += insn.eq(self.insn)
        cur = Mux(start, self.insn, insn)
        kind = Signal(2)
        opcode = Signal(4)
        active = Signal()
        cur_kind = Signal(2)
        with m.Switch(cur[0:4]):
            for op, k in kinds.items():
                with m.Case(op):
                    m.d.comb += cur_kind.eq(k)
        with m.If(start):
            m.d.sync += [opcode.eq(self.insn[0:4]), kind.eq(cur_kind)]
        now_kind = Mux(start, cur_kind, kind)
        lanes = Signal(range(cols + 1))
        with m.Switch(now_kind):
            for k, count in enumerate(lane_counts):
                with m.Case(k):
                    m.d.comb += lanes.eq(count)
        params_phase = Signal()                     # LAYERNORM: the parameter beats come first

        # Input side: (row, element j) of the beat presented now; the next one is read this cycle.
        in_row, in_j = Signal(16), Signal(16)
        in_word = Signal(24)                        # ACC word of row in_row relative to src
        feeding = Signal()
        accepted = [requant.operands.valid & requant.operands.ready, gelu.i.valid & gelu.i.ready,
                    softmax.i.valid & softmax.i.ready, layernorm.i.valid & layernorm.i.ready]
        param_taken = layernorm.params.valid & layernorm.params.ready
        taken = Signal()
        with m.Switch(kind):
            for k, acc in enumerate(accepted):
                with m.Case(k):
                    m.d.comb += taken.eq(acc)
        length = field_slice(cur, V, "length")
        stride = field_slice(cur, V, "stride")
        rows = field_slice(cur, V, "rows")
        row_end = in_j + lanes >= length
        last_param = param_taken & row_end
        restart = start | last_param
        next_row = Mux(restart, 0, Mux(row_end, in_row + 1, in_row))
        next_j = Mux(restart | row_end, 0, in_j + lanes)
        next_word = Mux(restart, 0, Mux(row_end, in_word + stride, in_word))
        advance = start | taken | param_taken
        s_off = Signal(range(cols))
        with m.If(advance):
            m.d.sync += [in_row.eq(next_row), in_j.eq(next_j), in_word.eq(next_word), s_off.eq(next_j[:cb])]
        with m.If(start):
            m.d.sync += [feeding.eq(cur[0:4] != Opcode.LAYERNORM), params_phase.eq(cur[0:4] == Opcode.LAYERNORM)]
        with m.Elif(last_param):
            m.d.sync += [feeding.eq(1), params_phase.eq(0)]
        with m.Elif(taken & row_end & (in_row == rows - 1)):
            m.d.sync += feeding.eq(0)
        src, src_b = field_slice(cur, V, "src"), field_slice(cur, V, "src_b")
        read_word = next_word + (next_j >> cb)
        param_addr = field_slice(cur, V, "param_addr")
        first = param_addr + next_j                 # PARAM record of the beat's first element
        ports = {"acc_ren": advance, "acc_raddr": src + read_word,
                 "acc_rbaddr": src_b + read_word, "param_ren": advance,
                 "param_raddr": [(first + (lane - first[:cb])[:cb])[cb:] for lane in range(cols)]}
        param_rot = Signal(cb)
        with m.If(advance):
            m.d.sync += param_rot.eq(first[:cb])

        def lane_value(source, l, tag):
            """Lane ``l`` of the presented beat, from an ACC word read last cycle."""
            value = Signal(32, name=f"{tag}_lane{l}")
            with m.Switch((s_off + l)[:cb]):
                for c in range(cols):
                    with m.Case(c):
                        m.d.comb += value.eq(source[c])
            return value

        records = []
        for l in range(max(lane_counts)):
            value = Signal(128, name=f"vector_record{l}")
            with m.Switch((param_rot + l)[:cb]):
                for c in range(cols):
                    with m.Case(c):
                        m.d.comb += value.eq(self.param_rdata[c])
            records.append(value)
        xs = [lane_value(self.acc_rdata, l, "x") for l in range(max(lane_counts))]

        width = field_slice(insn, V, "width")
        is_add = opcode == Opcode.ADD
        beat = requant.operands.payload
        for l in range(lane_counts[0]):
            rec = records[l]
            m.d.comb += [beat.x[l].eq(xs[l]), beat.multiplier[l].eq(rec[32:63]), beat.shift[l].eq(rec[64:70]),
                         beat.b[l].eq(Mux(is_add, lane_value(self.acc_rbdata, l, "b")[:8], 0)),
                         beat.multiplier_b[l].eq(Mux(is_add, rec[80:111], 0))]
        m.d.comb += [beat.width.eq(Mux(is_add, 0, width)), requant.operands.valid.eq(feeding & (kind == 0))]
        m.d.comb += [gelu.i.payload[l].eq(xs[l][:17]) for l in range(lane_counts[1])]
        m.d.comb += gelu.i.valid.eq(feeding & (kind == 1))
        m.d.comb += [softmax.i.payload[l].eq(xs[l]) for l in range(lane_counts[2])]
        m.d.comb += [softmax.i.valid.eq(feeding & (kind == 2)), softmax.length.eq(field_slice(insn, V, "length"))]
        m.d.comb += [layernorm.i.payload[l].eq(xs[l][:8]) for l in range(lane_counts[3])]
        m.d.comb += layernorm.i.valid.eq(feeding & (kind == 3))
        lp = layernorm.params.payload
        for l in range(lane_counts[3]):
            rec = records[l]
            m.d.comb += [lp.data[l].gamma.eq(rec[72:80]), lp.data[l].beta.eq(rec[0:32]),
                         lp.data[l].multiplier.eq(rec[32:63]), lp.data[l].shift.eq(rec[64:70])]
        m.d.comb += [lp.addr.eq(in_j // lane_counts[3]), layernorm.params.valid.eq(params_phase)]

        # Output side: results in order, to dst + the same word and lanes.
        outputs = [(requant.results, [requant.results.payload.y[l] for l in range(lane_counts[0])]),
                   (gelu.o, [gelu.o.payload[l] for l in range(lane_counts[1])]),
                   (softmax.o, [softmax.o.payload.data[l] for l in range(lane_counts[2])]),
                   (layernorm.o, [layernorm.o.payload.data[l] for l in range(lane_counts[3])])]
        delivered = Signal()
        out_values = [Signal(32, name=f"out{l}") for l in range(max(lane_counts))]
        with m.Switch(kind):
            for k, (port, values) in enumerate(outputs):
                with m.Case(k):
                    m.d.comb += delivered.eq(port.valid)
                    m.d.comb += [out_values[l].eq(v) for l, v in enumerate(values)]
        m.d.comb += [port.ready.eq(1) for port, _ in outputs]
        out_row, out_j, out_word = Signal(16), Signal(16), Signal(24)
        out_end = out_j + lanes >= length
        with m.If(start):
            m.d.sync += [out_row.eq(0), out_j.eq(0), out_word.eq(0)]
        with m.Elif(delivered):
            m.d.sync += [out_row.eq(Mux(out_end, out_row + 1, out_row)), out_j.eq(Mux(out_end, 0, out_j + lanes)),
                         out_word.eq(Mux(out_end, out_word + stride, out_word))]
        ports["acc_waddr"] = field_slice(insn, V, "dst") + out_word + (out_j >> cb)
        offset = out_j[:cb]
        we, values = [], []
        for c in range(cols):
            hit = Signal(name=f"vector_we{c}")
            value = Signal(32, name=f"vector_wdata{c}")
            for l in range(max(lane_counts)):
                with m.If(((offset + l)[:cb] == c) & (l < lanes)):
                    m.d.comb += [hit.eq(delivered), value.eq(out_values[l])]
            we.append(hit)
            values.append(value)
        ports["acc_we"], ports["acc_wdata"] = we, values
        # Complete the cycle after the last result is written.
        last_written = Signal()
        m.d.sync += last_written.eq(active & delivered & out_end & (out_row == field_slice(insn, V, "rows") - 1))
        m.d.comb += done.eq(last_written)
        with m.If(last_written):
            m.d.sync += active.eq(0)
        with m.If(start):
            m.d.sync += active.eq(1)
        return ports
