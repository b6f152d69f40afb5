"""A sequential restoring divider: one quotient bit per cycle, shared by Softmax and LayerNorm.

Softmax divides once per row (``2**30 // total``); LayerNorm divides for each Newton step
of its square root (``n // x``) and once more for the reciprocal (``2**30 // std``). A
divider per row is cheap next to the row itself, so one small iterative unit serves
instead of an array divider.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from quant.errors import IntVitError

__all__ = ["Divider", "divider_cycles"]


def divider_cycles(width: int) -> int:
    """Cycles from the input handshake to the output handshake of one ``width``-bit division.

    The operands are registered on the input handshake, then ``width`` cycles each retire
    one quotient bit, and the result is offered the cycle after the last one: the output
    handshake comes ``width + 1`` rising edges after the input handshake when ``o.ready``
    is high. A new division may be accepted on the edge that takes the result.
    """
    return width + 1


class Divider(wiring.Component):
    """Unsigned ``dividend // divisor`` and ``dividend % divisor``, restoring, one bit per cycle.

    Parameters
    ----------
    width : int
        Bits of the dividend, the divisor, the quotient and the remainder.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"dividend": width, "divisor": width})))
        Operands. ``i.ready`` is high while the unit is idle, or while ``o`` is being taken.
    o : Out(stream.Signature(StructLayout({"quotient": width, "remainder": width})))
        Result, held until taken. A zero divisor gives the quotient ``2**width - 1``.

    Timing: ``divider_cycles(width)`` (``width + 1``) edges from input to output handshake.
    """

    def __init__(self, width: int = 31):
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise IntVitError(f"Divider width must be a positive integer, not {width!r}")
        self._width = width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"dividend": width, "divisor": width}))),
            "o": Out(stream.Signature(data.StructLayout({"quotient": width, "remainder": width}))),
        })

    @property
    def width(self) -> int:
        """Operand and result width in bits."""
        return self._width

    @property
    def cycles(self) -> int:
        """Edges from the input handshake to the output handshake (``width + 1``)."""
        return divider_cycles(self._width)

    def elaborate(self, platform):
        m = Module()
        width = self._width
        # The quotient register starts as the dividend: each step shifts one dividend bit
        # out at the top into the partial remainder and one quotient bit in at the bottom.
        remainder = Signal(width)
        quotient = Signal(width)
        divisor = Signal(width)
        steps_left = Signal(range(width))
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
                remainder.eq(0),
                quotient.eq(self.i.payload.dividend),
                divisor.eq(self.i.payload.divisor),
                steps_left.eq(width - 1),
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
