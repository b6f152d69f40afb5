"""LayerNorm unit: INT8 rows of a fixed width to INT8, bit for bit ``quant.layernorm.int_layernorm``.

Three stages work on three rows at once, each row in its own region of the row buffer
(``ROW_BUFFERS`` regions of ``ceil(width / lanes)`` words), handing a row on when the next
stage is free:

row stage
    ``LOAD``: one beat of ``lanes`` INT8 values per cycle into the row's region, summing them;
    ``MEAN``: ``mean = requant(sum, mean_multiplier, mean_shift)`` in Q.6 (a dyadic multiply:
    the divisors of ``layernorm_divisors(width)`` are constants of the unit);
    ``VAR``: each beat is read back, centred (``x * 2**6 - mean``) and its rounded squares
    summed, then ``var = requant(sum, var_multiplier, var_shift)``; ``HOLD`` until taken.
root stage
    Newton's ``x <- min(x, (x + var // x) // 2)`` from ``2**ceil(bits(var) / 2)``,
    ``ISQRT_ITERATIONS`` divisions on a sequential divider of ``NEWTON_QUOTIENT_BITS``
    quotient bits, each step issued on the edge that takes the previous quotient.
output stage
    ``recip = 2**30 // max(x, 1)`` on a second divider of 31 quotient bits, then ``OUT``: each
    beat is read again with its channels' parameters: ``y = requant(c, recip, 2**-18)``,
    ``z = y * gamma + beta``, ``out = requant(z, multiplier, shift)`` to INT8.

So one row's divisions run while the next row loads and the previous one streams out. The
two radix-4 dividers serve different stages (one per stage, so neither waits for the other):
the narrow one saves 8 of the wide one's 17 cycles on each of the five Newton steps.

Newton's quotients fit 16 bits: every estimate is at least ``s = floor(sqrt(var))`` (the
start is ``>= sqrt(var)``, and ``(x + var // x) // 2 = floor((x + var / x) / 2) >= s`` by
the AM-GM inequality), and ``var <= s**2 + 2 s``, so ``var // x <= s + 2 <= 46342`` for
``var < 2**31``; a zero estimate (only from ``var = 0``) divides as 1. The proof's steps are
checked by ``tests/quant/test_layernorm.py::test_newton_quotients_fit_the_narrow_divider_by_proof``.

Products are exact: ``int_layernorm``'s int64 arithmetic agrees wherever it does not wrap,
which holds for ``|z| * multiplier < 2**63`` (all realistic gamma, beta and scales).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError
from intvit.quant.layernorm import (
    ISQRT_INPUT_BITS, ISQRT_ITERATIONS, LN_MEAN_FRAC_BITS, LN_NORM_SHIFT, LN_RECIP_BITS, LN_SQUARE_SHIFT,
    layernorm_divisors,
)
from intvit.quant.requant import MAX_SHIFT, MULTIPLIER_BITS, int_range
from intvit.rtl.divider import Divider, divider_cycles

__all__ = ["LayerNorm", "LAYERNORM_PARAM_LAYOUT", "LAYERNORM_ROW_OVERHEAD_CYCLES", "ROW_BUFFERS",
           "layernorm_period_cycles"]

DIVIDER_BITS = ISQRT_INPUT_BITS                     # var < 2**31; the dividend 2**30 fits as well
NEWTON_QUOTIENT_BITS = 16                           # var // x <= isqrt(var) + 2 < 2**16 (module docstring)
ROOT_BITS = (ISQRT_INPUT_BITS + 1) // 2 + 1         # Newton's start 2**16 and every later estimate
CENTRED_BITS = 8 + LN_MEAN_FRAC_BITS + 2            # x * 2**6 - mean with |mean| <= 2**13
LAYERNORM_PARAM_LAYOUT = data.StructLayout({
    "gamma": signed(8),
    "beta": signed(32),
    "multiplier": unsigned(MULTIPLIER_BITS),
    "shift": unsigned(MAX_SHIFT.bit_length()),
})
ROW_BUFFERS = 3                                     # one row per stage
# The first row beyond its three passes over the beats, from this unit's states and stages:
# MEAN, the VAR pass drain (3), VAR_SCALE, the hand-over to the root stage (which issues
# Newton's first step), the Newton steps, the hand-over to the output stage (which issues the
# reciprocal), the reciprocal, the OUT fill (4). The cycle model composes the same figure
# from the widths (sim.layernorm.layernorm_latency); the benches hold both to the measured cycles.
LAYERNORM_ROW_OVERHEAD_CYCLES = (1 + 3 + 1 + 1 + ISQRT_ITERATIONS * divider_cycles(NEWTON_QUOTIENT_BITS)
                                 + 1 + divider_cycles(DIVIDER_BITS) + 4)


def layernorm_period_cycles(beats: int) -> int:
    """Cycles between two rows' last outputs in a stream of rows: the slowest stage's cycle.

    Row stage ``2 * beats + 6`` (LOAD, MEAN, VAR and its drain, VAR_SCALE, HOLD), root stage
    ``ISQRT_ITERATIONS * divider_cycles(16) + 2`` (the steps, HOLD, IDLE: 47), output stage
    ``beats + divider_cycles(31) + 4 + 1`` (the reciprocal, OUT and its fill, IDLE).
    """
    return max(2 * beats + 1 + 3 + 1 + 1, ISQRT_ITERATIONS * divider_cycles(NEWTON_QUOTIENT_BITS) + 2,
               beats + divider_cycles(DIVIDER_BITS) + 4 + 1)


def _rounding_shift(value, shift_less_one):
    """``quant.requant.rounding_shift(value, shift)`` for ``shift >= 1``, given ``shift - 1``.

    ``(value + 2**(shift-1)) >> shift`` equals ``((value >> (shift-1)) + 1) >> 1``, which
    needs no rounding constant of a variable position.
    """
    return ((value >> shift_less_one) + 1) >> 1


def _saturate(value, bits: int):
    low, high = int_range(bits)
    return Mux(value > high, high, Mux(value < low, low, value))


class LayerNorm(wiring.Component):
    """LayerNorm over rows of ``width`` INT8 values, ``lanes`` per beat, three rows in flight.

    Parameters
    ----------
    lanes : int
        Values per input and output beat.
    width : int
        Row length D (the embedding width); fixes the dyadic divisors and the buffer depth.

    Attributes
    ----------
    params : In(stream.Signature(StructLayout({"addr": range(beats), "data": ArrayLayout(LAYERNORM_PARAM_LAYOUT, lanes)})))
        Per-channel parameters, one beat of ``lanes`` channels per write: channel
        ``addr * lanes + k`` takes ``data[k]`` (``gamma`` INT8, ``beta`` INT32, the output
        requantiser's ``multiplier`` and ``shift``). ``params.ready`` is high only while no
        row is in the unit (before a row's first beat is taken, the rows before it all out);
        load all ``ceil(width / lanes)`` beats once per layer.
    i : In(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``ceil(width / lanes)`` beats per row; lanes past ``width`` in the last beat are ignored.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(8), lanes), "last": 1})))
        Normalised INT8 rows, ``last`` on each row's final beat; lanes past ``width`` are 0.

    Timing: up to ``ROW_BUFFERS`` rows in flight, one per stage. With ``o.ready`` high and
    input offered whenever asked for, ``rows`` rows of ``b = ceil(width / lanes)`` beats take
    ``3 b + latency + (rows - 1) * period`` cycles from the first input edge to the last output
    edge inclusive: ``latency = LAYERNORM_ROW_OVERHEAD_CYCLES`` (73) for the first row, and
    ``period = layernorm_period_cycles(b)`` (47 for ``b <= 20``, then ``2 b + 6``) for each
    further one (``sim.layernorm.layernorm_cycles``).
    """

    def __init__(self, lanes: int = 8, width: int = 192):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes <= 0:
            raise IntVitError(f"LayerNorm lanes must be a positive integer, not {lanes!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise IntVitError(f"LayerNorm width must be a positive integer, not {width!r}")
        self._lanes = lanes
        self._width = width
        self._divisors = layernorm_divisors(width)
        self._beats = -(-width // lanes)
        super().__init__({
            "params": In(stream.Signature(data.StructLayout({
                "addr": range(self._beats), "data": data.ArrayLayout(LAYERNORM_PARAM_LAYOUT, lanes)}))),
            "i": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "o": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(8), lanes), "last": 1}))),
        })

    @property
    def lanes(self) -> int:
        """Values per beat."""
        return self._lanes

    @property
    def width(self) -> int:
        """Row length D."""
        return self._width

    @property
    def divisors(self) -> tuple[int, int, int, int]:
        """The constant ``layernorm_divisors(width)`` built into the unit."""
        return self._divisors

    @property
    def latency(self) -> int:
        """The first row's cycles beyond three per beat (``LAYERNORM_ROW_OVERHEAD_CYCLES``)."""
        return LAYERNORM_ROW_OVERHEAD_CYCLES

    @property
    def period(self) -> int:
        """Cycles per further row in a stream of rows (``layernorm_period_cycles``)."""
        return layernorm_period_cycles(self._beats)

    def elaborate(self, platform):
        m = Module()
        lanes, beats = self._lanes, self._beats
        mean_multiplier, mean_shift, var_multiplier, var_shift = self._divisors
        # Lanes of the last beat that hold channels; the rest are padding.
        last_lanes = self._width - (beats - 1) * lanes
        regions = ROW_BUFFERS * beats

        # Two dividers, one per division stage: Newton's steps need 16 quotient bits, the reciprocal all 31.
        m.submodules.newton_divider = newton_divider = Divider(DIVIDER_BITS, NEWTON_QUOTIENT_BITS)
        m.submodules.recip_divider = recip_divider = Divider(DIVIDER_BITS)
        # One region of ``beats`` words per row in flight: the row stage loads and reads its
        # region while the output stage reads another.
        m.submodules.buffer = buffer = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=regions, init=[])
        m.submodules.param_buffer = param_buffer = Memory(
            shape=data.ArrayLayout(LAYERNORM_PARAM_LAYOUT, lanes), depth=beats, init=[])
        load = buffer.write_port()
        var_read = buffer.read_port()
        out_read = buffer.read_port()
        param_write = param_buffer.write_port()
        param_read = param_buffer.read_port()

        # Row stage: LOAD, MEAN, VAR, VAR_SCALE, then HOLD until the root stage takes the row.
        r_base = Signal(range(regions))             # first word of the region being loaded
        r_count = Signal(range(beats + 1))          # beats loaded (LOAD) or issued (VAR)
        total = Signal(signed(32))                  # sum of x, then of squares: both fit INT32
        r_mean = Signal(signed(32))
        var = Signal(unsigned(31))
        # Root stage: Newton's steps on the narrow divider.
        q_base = Signal(range(regions))
        q_mean = Signal(signed(32))
        q_var = Signal(unsigned(31))
        root = Signal(ROOT_BITS)                    # Newton's estimate
        iteration = Signal(range(ISQRT_ITERATIONS))
        # Output stage: the reciprocal on the wide divider, then the OUT pass.
        o_base = Signal(range(regions))
        o_mean = Signal(signed(32))
        o_count = Signal(range(beats + 1))
        recip = Signal(DIVIDER_BITS)

        r_hold, q_idle, q_hold, o_idle = Signal(), Signal(), Signal(), Signal()
        to_root = r_hold & q_idle                   # the root stage takes the row stage's row
        to_out = q_hold & o_idle                    # the output stage takes the root stage's row

        m.d.comb += [
            param_write.addr.eq(self.params.payload.addr),
            param_write.data.eq(self.params.payload.data),
            param_write.en.eq(self.params.valid & self.params.ready),
            load.addr.eq(r_base + r_count),
            var_read.addr.eq(r_base + r_count),
            out_read.addr.eq(o_base + o_count),
            param_read.addr.eq(o_count),
            param_read.en.eq(out_read.en),
        ]
        for lane in range(lanes):
            padding = lane >= last_lanes
            m.d.comb += load.data[lane].eq(Mux(r_count == beats - 1, 0, self.i.payload[lane]) if padding
                                           else self.i.payload[lane])
        beat_sum = sum(load.data[lane] for lane in range(lanes))

        # VAR pass: s0 buffer read, s1 centred, s2 rounded squares, then summed into total.
        s0_valid, s1_valid, s2_valid = Signal(), Signal(), Signal()
        s0_last, s1_last, s2_last = Signal(), Signal(), Signal()
        m.d.sync += [s1_valid.eq(s0_valid), s2_valid.eq(s1_valid), s1_last.eq(s0_last), s2_last.eq(s1_last)]
        s2_squares = []
        for lane in range(lanes):
            s1_centred = Signal(signed(CENTRED_BITS), name=f"s1_centred{lane}")
            s2_square = Signal(unsigned(2 * CENTRED_BITS - LN_SQUARE_SHIFT), name=f"s2_square{lane}")
            square = _rounding_shift(s1_centred * s1_centred, LN_SQUARE_SHIFT - 1)
            if lane >= last_lanes:
                square = Mux(s1_last, 0, square)
            m.d.sync += [
                s1_centred.eq((var_read.data[lane] << LN_MEAN_FRAC_BITS) - r_mean),
                s2_square.eq(square),
            ]
            s2_squares.append(s2_square)
        squares_sum = sum(s2_squares)

        # OUT pass, held as a whole while the output is not taken: s0 buffer read,
        # s1 normalised y, s2 affine z, then the output register.
        advance = Signal()
        out_s0_valid, out_s1_valid, out_s2_valid = Signal(), Signal(), Signal()
        out_s0_last, out_s1_last, out_s2_last = Signal(), Signal(), Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        with m.If(advance):
            m.d.sync += [
                out_s1_valid.eq(out_s0_valid), out_s2_valid.eq(out_s1_valid), self.o.valid.eq(out_s2_valid),
                out_s1_last.eq(out_s0_last), out_s2_last.eq(out_s1_last), self.o.payload.last.eq(out_s2_last),
            ]
        for lane in range(lanes):
            param = param_read.data[lane]
            s1_y = Signal(signed(32), name=f"s1_y{lane}")
            s2_z = Signal(signed(32 + 8 + 1), name=f"s2_z{lane}")
            s1_param = Signal(LAYERNORM_PARAM_LAYOUT, name=f"s1_param{lane}")
            s2_multiplier = Signal(unsigned(MULTIPLIER_BITS), name=f"s2_multiplier{lane}")
            s2_shift = Signal(LAYERNORM_PARAM_LAYOUT["shift"].shape, name=f"s2_shift{lane}")
            centred = (out_read.data[lane] << LN_MEAN_FRAC_BITS) - o_mean
            out = _saturate(_rounding_shift(s2_z * s2_multiplier, (s2_shift - 1)[:s2_shift.shape().width]), 8)
            if lane >= last_lanes:
                out = Mux(out_s2_last, 0, out)
            with m.If(advance):
                m.d.sync += [
                    s1_y.eq(_saturate(_rounding_shift(centred * recip, LN_NORM_SHIFT - 1), 32)),
                    s1_param.eq(param),
                    s2_z.eq(s1_y * s1_param.gamma + s1_param.beta),
                    s2_multiplier.eq(s1_param.multiplier),
                    s2_shift.eq(s1_param.shift),
                    self.o.payload.data[lane].eq(out),
                ]

        # Newton's start 2**ceil(bits(var) / 2), taken with the row; each step's estimate
        # min(x, (x + var // x) // 2) is the next step's divisor (a zero estimate divides as 1).
        bit_length = Signal(range(ISQRT_INPUT_BITS + 1))
        for bit in range(ISQRT_INPUT_BITS):
            with m.If(var[bit]):
                m.d.comb += bit_length.eq(bit + 1)
        newton = (root + newton_divider.o.payload.quotient) >> 1
        next_root = Mux(newton < root, newton, root)

        with m.FSM(name="row_stage"):
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1),
                             self.params.ready.eq((r_count == 0) & q_idle & o_idle)]
                with m.If(self.i.valid):
                    m.d.comb += load.en.eq(1)
                    m.d.sync += [
                        r_count.eq(r_count + 1),
                        total.eq(Mux(r_count == 0, 0, total) + beat_sum),
                    ]
                    with m.If(r_count == beats - 1):
                        m.next = "MEAN"
            with m.State("MEAN"):
                m.d.sync += [
                    r_mean.eq(_saturate(_rounding_shift(total * mean_multiplier, mean_shift - 1), 32)),
                    total.eq(0),
                    r_count.eq(0),
                ]
                m.next = "VAR"
            with m.State("VAR"):
                m.d.sync += [s0_valid.eq(r_count < beats), s0_last.eq(r_count == beats - 1)]
                with m.If(r_count < beats):
                    m.d.sync += r_count.eq(r_count + 1)
                with m.If(s2_valid):
                    m.d.sync += total.eq(total + squares_sum)
                    with m.If(s2_last):
                        m.next = "VAR_SCALE"
            with m.State("VAR_SCALE"):
                m.d.sync += [var.eq(_saturate(_rounding_shift(total * var_multiplier, var_shift - 1), 32)),
                             r_count.eq(0)]
                m.next = "HOLD"
            with m.State("HOLD"):
                m.d.comb += r_hold.eq(1)
                with m.If(to_root):
                    m.d.sync += r_base.eq(Mux(r_base == regions - beats, 0, r_base + beats))
                    m.next = "LOAD"

        with m.FSM(name="root_stage"):
            with m.State("IDLE"):
                m.d.comb += [
                    q_idle.eq(1),
                    newton_divider.i.valid.eq(to_root),
                    newton_divider.i.payload.dividend.eq(var),
                    newton_divider.i.payload.divisor.eq(Const(1) << ((bit_length + 1) >> 1)),
                ]
                with m.If(to_root):
                    m.d.sync += [q_base.eq(r_base), q_mean.eq(r_mean), q_var.eq(var),
                                 root.eq(Const(1) << ((bit_length + 1) >> 1)), iteration.eq(0)]
                    m.next = "NEWTON"
            with m.State("NEWTON"):
                m.d.comb += newton_divider.o.ready.eq(1)
                with m.If(newton_divider.o.valid):
                    m.d.sync += [root.eq(next_root), iteration.eq(iteration + 1)]
                    with m.If(iteration == ISQRT_ITERATIONS - 1):
                        m.next = "HOLD"
                    with m.Else():
                        # The next step issues on the edge that takes this one's quotient.
                        m.d.comb += [
                            newton_divider.i.valid.eq(1),
                            newton_divider.i.payload.dividend.eq(q_var),
                            newton_divider.i.payload.divisor.eq(Mux(next_root == 0, 1, next_root)),
                        ]
            with m.State("HOLD"):
                m.d.comb += q_hold.eq(1)
                with m.If(to_out):
                    m.next = "IDLE"

        with m.FSM(name="out_stage"):
            with m.State("IDLE"):
                m.d.comb += [
                    o_idle.eq(1),
                    recip_divider.i.valid.eq(to_out),
                    recip_divider.i.payload.dividend.eq(1 << LN_RECIP_BITS),
                    recip_divider.i.payload.divisor.eq(Mux(root == 0, 1, root)),     # std = max(isqrt(var), 1)
                ]
                with m.If(to_out):
                    m.d.sync += [o_base.eq(q_base), o_mean.eq(q_mean)]
                    m.next = "RECIP"
            with m.State("RECIP"):
                m.d.comb += recip_divider.o.ready.eq(1)
                with m.If(recip_divider.o.valid):
                    m.d.sync += [recip.eq(recip_divider.o.payload.quotient), o_count.eq(0)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += out_read.en.eq(advance)
                with m.If(advance):
                    m.d.sync += [out_s0_valid.eq(o_count < beats), out_s0_last.eq(o_count == beats - 1)]
                    with m.If(o_count < beats):
                        m.d.sync += o_count.eq(o_count + 1)
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += [o_count.eq(0), self.o.valid.eq(0)]
                    m.next = "IDLE"
        return m
