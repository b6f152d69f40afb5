"""The compute module: MATMUL (docs/isa.md) on ``rtl.matmul.MatMulArray``, operands from A and B, bias
from PARAM, results into ACC.

One instruction at a time. In the issue cycle the module reads beat 0 of every A and B bank
and the ``cols`` bias records; from the next cycle it streams the ``k`` operand beats to the
array (bias on the first), reading one beat ahead and holding while the array holds. Each
result row is written to ``ACC[acc_addr + r * acc_stride]`` the cycle after the array delivers
it (ACC is read in the delivery cycle for ``accumulate``); the instruction completes in the
cycle of the last write, so a MATMUL takes ``1 + fold_cycles`` cycles (``sim.schedule``).

The element-wise instructions (REQUANT, ADD, SOFTMAX, GELU, LAYERNORM) are not built here yet.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import INSTRUCTION_BITS, Format
from intvit.rtl.controller import field_slice
from intvit.rtl.loadstore import SpGeometry, _bits
from intvit.rtl.matmul import MatMulArray

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
    acc_waddr, acc_we, acc_wdata : one ACC word written (all lanes).
    """

    def __init__(self, geometry: SpGeometry):
        g = self._g = geometry
        w, r, c = g.beat_bytes, g.rows, g.cols
        self.array = MatMulArray(rows=r, cols=c)
        super().__init__({
            "start": In(1), "insn": In(INSTRUCTION_BITS), "done": Out(1),
            "a_raddr": Out(_bits(g.a_words)).array(r), "a_ren": Out(1), "a_rdata": In(8).array(r * w),
            "b_raddr": Out(_bits(g.b_words)).array(c), "b_ren": Out(1), "b_rdata": In(8).array(c * w),
            "param_raddr": Out(_bits(g.param_words)).array(c), "param_ren": Out(1),
            "param_rdata": In(128).array(c),
            "acc_raddr": Out(_bits(g.acc_words)), "acc_ren": Out(1), "acc_rdata": In(32).array(c),
            "acc_waddr": Out(_bits(g.acc_words)), "acc_we": Out(1), "acc_wdata": Out(32).array(c),
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

        # Operand beats: t counts beats read; beat t is on the array's input in the cycle after its read.
        feeding = Signal()
        t = Signal(16)
        accepted = array.operands.valid & array.operands.ready
        read_next = self.start | accepted
        next_t = Mux(self.start, 0, t + 1)
        a_byte = field_slice(cur, F, "a_addr") + next_t
        b_byte = field_slice(cur, F, "b_addr") + next_t
        m.d.comb += [self.a_ren.eq(read_next), self.b_ren.eq(read_next)]
        m.d.comb += [addr.eq(a_byte[wb:]) for addr in self.a_raddr]
        m.d.comb += [addr.eq(b_byte[wb:]) for addr in self.b_raddr]
        a_lane, b_lane = Signal(range(w)), Signal(range(w))
        with m.If(read_next):
            m.d.sync += [t.eq(next_t), a_lane.eq(a_byte[:wb]), b_lane.eq(b_byte[:wb])]
        with m.If(self.start):
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
        m.d.comb += self.param_ren.eq(self.start)
        for lane in range(cols):
            offset = (lane - param_addr[:cb])[:cb]          # the c whose record is in this lane
            m.d.comb += self.param_raddr[lane].eq((param_addr + offset)[cb:])
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
        m.d.comb += [self.acc_ren.eq(delivered), self.acc_raddr.eq(row_addr)]
        m.d.sync += s1_valid.eq(delivered)
        with m.If(delivered):
            m.d.sync += [s1_data.eq(array.results.payload.data), s1_addr.eq(row_addr),
                         row_addr.eq(row_addr + field_slice(insn, F, "acc_stride")), row.eq(row + 1)]
        accumulate = field_slice(insn, F, "accumulate")
        m.d.comb += [self.acc_we.eq(s1_valid), self.acc_waddr.eq(s1_addr)]
        for c in range(cols):
            m.d.comb += self.acc_wdata[c].eq(s1_data[c] + Mux(accumulate, self.acc_rdata[c], 0))
        m.d.comb += self.done.eq(s1_valid & (row == rows))
        return m
