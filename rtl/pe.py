"""One processing element of the MatMul array: signed INT8 x INT8 multiply-accumulate into INT32.

The integer semantics are one term of ``quant.matmul.int_matmul``: ``acc = bias + sum_k a_k * b_k``,
exact in INT32 (``quant.matmul.check_accumulator`` keeps sums inside INT32 before any work).
"""


from amaranth import Module, Mux, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement", "OPERAND_SHAPE", "ACCUMULATOR_SHAPE"]

OPERAND_SHAPE = signed(8)
ACCUMULATOR_SHAPE = signed(32)


class ProcessingElement(wiring.Component):
    """Output-stationary MAC cell that also forwards its operands to its neighbours.

    On each clock edge where ``valid`` is high the accumulator takes ``init + a * b`` when
    ``clear`` is high (the first term of a new sum) and ``acc + a * b`` otherwise; with
    ``valid`` low it holds. With ``valid`` and ``last`` (the final term of a sum) the finished
    sum is also copied to ``result``, which holds it while ``acc`` starts the next sum: the
    array drains ``result`` while the next fold accumulates. ``a``, ``valid``, ``clear`` and
    ``last`` are registered to the ``*_out`` ports for the PE on the right, ``b`` to ``b_out``
    for the PE below, so a grid of these cells forms a systolic array in which every hop
    costs one cycle.

    Timing: ``acc`` and ``result`` show a term ``LATENCY`` = 1 cycle after its operands; the
    ``*_out`` ports show the operands 1 cycle later too.

    Attributes
    ----------
    a, b : In(signed(8))
        Operands.
    valid : In(1)
        The operands are a term of the sum.
    clear : In(1)
        With ``valid``: start a new sum from ``init``.
    last : In(1)
        With ``valid``: the final term of the sum; copy the finished sum to ``result``.
    init : In(signed(32))
        Initial value of a new sum (the bias), sampled with ``clear``.
    acc : Out(signed(32))
        The running sum (wraps modulo 2**32 like the INT32 reference; callers bound K).
    result : Out(signed(32))
        The last finished sum, held until the next ``last`` term.
    a_out, b_out, valid_out, clear_out, last_out : Out
        The operands and controls delayed by one cycle.
    """

    LATENCY = 1

    a: In(OPERAND_SHAPE)
    b: In(OPERAND_SHAPE)
    valid: In(1)
    clear: In(1)
    last: In(1)
    init: In(ACCUMULATOR_SHAPE)
    acc: Out(ACCUMULATOR_SHAPE)
    result: Out(ACCUMULATOR_SHAPE)
    a_out: Out(OPERAND_SHAPE)
    b_out: Out(OPERAND_SHAPE)
    valid_out: Out(1)
    clear_out: Out(1)
    last_out: Out(1)

    def elaborate(self, platform):
        m = Module()
        product = self.a * self.b                       # signed(16): |a*b| <= 2**14
        total = Mux(self.clear, self.init, self.acc) + product
        with m.If(self.valid):
            m.d.sync += self.acc.eq(total)
            with m.If(self.last):
                m.d.sync += self.result.eq(total)
        m.d.sync += [
            self.a_out.eq(self.a),
            self.b_out.eq(self.b),
            self.valid_out.eq(self.valid),
            self.clear_out.eq(self.clear),
            self.last_out.eq(self.last),
        ]
        return m

