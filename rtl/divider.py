"""A sequential restoring divider: one quotient bit per cycle, shared by Softmax and LayerNorm.

Softmax divides once per row (``2**30 // total``); LayerNorm divides for each Newton step
of its square root (``n // x``) and once more for the reciprocal (``2**30 // std``). A
divider per row is cheap next to the row itself, so one small iterative unit serves
instead of an array divider. Where the caller knows the quotient is small (Newton's
``n // x < 2**16``), a narrower quotient skips the steps whose bits can only be zero.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError

__all__ = ["Divider", "divider_cycles"]


def divider_cycles(quotient_width: int) -> int:
    """Cycles from the input handshake to the output handshake of one division.

    The operands are registered on the input handshake, then ``quotient_width`` cycles each
    retire one quotient bit, and the result is offered the cycle after the last one: the
    output handshake comes ``quotient_width + 1`` rising edges after the input handshake
    when ``o.ready`` is high. A new division may be accepted on the edge that takes the result.
    """
    return quotient_width + 1


class Divider(wiring.Component):
    """Unsigned ``dividend // divisor`` and ``dividend % divisor``, restoring, one bit per cycle.

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

    Timing: ``divider_cycles(quotient_width)`` (``quotient_width + 1``) edges from input to
    output handshake.
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
        """Quotient width in bits: the quotient bits computed, one per cycle."""
        return self._quotient_width

    @property
    def cycles(self) -> int:
        """Edges from the input handshake to the output handshake (``quotient_width + 1``)."""
        return divider_cycles(self._quotient_width)

    def elaborate(self, platform):
        m = Module()
        width, quotient_width = self._width, self._quotient_width
        # The quotient register starts as the dividend's low quotient_width bits: each step
        # shifts one dividend bit out at the top into the partial remainder and one quotient
        # bit in at the bottom. The dividend's high bits start in the partial remainder, as
        # the steps for them would leave: they are below the divisor when the quotient fits.
        remainder = Signal(width)
        quotient = Signal(quotient_width)
        divisor = Signal(width)
        steps_left = Signal(range(quotient_width))
        busy = Signal()
        shifted = Cat(quotient[-1], remainder)          # remainder * 2 + next dividend bit
        fits = shifted >= divisor

        m.d.comb += [
            self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
            self.o.payload.quotient.eq(quotient),
            self.o.payload.remainder.eq(remainder),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                remainder.eq(self.i.payload.dividend[quotient_width:]),
                quotient.eq(self.i.payload.dividend[:quotient_width]),
                divisor.eq(self.i.payload.divisor),
                steps_left.eq(quotient_width - 1),
                busy.eq(1),
            ]
        with m.Elif(busy):
            with m.If(fits):
                m.d.sync += [remainder.eq(shifted - divisor), quotient.eq(Cat(1, quotient[:-1]))]
            with m.Else():
                m.d.sync += [remainder.eq(shifted), quotient.eq(Cat(0, quotient[:-1]))]
            m.d.sync += steps_left.eq(steps_left - 1)
            with m.If(steps_left == 0):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m
