"""The compute module: MATMUL (docs/isa.md) on ``rtl.matmul.MatMulArray``, operands from A and B, bias
from PARAM, results into ACC.

One instruction at a time. In the issue cycle the module reads beat 0 of every A and B bank
and the ``cols`` bias records; from the next cycle it streams the ``k`` operand beats to the
array (bias on the first), reading one beat ahead and holding while the array holds. Each
result row is written to ``ACC[acc_addr + r * acc_stride]`` the cycle after the array delivers
it (ACC is read in the delivery cycle for ``accumulate``); the instruction completes in the
cycle of the last write, so a MATMUL takes ``1 + fold_cycles`` cycles (``sim.schedule``).

REQUANT, ADD and GELU stream ``rows * ceil(length / lanes)`` beats from ACC (and PARAM) through
``rtl.requant.Requantiser`` or ``rtl.gelu.Gelu`` and back into ACC, one beat a cycle: beat 0
is read in the issue cycle, each next one in the cycle the unit takes the one before, and the
instruction completes the cycle after the last result is written, ``1 + beats + latency``
cycles in all. SOFTMAX and LAYERNORM are not built here yet.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import INSTRUCTION_BITS, Format, Opcode
from intvit.quant.errors import IntVitError
from intvit.rtl.controller import field_slice
from intvit.rtl.gelu import Gelu
from intvit.rtl.loadstore import SpGeometry, _bits
from intvit.rtl.matmul import MatMulArray
from intvit.rtl.requant import PROGRAM_WIDTHS, Requantiser

__all__ = ["ComputeUnit"]

F = Format.MATMUL


class ComputeUnit(wiring.Component):
    """MATMUL on the array (see the module docstring).

    Attributes
    ----------
    start, insn, done
        From the controller's compute port.
    a_raddr : Out(word bits).array(rows); a_ren : Out(1); a_rdata : In(8).array(rows * W)
        One word address per A bank (all its byte lanes read together), data a cycle later.
    b_raddr, b_ren, b_rdata
        The same for B's ``cols`` banks.
    param_raddr : Out(word bits).array(cols); param_ren : Out(1); param_rdata : In(128).array(cols)
    acc_raddr, acc_ren, acc_rdata : one ACC word (all lanes) read, data a cycle later.
    acc_rbaddr, acc_rbdata : a second ACC read (ADD's ``src_b``), enabled with ``acc_ren``.
    acc_waddr, acc_we, acc_wdata : one ACC word written, a write enable per lane.
    """

    def __init__(self, geometry: SpGeometry, *, requant_lanes: int, gelu_lanes: int):
        g = self._g = geometry
        w, r, c = g.beat_bytes, g.rows, g.cols
        for name, lanes in (("requant_lanes", requant_lanes), ("gelu_lanes", gelu_lanes)):
            if not isinstance(lanes, int) or lanes < 1 or c % lanes:
                raise IntVitError(f"{name} must be a positive divisor of cols ({c}), not {lanes!r}")
        self.array = MatMulArray(rows=r, cols=c)
        self.requant = Requantiser(lanes=requant_lanes, widths=PROGRAM_WIDTHS, residual=True)
        self.gelu = Gelu(lanes=gelu_lanes)
        super().__init__({
            "start": In(1), "insn": In(INSTRUCTION_BITS), "done": Out(1),
            "a_raddr": Out(_bits(g.a_words)).array(r), "a_ren": Out(1), "a_rdata": In(8).array(r * w),
            "b_raddr": Out(_bits(g.b_words)).array(c), "b_ren": Out(1), "b_rdata": In(8).array(c * w),
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
        insn = Signal(INSTRUCTION_BITS)
        with m.If(self.start):
            m.d.sync += insn.eq(self.insn)
        cur = Mux(self.start, self.insn, insn)
        k = field_slice(insn, F, "k")
        is_matmul = cur[0:4] == Opcode.MATMUL
        matmul_start = self.start & is_matmul
        matmul_done, vector_done = Signal(), Signal()
        m.d.comb += self.done.eq(matmul_done | vector_done)

        # Operand beats: t counts beats read; beat t is on the array's input in the cycle after its read.
        feeding = Signal()
        t = Signal(16)
        accepted = array.operands.valid & array.operands.ready
        read_next = matmul_start | accepted
        next_t = Mux(self.start, 0, t + 1)
        a_byte = field_slice(cur, F, "a_addr") + next_t
        b_byte = field_slice(cur, F, "b_addr") + next_t
        m.d.comb += [self.a_ren.eq(read_next), self.b_ren.eq(read_next)]
        matmul_param_ren = matmul_start
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
        with m.If(self.start):
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
        matmul_param_addr = [(param_addr + (lane - param_addr[:cb])[:cb])[cb:] for lane in range(cols)]
        with_bias = field_slice(insn, F, "bias")
        rotate = field_slice(insn, F, "param_addr")[:cb]
        for c in range(cols):
            record = Signal(128, name=f"bias_record{c}")
            with m.Switch((rotate + c)[:cb]):
                for lane in range(cols):
                    with m.Case(lane):
                        m.d.comb += record.eq(self.param_rdata[lane])
            m.d.comb += beat.bias[c].eq(Mux(with_bias & first, record[:32], 0))

        # Results: read ACC in the delivery cycle, write the sum (or the row) in the next.
        row = Signal(range(rows + 1))
        row_addr = Signal(24)
        with m.If(self.start):
            m.d.sync += [row.eq(0), row_addr.eq(field_slice(self.insn, F, "acc_addr"))]
        m.d.comb += array.results.ready.eq(1)
        delivered = array.results.valid
        s1_valid = Signal()
        s1_data = Signal(data.ArrayLayout(signed(32), cols))
        s1_addr = Signal(24)
        matmul_acc_read = (delivered, row_addr)
        m.d.sync += s1_valid.eq(delivered)
        with m.If(delivered):
            m.d.sync += [s1_data.eq(array.results.payload.data), s1_addr.eq(row_addr),
                         row_addr.eq(row_addr + field_slice(insn, F, "acc_stride")), row.eq(row + 1)]
        accumulate = field_slice(insn, F, "accumulate")
        matmul_write = (s1_valid, s1_addr, [s1_data[c] + Mux(accumulate, self.acc_rdata[c], 0) for c in range(cols)])
        m.d.comb += matmul_done.eq(s1_valid & (row == rows))

        vector = self._vector(m, insn, cur, vector_done)
        # The one instruction running owns the memory ports.
        with m.If(vector["active"]):
            m.d.comb += [self.acc_ren.eq(vector["acc_ren"]), self.acc_raddr.eq(vector["acc_raddr"]),
                         self.acc_rbaddr.eq(vector["acc_rbaddr"]), self.param_ren.eq(vector["param_ren"]),
                         self.acc_waddr.eq(vector["acc_waddr"])]
            m.d.comb += [self.param_raddr[lane].eq(addr) for lane, addr in enumerate(vector["param_raddr"])]
            m.d.comb += [self.acc_we[c].eq(we) for c, we in enumerate(vector["acc_we"])]
            m.d.comb += [self.acc_wdata[c].eq(value) for c, value in enumerate(vector["acc_wdata"])]
        with m.Else():
            m.d.comb += [self.acc_ren.eq(matmul_acc_read[0]), self.acc_raddr.eq(matmul_acc_read[1]),
                         self.param_ren.eq(matmul_param_ren), self.acc_waddr.eq(matmul_write[1])]
            m.d.comb += [self.param_raddr[lane].eq(addr) for lane, addr in enumerate(matmul_param_addr)]
            m.d.comb += [self.acc_we[c].eq(matmul_write[0]) for c in range(cols)]
            m.d.comb += [self.acc_wdata[c].eq(value) for c, value in enumerate(matmul_write[2])]
        return m

    def _vector(self, m: Module, insn, cur, done) -> dict:
        """REQUANT, ADD and GELU: beats of ``lanes`` elements from ACC (and PARAM) through the unit and back.

        Beat ``b`` of row ``i`` is elements ``j = b * lanes ..`` of ACC word ``src + i * stride + j // C``,
        lanes ``j % C ..``; it is read in the cycle before the unit takes it (the issue cycle for
        the first), and its result is written to the same place from ``dst`` when the unit delivers it.
        """
        g = self._g
        cols = g.cols
        cb = cols.bit_length() - 1
        V = Format.VECTOR
        requant, gelu = m.submodules.requant, m.submodules.gelu = self.requant, self.gelu
        opcode = Signal(4)
        active = Signal()
        with m.If(self.start):
            m.d.sync += opcode.eq(self.insn[0:4])
        start = self.start & ((cur[0:4] == Opcode.REQUANT) | (cur[0:4] == Opcode.ADD) | (cur[0:4] == Opcode.GELU))
        is_gelu = Mux(self.start, cur[0:4], opcode) == Opcode.GELU
        lanes = Signal(range(cols + 1))
        m.d.comb += lanes.eq(Mux(is_gelu, len(gelu.i.payload), len(requant.operands.payload.x)))

        # Input side: (row, element j) of the beat read next.
        in_row, in_j = Signal(16), Signal(16)
        in_word = Signal(24)                       # ACC word of row in_row relative to src
        feeding = Signal()
        taken = Mux(is_gelu, gelu.i.valid & gelu.i.ready, requant.operands.valid & requant.operands.ready)
        length = field_slice(cur, V, "length")
        stride = field_slice(cur, V, "stride")
        rows = field_slice(cur, V, "rows")
        row_end = in_j + lanes >= length
        next_row = Mux(self.start, 0, Mux(row_end, in_row + 1, in_row))
        next_j = Mux(self.start | row_end, 0, in_j + lanes)
        next_word = Mux(self.start, 0, Mux(row_end, in_word + stride, in_word))
        advance = start | taken
        s_off = Signal(range(cols))
        with m.If(advance):
            m.d.sync += [in_row.eq(next_row), in_j.eq(next_j), in_word.eq(next_word), s_off.eq(next_j[:cb])]
        with m.If(start):
            m.d.sync += [feeding.eq(1), active.eq(1)]
        with m.Elif(taken & row_end & (in_row == rows - 1)):
            m.d.sync += feeding.eq(0)
        src, src_b = field_slice(cur, V, "src"), field_slice(cur, V, "src_b")
        read_word = next_word + (next_j >> cb)
        param_addr = field_slice(cur, V, "param_addr")
        first = param_addr + next_j                  # PARAM record of the beat's first element
        ports = {"active": active | start, "acc_ren": advance, "acc_raddr": src + read_word,
                 "acc_rbaddr": src_b + read_word, "param_ren": advance,
                 "param_raddr": [(first + (lane - first[:cb])[:cb])[cb:] for lane in range(cols)]}
        param_rot = Signal(cb)
        with m.If(advance):
            m.d.sync += param_rot.eq(first[:cb])

        def lane_value(source, l):
            """Lane ``l`` of the beat from a word read last cycle."""
            value = Signal(32, name=f"{source.__class__.__name__}_{l}")
            with m.Switch((s_off + l)[:cb]):
                for c in range(cols):
                    with m.Case(c):
                        m.d.comb += value.eq(source[c])
            return value

        def record(l):
            value = Signal(128, name=f"vector_record{l}")
            with m.Switch((param_rot + l)[:cb]):
                for c in range(cols):
                    with m.Case(c):
                        m.d.comb += value.eq(self.param_rdata[c])
            return value

        width = field_slice(insn, V, "width")
        is_add = opcode == Opcode.ADD
        beat = requant.operands.payload
        for l in range(len(beat.x)):
            rec = record(l)
            m.d.comb += [beat.x[l].eq(lane_value(self.acc_rdata, l)), beat.multiplier[l].eq(rec[32:63]),
                         beat.shift[l].eq(rec[64:70]),
                         beat.b[l].eq(Mux(is_add, lane_value(self.acc_rbdata, l)[:8], 0)),
                         beat.multiplier_b[l].eq(Mux(is_add, rec[80:111], 0))]
        m.d.comb += [beat.width.eq(Mux(is_add, 0, width)), requant.operands.valid.eq(feeding & ~is_gelu)]
        for l in range(len(gelu.i.payload)):
            m.d.comb += gelu.i.payload[l].eq(lane_value(self.acc_rdata, l)[:17])
        m.d.comb += gelu.i.valid.eq(feeding & is_gelu)

        # Output side: results in order, to dst + the same word and lanes.
        out_row, out_j, out_word = Signal(16), Signal(16), Signal(24)
        delivered = Mux(is_gelu, gelu.o.valid, requant.results.valid)
        m.d.comb += [gelu.o.ready.eq(1), requant.results.ready.eq(1)]
        out_end = out_j + lanes >= length
        with m.If(start):
            m.d.sync += [out_row.eq(0), out_j.eq(0), out_word.eq(0)]
        with m.Elif(delivered):
            m.d.sync += [out_row.eq(Mux(out_end, out_row + 1, out_row)), out_j.eq(Mux(out_end, 0, out_j + lanes)),
                         out_word.eq(Mux(out_end, out_word + stride, out_word))]
        dst = field_slice(insn, V, "dst")
        ports["acc_waddr"] = dst + out_word + (out_j >> cb)
        offset = out_j[:cb]
        we, values = [], []
        for c in range(cols):
            hit = Signal(name=f"vector_we{c}")
            value = Signal(32, name=f"vector_wdata{c}")
            for l in range(max(len(beat.x), len(gelu.i.payload))):
                with m.If((offset + l)[:cb] == c):
                    if l < len(gelu.o.payload):
                        with m.If(is_gelu):
                            m.d.comb += [hit.eq(delivered & (l < lanes)), value.eq(gelu.o.payload[l])]
                    if l < len(requant.results.payload.y):
                        with m.If(~is_gelu):
                            m.d.comb += [hit.eq(delivered & (l < lanes)), value.eq(requant.results.payload.y[l])]
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
