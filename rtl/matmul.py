"""The MatMul unit: an output-stationary systolic array of ``rows x cols`` processing elements.

Integer semantics are ``quant.matmul.int_matmul`` with bias: every output is the INT32 bias
plus an exact sum of INT8 x INT8 products. One *fold* computes an ``R x K`` block of A times a
``K x C`` block of B (``R = rows``, ``C = cols``); tiling a larger product into folds and
padding partial blocks with zeros is the caller's job (the simulator's cycle model,
``sim.matmul``, counts ``ceil(M/R) * ceil(N/C)`` folds).

Timing. Each PE copies its finished sum to a result register on the fold's last term, so
the R result rows drain while the next fold already accumulates (a fold's drain overlaps the
next fold's fill). Counting clock cycles from the one that accepts a fold's first operand beat
to the one that delivers its last result row, both included, one fold alone takes::

    fold_cycles = K + R + (C - 1) + LATENCY        with LATENCY = 1

``K`` beats stream in (one per cycle when the producer keeps ``valid`` high); ``LATENCY`` is
the input register stage; the last term reaches the right-hand column ``C - 1`` cycles after
the left one, and row ``i`` is complete ``i`` cycles after row 0, so the R rows drain one per
cycle as they complete. Back to back, the next fold's beats are taken during the drain; only
its *last* beat waits until the previous fold's last row has been taken (the result registers
are overwritten from that beat on), so with ``results.ready`` high folds start every::

    fold_period = max(K, R + C + LATENCY)

cycles, and ``F`` folds streamed back to back take ``fold_cycles + (F - 1) * fold_period``
(``sim.matmul.compute_cycles`` states the same closed form). The bias is added as a row
drains, from a register loaded with the fold's last beat, so it never has to travel with the
skew.

Changed from the first version (folds did not overlap: ``operands.ready`` was low from the
last beat until the last row left, ``K + (R-1) + (C-1) + R + 1`` cycles per fold): the
Signature is unchanged; ``operands.ready`` now drops only while a fold's *last* beat waits
for the previous drain; a lone fold is ``R - 1`` cycles shorter.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError
from intvit.rtl.pe import ACCUMULATOR_SHAPE, OPERAND_SHAPE, ProcessingElement

__all__ = ["MatMulArray", "operand_layout", "result_layout"]


def operand_layout(rows: int, cols: int) -> data.StructLayout:
    """Payload of one operand beat: column ``k`` of the A block, row ``k`` of the B block."""
    return data.StructLayout({
        "a": data.ArrayLayout(OPERAND_SHAPE, rows),       # A[0..R-1, k]
        "b": data.ArrayLayout(OPERAND_SHAPE, cols),       # B[k, 0..C-1]
        "bias": data.ArrayLayout(ACCUMULATOR_SHAPE, cols),  # read on a fold's first beat only
        "last": 1,                                         # set on beat K-1
    })


def result_layout(cols: int) -> data.StructLayout:
    """Payload of one result beat: one row of the ``R x C`` INT32 block."""
    return data.StructLayout({
        "data": data.ArrayLayout(ACCUMULATOR_SHAPE, cols),
        "last": 1,                                         # set on row R-1
    })


class MatMulArray(wiring.Component):
    """Output-stationary ``rows x cols`` systolic array, INT8 operands, INT32 results with bias.

    Parameters
    ----------
    rows, cols : int
        Array shape ``R x C``: rows of A and columns of B per fold.

    Attributes
    ----------
    operands : In(stream.Signature(operand_layout(rows, cols)))
        Beat ``k`` of a fold carries ``a = A[0..R-1, k]``, ``b = B[k, 0..C-1]`` and
        ``last`` on ``k = K-1``; the fold's first beat also carries the INT32 ``bias`` row
        (``bias[j]`` starts every accumulator of column ``j``; zero for no bias). ``K`` is
        whatever the stream delivers (>= 1); ``valid`` may drop between beats.
    results : Out(stream.Signature(result_layout(cols)))
        ``R`` beats per fold, row ``i`` carrying ``bias + A[i, :] @ B``; ``last`` on row R-1.
        Honours ``ready`` (the drain waits, and the next fold's last beat with it).

    Timing: ``fold_cycles = K + R + (C-1) + LATENCY`` for a fold alone, and a new fold every
    ``fold_period = max(K, R + C + LATENCY)`` cycles back to back (see the module docstring).
    """

    LATENCY = 1

    def __init__(self, rows: int, cols: int):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IntVitError(f"{name} must be a positive integer, not {value!r}")
        self._rows = rows
        self._cols = cols
        super().__init__({
            "operands": In(stream.Signature(operand_layout(rows, cols))),
            "results": Out(stream.Signature(result_layout(cols))),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def latency(self) -> int:
        """``LATENCY``, as the non-linear units expose theirs."""
        return self.LATENCY

    @staticmethod
    def fold_cycles(rows: int, cols: int, depth: int) -> int:
        """Cycles of one fold of depth ``K`` alone, first beat accepted to last row delivered, inclusive."""
        return depth + rows + (cols - 1) + MatMulArray.LATENCY

    @staticmethod
    def fold_period(rows: int, cols: int, depth: int) -> int:
        """Cycles between the starts of back-to-back folds of depth ``K`` with ``results.ready`` high."""
        return max(depth, rows + cols + MatMulArray.LATENCY)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        beat = self.operands.payload

        # Input register stage (LATENCY): the operands of the accepted beat, its first/last flags.
        accepted = self.operands.valid & self.operands.ready
        first_pending = Signal(init=1)          # no beat of the current fold accepted yet
        s0_valid = Signal()
        s0_first = Signal()
        s0_last = Signal()
        s0_a = Signal(data.ArrayLayout(OPERAND_SHAPE, rows))
        s0_b = Signal(data.ArrayLayout(OPERAND_SHAPE, cols))
        fill_bias = Signal(data.ArrayLayout(ACCUMULATOR_SHAPE, cols))     # of the fold streaming in
        drain_bias = Signal(data.ArrayLayout(ACCUMULATOR_SHAPE, cols))    # of the fold draining
        m.d.sync += [s0_valid.eq(accepted), s0_first.eq(accepted & first_pending),
                     s0_last.eq(accepted & beat.last), s0_a.eq(beat.a), s0_b.eq(beat.b)]
        with m.If(accepted):
            m.d.sync += first_pending.eq(beat.last)
            with m.If(first_pending):
                m.d.sync += fill_bias.eq(beat.bias)

        pes = [[ProcessingElement() for _ in range(cols)] for _ in range(rows)]
        for i in range(rows):
            for j in range(cols):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]          # init stays 0: the bias joins at the drain

        # Skew: row i of A (with valid, clear and last) enters i cycles late, column j of B j cycles late.
        for i in range(rows):
            a, valid, clear, last = s0_a[i], s0_valid, s0_first, s0_last
            for stage in range(i):
                a_next = Signal(OPERAND_SHAPE, name=f"skew_a{i}_{stage}")
                valid_next = Signal(name=f"skew_valid{i}_{stage}")
                clear_next = Signal(name=f"skew_clear{i}_{stage}")
                last_next = Signal(name=f"skew_last{i}_{stage}")
                m.d.sync += [a_next.eq(a), valid_next.eq(valid), clear_next.eq(clear), last_next.eq(last)]
                a, valid, clear, last = a_next, valid_next, clear_next, last_next
            m.d.comb += [pes[i][0].a.eq(a), pes[i][0].valid.eq(valid), pes[i][0].clear.eq(clear),
                         pes[i][0].last.eq(last)]
            for j in range(1, cols):
                m.d.comb += [pes[i][j].a.eq(pes[i][j - 1].a_out),
                             pes[i][j].valid.eq(pes[i][j - 1].valid_out),
                             pes[i][j].clear.eq(pes[i][j - 1].clear_out),
                             pes[i][j].last.eq(pes[i][j - 1].last_out)]
        for j in range(cols):
            b = s0_b[j]
            for stage in range(j):
                b_next = Signal(OPERAND_SHAPE, name=f"skew_b{j}_{stage}")
                m.d.sync += b_next.eq(b)
                b = b_next
            m.d.comb += pes[0][j].b.eq(b)
            for i in range(1, rows):
                m.d.comb += pes[i][j].b.eq(pes[i - 1][j].b_out)

        # Drain: row i's results are all in C + i cycles after the last beat is taken (the input
        # stage, the skew of row i, C - 1 hops right), so rows leave one per cycle from C cycles
        # on. A fold's last beat waits while a drain is pending: from that beat on the result
        # registers take the new fold's sums.
        draining = Signal()
        wait = Signal(range(cols + 1))
        drain_row = Signal(range(rows))
        m.d.comb += self.operands.ready.eq(~draining | ~beat.last)
        with m.If(draining & (wait != 0)):
            m.d.sync += wait.eq(wait - 1)
        with m.If(draining & (wait == 0)):
            m.d.comb += [self.results.valid.eq(1), self.results.payload.last.eq(drain_row == rows - 1)]
            with m.Switch(drain_row):
                for i in range(rows):
                    with m.Case(i):
                        m.d.comb += [self.results.payload.data[j].eq(pes[i][j].result + drain_bias[j])
                                     for j in range(cols)]
            with m.If(self.results.ready):
                m.d.sync += drain_row.eq(drain_row + 1)
                with m.If(drain_row == rows - 1):
                    m.d.sync += draining.eq(0)
        with m.If(accepted & beat.last):
            m.d.sync += [draining.eq(1), wait.eq(cols), drain_row.eq(0),
                         drain_bias.eq(Mux(first_pending, beat.bias.as_value(), fill_bias.as_value()))]
        return m
