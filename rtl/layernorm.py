"""LayerNorm unit: INT8 rows of a fixed width to INT8, bit for bit ``quant.layernorm.int_layernorm``.

A row is buffered once and read three times, in these phases per row:

``LOAD``
    one beat of ``lanes`` INT8 values per cycle into the row buffer, summing them;
``MEAN``
    ``mean = requant(sum, mean_multiplier, mean_shift)`` in Q.6 (a dyadic multiply: the
    divisors of ``layernorm_divisors(width)`` are constants of the unit);
``VAR``
    each beat is read back, centred (``x * 2**6 - mean``) and its rounded squares summed,
    then ``var = requant(sum, var_multiplier, var_shift)``;
``SQRT``
    Newton's ``x <- min(x, (x + var // x) // 2)`` from ``2**ceil(bits(var) / 2)``,
    ``ISQRT_ITERATIONS`` divisions on a sequential divider of ``NEWTON_QUOTIENT_BITS``
    quotient bits, then ``recip = 2**30 // max(x, 1)`` on one of 31;
``OUT``
    each beat is read again with its channels' parameters: ``y = requant(c, recip, 2**-18)``,
    ``z = y * gamma + beta``, ``out = requant(z, multiplier, shift)`` to INT8.

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

__all__ = ["LayerNorm", "LAYERNORM_PARAM_LAYOUT", "LAYERNORM_ROW_OVERHEAD_CYCLES"]

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
# Per row beyond three passes over the beats, from this unit's states and stages: MEAN, the
# VAR pass drain (3), VAR_SCALE, SQRT_START, each division with its issue cycle, the OUT fill
# (4). The cycle model composes the same figure from the widths (sim.layernorm.layernorm_latency);
# the benches hold both to the measured cycles.
LAYERNORM_ROW_OVERHEAD_CYCLES = (1 + 3 + 1 + 1 + ISQRT_ITERATIONS * (divider_cycles(NEWTON_QUOTIENT_BITS) + 1)
                                 + divider_cycles(DIVIDER_BITS) + 1 + 4)


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
    """LayerNorm over rows of ``width`` INT8 values, ``lanes`` per beat, with a row buffer.

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
        requantiser's ``multiplier`` and ``shift``). ``params.ready`` is high only between
        rows (before a row's first beat is taken); load all ``ceil(width / lanes)`` beats
        once per layer.
    i : In(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``ceil(width / lanes)`` beats per row; lanes past ``width`` in the last beat are ignored.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(8), lanes), "last": 1})))
        Normalised INT8 rows, ``last`` on each row's final beat; lanes past ``width`` are 0.

    Timing: rows are processed one at a time. With ``o.ready`` high and input offered
    whenever asked for, a row of ``b = ceil(width / lanes)`` beats takes ``3 b + latency``
    cycles, ``latency = LAYERNORM_ROW_OVERHEAD_CYCLES`` (133), from its first input edge to
    its last output edge inclusive, and the next row's first beat is taken on the edge after
    (``sim.layernorm.layernorm_cycles``).
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
        """Cycles per row beyond three per beat (``LAYERNORM_ROW_OVERHEAD_CYCLES``)."""
        return LAYERNORM_ROW_OVERHEAD_CYCLES

    def elaborate(self, platform):
        m = Module()
        lanes, beats = self._lanes, self._beats
        mean_multiplier, mean_shift, var_multiplier, var_shift = self._divisors
        # Lanes of the last beat that hold channels; the rest are padding.
        last_lanes = self._width - (beats - 1) * lanes

        # Two dividers: the reciprocal needs all 31 quotient bits, Newton's steps only 16.
        m.submodules.newton_divider = newton_divider = Divider(DIVIDER_BITS, NEWTON_QUOTIENT_BITS)
        m.submodules.recip_divider = recip_divider = Divider(DIVIDER_BITS)
        m.submodules.buffer = buffer = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=beats, init=[])
        m.submodules.param_buffer = param_buffer = Memory(
            shape=data.ArrayLayout(LAYERNORM_PARAM_LAYOUT, lanes), depth=beats, init=[])
        load = buffer.write_port()
        read = buffer.read_port()
        param_write = param_buffer.write_port()
        param_read = param_buffer.read_port()

        count = Signal(range(beats + 1))            # beats loaded (LOAD) or issued (VAR, OUT)
        total = Signal(signed(32))                  # sum of x, then of squares: both fit INT32
        mean = Signal(signed(32))
        var = Signal(unsigned(31))
        root = Signal(ROOT_BITS)                    # Newton's estimate
        iteration = Signal(range(ISQRT_ITERATIONS))
        recip = Signal(DIVIDER_BITS)

        m.d.comb += [
            param_write.addr.eq(self.params.payload.addr),
            param_write.data.eq(self.params.payload.data),
            param_write.en.eq(self.params.valid & self.params.ready),
            load.addr.eq(count),
            param_read.addr.eq(read.addr),
            param_read.en.eq(read.en),
        ]
        for lane in range(lanes):
            padding = lane >= last_lanes
            m.d.comb += load.data[lane].eq(Mux(count == beats - 1, 0, self.i.payload[lane]) if padding
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
                s1_centred.eq((read.data[lane] << LN_MEAN_FRAC_BITS) - mean),
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
            centred = (read.data[lane] << LN_MEAN_FRAC_BITS) - mean
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

        bit_length = Signal(range(ISQRT_INPUT_BITS + 1))
        for bit in range(ISQRT_INPUT_BITS):
            with m.If(var[bit]):
                m.d.comb += bit_length.eq(bit + 1)
        newton = (root + newton_divider.o.payload.quotient) >> 1
        root_or_one = Mux(root == 0, 1, root)

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), self.params.ready.eq(count == 0)]
                with m.If(self.i.valid):
                    m.d.comb += load.en.eq(1)
                    m.d.sync += [
                        count.eq(count + 1),
                        total.eq(Mux(count == 0, 0, total) + beat_sum),
                    ]
                    with m.If(count == beats - 1):
                        m.next = "MEAN"
            with m.State("MEAN"):
                m.d.sync += [
                    mean.eq(_saturate(_rounding_shift(total * mean_multiplier, mean_shift - 1), 32)),
                    total.eq(0),
                    count.eq(0),
                ]
                m.next = "VAR"
            with m.State("VAR"):
                m.d.comb += read.addr.eq(count)
                m.d.sync += [s0_valid.eq(count < beats), s0_last.eq(count == beats - 1)]
                with m.If(count < beats):
                    m.d.sync += count.eq(count + 1)
                with m.If(s2_valid):
                    m.d.sync += total.eq(total + squares_sum)
                    with m.If(s2_last):
                        m.next = "VAR_SCALE"
            with m.State("VAR_SCALE"):
                m.d.sync += var.eq(_saturate(_rounding_shift(total * var_multiplier, var_shift - 1), 32))
                m.next = "SQRT_START"
            with m.State("SQRT_START"):
                m.d.sync += [root.eq(Const(1) << ((bit_length + 1) >> 1)), iteration.eq(0)]
                m.next = "NEWTON_ISSUE"
            with m.State("NEWTON_ISSUE"):
                m.d.comb += [
                    newton_divider.i.valid.eq(1),
                    newton_divider.i.payload.dividend.eq(var),
                    newton_divider.i.payload.divisor.eq(root_or_one),
                ]
                with m.If(newton_divider.i.ready):
                    m.next = "NEWTON_WAIT"
            with m.State("NEWTON_WAIT"):
                m.d.comb += newton_divider.o.ready.eq(1)
                with m.If(newton_divider.o.valid):
                    m.d.sync += [root.eq(Mux(newton < root, newton, root)), iteration.eq(iteration + 1)]
                    with m.If(iteration == ISQRT_ITERATIONS - 1):
                        m.next = "RECIP_ISSUE"
                    with m.Else():
                        m.next = "NEWTON_ISSUE"
            with m.State("RECIP_ISSUE"):
                m.d.comb += [
                    recip_divider.i.valid.eq(1),
                    recip_divider.i.payload.dividend.eq(1 << LN_RECIP_BITS),
                    recip_divider.i.payload.divisor.eq(root_or_one),       # std = max(isqrt(var), 1)
                ]
                with m.If(recip_divider.i.ready):
                    m.next = "RECIP_WAIT"
            with m.State("RECIP_WAIT"):
                m.d.comb += recip_divider.o.ready.eq(1)
                with m.If(recip_divider.o.valid):
                    m.d.sync += [recip.eq(recip_divider.o.payload.quotient), count.eq(0)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [read.addr.eq(count), read.en.eq(advance)]
                with m.If(advance):
                    m.d.sync += [out_s0_valid.eq(count < beats), out_s0_last.eq(count == beats - 1)]
                    with m.If(count < beats):
                        m.d.sync += count.eq(count + 1)
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += [count.eq(0), self.o.valid.eq(0)]
                    m.next = "LOAD"
        return m
