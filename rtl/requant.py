"""The Requantiser: dyadic rescaling of INT32 values to a narrower signed integer, ``lanes`` per cycle.

Per lane it computes ``quant.requant.requantize`` exactly::

    y = saturate((x * multiplier + 2**(shift - 1)) >> shift, out_bits)

with INT32 ``x``, a positive 31-bit ``multiplier`` and ``shift`` in [1, 62]. Built with
``residual=True`` it also takes a second operand and computes ``quant.requant.int_add``'s
residual addition (for ``out_bits = 8``)::

    y = saturate((x * multiplier + b * multiplier_b + 2**(shift - 1)) >> shift, out_bits)

which is plain requantisation when ``b`` (or ``multiplier_b``) is zero. Every product and
sum is exact: ``|x * multiplier| < 2**62`` and the rounding constant is below ``2**61``.

Timing: three register stages (product, rounding shift, saturation), so a beat accepted in
cycle ``t`` is delivered in cycle ``t + LATENCY``; with a steady stream one beat of ``lanes``
values per cycle, and ``E`` elements take ``ceil(E / lanes) + LATENCY`` cycles from the first
beat accepted to the last delivered, both included (``sim.requant.requant_cycles``).
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from quant.errors import IntVitError
from quant.requant import MAX_SHIFT, MULTIPLIER_BITS, int_range

__all__ = ["Requantiser", "operand_layout", "result_layout", "MAX_OUT_BITS"]

INPUT_SHAPE = signed(32)
RESIDUAL_SHAPE = signed(8)
MULTIPLIER_SHAPE = unsigned(MULTIPLIER_BITS)
SHIFT_SHAPE = unsigned(MAX_SHIFT.bit_length())
MAX_OUT_BITS = 32


def operand_layout(lanes: int, residual: bool = False) -> data.StructLayout:
    """Payload of one input beat: ``lanes`` values with their own multiplier and shift."""
    fields = {
        "x": data.ArrayLayout(INPUT_SHAPE, lanes),
        "multiplier": data.ArrayLayout(MULTIPLIER_SHAPE, lanes),
        "shift": data.ArrayLayout(SHIFT_SHAPE, lanes),              # 1 <= shift <= 62
    }
    if residual:
        fields["b"] = data.ArrayLayout(RESIDUAL_SHAPE, lanes)
        fields["multiplier_b"] = data.ArrayLayout(MULTIPLIER_SHAPE, lanes)
    fields["last"] = 1
    return data.StructLayout(fields)


def result_layout(lanes: int, out_bits: int) -> data.StructLayout:
    """Payload of one output beat: ``lanes`` saturated values and the input beat's ``last``."""
    return data.StructLayout({"y": data.ArrayLayout(signed(out_bits), lanes), "last": 1})


class Requantiser(wiring.Component):
    """Pipelined per-lane dyadic requantisation (and, optionally, residual addition).

    Parameters
    ----------
    lanes : int
        Values per beat.
    out_bits : int
        Signed output width in [2, 32]: 8 for INT8 activations, 17 and 32 for the
        fixed-point intermediates of the non-linear units.
    residual : bool
        Add the second operand ``b * multiplier_b`` (``quant.requant.int_add``).

    Attributes
    ----------
    operands : In(stream.Signature(operand_layout(lanes, residual)))
        Per lane ``x`` (INT32), ``multiplier`` (31-bit unsigned), ``shift`` (1..62; other
        values give unspecified results), with ``residual``: ``b`` (INT8) and
        ``multiplier_b`` (31-bit unsigned); ``last`` is carried through untouched.
    results : Out(stream.Signature(result_layout(lanes, out_bits)))
        Per lane ``y``, ``LATENCY`` cycles after the operands were accepted.
        ``operands.ready`` is low only while a result waits for ``results.ready``.
    """

    LATENCY = 3

    def __init__(self, lanes: int, *, out_bits: int = 8, residual: bool = False):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise IntVitError(f"lanes must be a positive integer, not {lanes!r}")
        if not isinstance(out_bits, int) or isinstance(out_bits, bool) or not 2 <= out_bits <= MAX_OUT_BITS:
            raise IntVitError(f"out_bits must be an integer in [2, {MAX_OUT_BITS}], not {out_bits!r}")
        if not isinstance(residual, bool):
            raise IntVitError(f"residual must be True or False, not {residual!r}")
        self._lanes = lanes
        self._out_bits = out_bits
        self._residual = residual
        super().__init__({
            "operands": In(stream.Signature(operand_layout(lanes, residual))),
            "results": Out(stream.Signature(result_layout(lanes, out_bits))),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def out_bits(self) -> int:
        return self._out_bits

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
        lo, hi = int_range(self._out_bits)
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(self.operands.valid), s1_last.eq(beat.last),
                s2_valid.eq(s1_valid), s2_last.eq(s1_last),
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
            saturated = Mux(s2_rounded > hi, hi, Mux(s2_rounded < lo, lo, s2_rounded))
            with m.If(advance):
                m.d.sync += [
                    s1_product.eq(product),
                    s1_half_shift.eq(beat.shift[lane] - 1),
                    s2_rounded.eq(rounded),
                    self.results.payload.y[lane].eq(saturated),
                ]
        return m
