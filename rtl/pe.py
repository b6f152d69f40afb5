"""One processing element of the MatMul array: signed INT8 x INT8 multiply-accumulate into INT32.

The integer semantics are one term of ``quant.matmul.int_matmul``: ``acc = bias + sum_k a_k * b_k``,
exact in INT32 (``quant.matmul.check_accumulator`` keeps sums inside INT32 before any work).
"""


from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement", "OPERAND_SHAPE", "ACCUMULATOR_SHAPE"]

OPERAND_SHAPE = signed(8)
ACCUMULATOR_SHAPE = signed(32)


class ProcessingElement(wiring.Component):
    """Output-stationary MAC cell that also forwards its operands to its neighbours.

    On each clock edge where ``valid`` is high the accumulator takes ``init + a * b`` when
    ``clear`` is high (the first term of a new sum) and ``acc + a * b`` otherwise; with
    ``valid`` low it holds. ``a``, ``valid`` and ``clear`` are registered to the ``*_out``
    ports for the PE on the right, ``b`` to ``b_out`` for the PE below, so a grid of these
    cells forms a systolic array in which every hop costs one cycle.

    Timing: ``acc`` shows a term ``LATENCY`` = 1 cycle after its operands; the ``*_out``
    ports show the operands 1 cycle later too.

    Attributes
    ----------
    a, b : In(signed(8))
        Operands.
    valid : In(1)
        The operands are a term of the sum.
    clear : In(1)
        With ``valid``: start a new sum from ``init``.
    init : In(signed(32))
        Initial value of a new sum (the bias), sampled with ``clear``.
    acc : Out(signed(32))
        The running sum (wraps modulo 2**32 like the INT32 reference; callers bound K).
    a_out, b_out, valid_out, clear_out : Out
        The operands and controls delayed by one cycle.
    """

    LATENCY = 1

    a: In(OPERAND_SHAPE)
    b: In(OPERAND_SHAPE)
    valid: In(1)
    clear: In(1)
    init: In(ACCUMULATOR_SHAPE)
    acc: Out(ACCUMULATOR_SHAPE)
    a_out: Out(OPERAND_SHAPE)
    b_out: Out(OPERAND_SHAPE)
    valid_out: Out(1)
    clear_out: Out(1)

    def elaborate(self, platform):
        m = Module()
        product = self.a * self.b                       # signed(16): |a*b| <= 2**14
        with m.If(self.valid):
            with m.If(self.clear):
                m.d.sync += self.acc.eq(self.init + product)
            with m.Else():
                m.d.sync += self.acc.eq(self.acc + product)
        m.d.sync += [
            self.a_out.eq(self.a),
            self.b_out.eq(self.b),
            self.valid_out.eq(self.valid),
            self.clear_out.eq(self.clear),
        ]
        return m

