"""The Requantiser: dyadic rescaling of INT32 values to a signed width chosen per beat, ``lanes`` per cycle.

Per lane it computes ``quant.requant.requantize`` exactly::

    y = saturate((x * multiplier + 2**(shift - 1)) >> shift, bits)

with INT32 ``x``, a positive 31-bit ``multiplier``, ``shift`` in [1, 62] and ``bits`` one of
the unit's ``widths``, picked by each beat's ``width`` field (an index into ``widths``), so one
unit serves every requantisation of the integer program: INT8 activations, the 17-bit Q.10
GELU input and the INT32 Q.12 softmax scores (``PROGRAM_WIDTHS``). Built with
``residual=True`` it also takes a second operand and computes ``quant.requant.int_add``'s
residual addition (with ``bits = 8``)::

    y = saturate((x * multiplier + b * multiplier_b + 2**(shift - 1)) >> shift, bits)

which is plain requantisation when ``b`` (or ``multiplier_b``) is zero. Every product and
sum is exact: ``|x * multiplier| < 2**62`` and the rounding constant is below ``2**61``.

Timing: three register stages (product, rounding shift, saturation), so a beat accepted in
cycle ``t`` is delivered in cycle ``t + LATENCY`` whatever its width; with a steady stream one
beat of ``lanes`` values per cycle, also when consecutive beats pick different widths, and
``E`` elements take ``ceil(E / lanes) + LATENCY`` cycles from the first beat accepted to the
last delivered, both included (``sim.requant.requant_cycles``).
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError
from intvit.quant.gelu import GELU_INPUT_BITS
from intvit.quant.requant import MAX_SHIFT, MULTIPLIER_BITS, int_range

__all__ = ["Requantiser", "operand_layout", "result_layout", "MIN_OUT_BITS", "MAX_OUT_BITS", "PROGRAM_WIDTHS"]

INPUT_SHAPE = signed(32)
RESIDUAL_SHAPE = signed(8)
MULTIPLIER_SHAPE = unsigned(MULTIPLIER_BITS)
SHIFT_SHAPE = unsigned(MAX_SHIFT.bit_length())
MIN_OUT_BITS, MAX_OUT_BITS = 2, 32
INT8_BITS = 8
# The integer program's requantisation targets: INT8 activations, Q.10 GELU input, Q.12 scores.
PROGRAM_WIDTHS = (INT8_BITS, GELU_INPUT_BITS, MAX_OUT_BITS)


def width_shape(widths: tuple[int, ...]) -> unsigned:
    """Shape of the per-beat ``width`` index: enough bits to name every entry of ``widths``."""
    return unsigned((len(widths) - 1).bit_length())


def operand_layout(lanes: int, residual: bool = False, widths: tuple[int, ...] = PROGRAM_WIDTHS) -> data.StructLayout:
    """Payload of one input beat: ``lanes`` values with their own multiplier and shift, one ``width`` index."""
    fields = {
        "x": data.ArrayLayout(INPUT_SHAPE, lanes),
        "multiplier": data.ArrayLayout(MULTIPLIER_SHAPE, lanes),
        "shift": data.ArrayLayout(SHIFT_SHAPE, lanes),              # 1 <= shift <= 62
    }
    if residual:
        fields["b"] = data.ArrayLayout(RESIDUAL_SHAPE, lanes)
        fields["multiplier_b"] = data.ArrayLayout(MULTIPLIER_SHAPE, lanes)
    fields["width"] = width_shape(widths)                          # index into widths, for every lane
    fields["last"] = 1
    return data.StructLayout(fields)


def result_layout(lanes: int, widths: tuple[int, ...] = PROGRAM_WIDTHS) -> data.StructLayout:
    """Payload of one output beat: ``lanes`` saturated values, sign-extended to the widest width, and ``last``."""
    return data.StructLayout({"y": data.ArrayLayout(signed(max(widths)), lanes), "last": 1})


def saturate(value, bits: int):
    """``value`` clamped to the signed ``bits``-bit range."""
    lo, hi = int_range(bits)
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


class Requantiser(wiring.Component):
    """Pipelined per-lane dyadic requantisation to a width chosen per beat (and, optionally, residual addition).

    Parameters
    ----------
    lanes : int
        Values per beat.
    widths : tuple of int
        The signed output widths a beat may select, strictly increasing, each in [2, 32];
        ``PROGRAM_WIDTHS`` (8, 17, 32) by default, every width the integer program uses.
    residual : bool
        Add the second operand ``b * multiplier_b`` (``quant.requant.int_add``).

    Attributes
    ----------
    operands : In(stream.Signature(operand_layout(lanes, residual, widths)))
        Per lane ``x`` (INT32), ``multiplier`` (31-bit unsigned), ``shift`` (1..62; other
        values give unspecified results), with ``residual``: ``b`` (INT8) and
        ``multiplier_b`` (31-bit unsigned); per beat ``width``, the index into ``widths``
        of the range every lane saturates to (an index past the last picks the widest),
        and ``last``, carried through untouched.
    results : Out(stream.Signature(result_layout(lanes, widths)))
        Per lane ``y`` (``max(widths)`` bits, the saturated value sign-extended),
        ``LATENCY`` cycles after the operands were accepted. ``operands.ready`` is low only
        while a result waits for ``results.ready``.
    """

    LATENCY = 3

    def __init__(self, lanes: int, *, widths: tuple[int, ...] = PROGRAM_WIDTHS, residual: bool = False):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise IntVitError(f"lanes must be a positive integer, not {lanes!r}")
        if (not isinstance(widths, tuple) or not widths
                or not all(isinstance(w, int) and not isinstance(w, bool) and MIN_OUT_BITS <= w <= MAX_OUT_BITS
                           for w in widths)
                or any(a >= b for a, b in zip(widths, widths[1:]))):
            raise IntVitError(f"widths must be a non-empty tuple of increasing integers in "
                              f"[{MIN_OUT_BITS}, {MAX_OUT_BITS}], not {widths!r}")
        if not isinstance(residual, bool):
            raise IntVitError(f"residual must be True or False, not {residual!r}")
        self._lanes = lanes
        self._widths = widths
        self._residual = residual
        super().__init__({
            "operands": In(stream.Signature(operand_layout(lanes, residual, widths))),
            "results": Out(stream.Signature(result_layout(lanes, widths))),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def widths(self) -> tuple[int, ...]:
        return self._widths

    @property
    def residual(self) -> bool:
        return self._residual

    @property
    def latency(self) -> int:
        """``LATENCY``, as the non-linear units expose theirs."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        beat = self.operands.payload
        # The whole pipeline moves unless a delivered result is still waiting.
        advance = ~self.results.valid | self.results.ready
        m.d.comb += self.operands.ready.eq(advance)

        s1_valid, s2_valid = Signal(), Signal()
        s1_last, s2_last = Signal(), Signal()
        s1_width = Signal(width_shape(self._widths))
        s2_width = Signal(width_shape(self._widths))
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(self.operands.valid), s1_last.eq(beat.last), s1_width.eq(beat.width),
                s2_valid.eq(s1_valid), s2_last.eq(s1_last), s2_width.eq(s1_width),
                self.results.valid.eq(s2_valid), self.results.payload.last.eq(s2_last),
            ]
        for lane in range(self._lanes):
            product = beat.x[lane] * beat.multiplier[lane]
            if self._residual:
                product = product + beat.b[lane] * beat.multiplier_b[lane]
            s1_product = Signal(product.shape(), name=f"s1_product{lane}")
            s1_half_shift = Signal(SHIFT_SHAPE, name=f"s1_half_shift{lane}")   # shift - 1
            s2_rounded = Signal(product.shape(), name=f"s2_rounded{lane}")
            # (p + 2**(s-1)) >> s == ((p >> (s-1)) + 1) >> 1 for floor shifts: no variable constant needed.
            rounded = ((s1_product >> s1_half_shift) + 1) >> 1
            # Every width's clamp in parallel, the beat's index picks one: the widest unless another matches.
            saturated = saturate(s2_rounded, self._widths[-1])
            for index in reversed(range(len(self._widths) - 1)):
                saturated = Mux(s2_width == index, saturate(s2_rounded, self._widths[index]), saturated)
            with m.If(advance):
                m.d.sync += [
                    s1_product.eq(product),
                    s1_half_shift.eq(beat.shift[lane] - 1),
                    s2_rounded.eq(rounded),
                    self.results.payload.y[lane].eq(saturated),
                ]
        return m
