"""A sequential radix-4 restoring divider: two quotient bits per cycle, shared by Softmax and LayerNorm.

Softmax divides once per row (``2**30 // total``); LayerNorm divides for each Newton step
of its square root (``n // x``) and once more for the reciprocal (``2**30 // std``). A
divider per row is cheap next to the row itself, so one small iterative unit serves
instead of an array divider. Each step compares the shifted partial remainder with the
divisor's multiples ``d``, ``2 d`` and ``3 d`` (``3 d`` registered with the operands) and
retires two quotient bits: half the cycles of one bit per step, for two more comparators.
Where the caller knows the quotient is small (Newton's ``n // x < 2**16``), a narrower
quotient skips the steps whose bits can only be zero.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError

__all__ = ["Divider", "divider_cycles", "divider_steps"]

RADIX_BITS = 2                                      # quotient bits retired per cycle


def divider_steps(quotient_width: int) -> int:
    """Cycles of quotient bits for a ``quotient_width``-bit quotient: ``ceil(quotient_width / 2)``."""
    return -(-quotient_width // RADIX_BITS)


def divider_cycles(quotient_width: int) -> int:
    """Cycles from the input handshake to the output handshake of one division.

    The operands are registered on the input handshake, then ``divider_steps(quotient_width)``
    cycles each retire two quotient bits, and the result is offered the cycle after the last
    one: the output handshake comes ``ceil(quotient_width / 2) + 1`` rising edges after the
    input handshake when ``o.ready`` is high. A new division may be accepted on the edge that
    takes the result.
    """
    return divider_steps(quotient_width) + 1


class Divider(wiring.Component):
    """Unsigned ``dividend // divisor`` and ``dividend % divisor``, restoring, two bits per cycle.

    Parameters
    ----------
    width : int
        Bits of the dividend, the divisor and the remainder.
    quotient_width : int or None
        Bits of the quotient, ``width`` when None. Below ``width`` the caller promises
        ``dividend < divisor * 2**quotient_width`` (the quotient fits); otherwise the result
        is undefined.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"dividend": width, "divisor": width})))
        Operands. ``i.ready`` is high while the unit is idle, or while ``o`` is being taken.
    o : Out(stream.Signature(StructLayout({"quotient": quotient_width, "remainder": width})))
        Result, held until taken. A zero divisor gives the quotient ``2**quotient_width - 1``.

    Timing: ``divider_cycles(quotient_width)`` (``ceil(quotient_width / 2) + 1``) edges from
    input to output handshake.
    """

    def __init__(self, width: int = 31, quotient_width: int | None = None):
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise IntVitError(f"Divider width must be a positive integer, not {width!r}")
        if quotient_width is None:
            quotient_width = width
        if (not isinstance(quotient_width, int) or isinstance(quotient_width, bool)
                or not 0 < quotient_width <= width):
            raise IntVitError(f"Divider quotient_width must be an integer from 1 to width {width}, "
                              f"not {quotient_width!r}")
        self._width = width
        self._quotient_width = quotient_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"dividend": width, "divisor": width}))),
            "o": Out(stream.Signature(data.StructLayout({"quotient": quotient_width, "remainder": width}))),
        })

    @property
    def width(self) -> int:
        """Operand and remainder width in bits."""
        return self._width

    @property
    def quotient_width(self) -> int:
        """Quotient width in bits."""
        return self._quotient_width

    @property
    def cycles(self) -> int:
        """Edges from the input handshake to the output handshake (``ceil(quotient_width / 2) + 1``)."""
        return divider_cycles(self._quotient_width)

    def elaborate(self, platform):
        m = Module()
        width, quotient_width = self._width, self._quotient_width
        steps = divider_steps(quotient_width)
        # The quotient register (an even 2 * steps bits) starts as the dividend's low bits: each
        # step shifts two dividend bits out at the top into the partial remainder and two quotient
        # bits in at the bottom. The dividend's high bits start in the partial remainder, as the
        # steps for them would leave: they are below the divisor when the quotient fits. A
        # quotient_width of width + 1 bits' worth (odd width) reads a zero bit above the dividend.
        digits = RADIX_BITS * steps
        remainder = Signal(width)
        quotient = Signal(digits)
        divisor = Signal(width)
        divisor3 = Signal(width + 2)
        steps_left = Signal(range(steps))
        busy = Signal()
        shifted = Cat(quotient[-2:], remainder)         # remainder * 4 + next two dividend bits
        fits3, fits2, fits1 = shifted >= divisor3, shifted >= (divisor << 1), shifted >= divisor
        digit = Mux(fits3, 3, Mux(fits2, 2, Mux(fits1, 1, 0)))
        multiple = Mux(fits3, divisor3, Mux(fits2, divisor << 1, Mux(fits1, divisor, 0)))

        dividend = Cat(self.i.payload.dividend, Const(0, max(0, digits - width)))
        m.d.comb += [
            self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
            self.o.payload.quotient.eq(quotient[:quotient_width]),
            self.o.payload.remainder.eq(remainder),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                remainder.eq(dividend[digits:] if digits < width else 0),
                quotient.eq(dividend[:digits]),
                divisor.eq(self.i.payload.divisor),
                divisor3.eq(self.i.payload.divisor * 3),
                steps_left.eq(steps - 1),
                busy.eq(1),
            ]
        with m.Elif(busy):
            m.d.sync += [remainder.eq(shifted - multiple), quotient.eq(Cat(digit[:2], quotient[:-2])),
                         steps_left.eq(steps_left - 1)]
            with m.If(steps_left == 0):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m
