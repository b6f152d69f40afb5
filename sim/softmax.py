"""Cycle model of the Softmax unit (``rtl.softmax.Softmax``): two stages, two rows in flight.

``softmax_cycles = 3 * b + latency + (rows - 1) * period``, ``b = ceil(length / lanes)``

The unit is a pipeline of two stages, each holding one row (in its own region of the row
buffer); the row stage hands its row on, in one cycle, when the output stage is free:

* row stage: ``LOAD`` (b beats, with the running maximum), the ``EXP`` pass (b beats, then
  the buffer read and 4 exponential stages drain, summing the row total), then ``HOLD``
  until taken: ``2 b + 6`` per row;
* output stage: the division ``2**30 // total`` on the 31-quotient-bit sequential divider
  (issued on the take), the ``OUT`` pass (b beats and a 2-cycle fill), ``IDLE``:
  ``b + 32 + 2 + 1``.

The first row goes through both: ``latency`` is what it spends beyond its three passes over
the beats, ``softmax_latency`` states its composition (40 cycles); every further row follows
one ``period`` later, the slower stage's cycle (``softmax_period``: ``b + 35`` up to 29 beats
a row, then ``2 b + 6``). Before, one row at a time: ``rows * (3 b + 40)``. The RTL declares
its own (``rtl.softmax.SOFTMAX_ROW_OVERHEAD_CYCLES``, ``softmax_period_cycles``), the benches
measure it, and ``tests/sim/test_rtl_cycles.py`` holds this prediction to the measured cycles
exactly. The count runs from the first input handshake to the last output handshake, both
included, as the cocotb bench measures (``tests/rtl/cycles/softmax.json``).
"""

from __future__ import annotations

from intvit.quant.softmax import SOFTMAX_RECIP_BITS
from intvit.sim.stream import divider_cycles, row_cycles

__all__ = ["EXP_DRAIN_CYCLES", "OUT_FILL_CYCLES", "softmax_latency", "softmax_stage_cycles", "softmax_period",
           "softmax_cycles"]

EXP_DRAIN_CYCLES = 1 + 4        # the EXP pass: buffer read, then 4 exponential stages
HANDOVER_CYCLES = 1             # the row stage holds its finished row a cycle; the take issues the division
IDLE_CYCLES = 1                 # the output stage, its row out, waits a cycle to take the next
OUT_FILL_CYCLES = 2             # the OUT pass: buffer read, then the output register


def softmax_latency(recip_bits: int = SOFTMAX_RECIP_BITS) -> int:
    """The first row's cycles in the Softmax unit beyond its three passes over the row's beats.

    ``EXP_DRAIN_CYCLES + HANDOVER_CYCLES + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES``
    (5 + 1 + 32 + 2 = 40): the division ``2**30 // total`` runs on a divider of
    ``recip_bits + 1`` quotient bits (the quotient ``2**30`` of a total of 1 needs 31).
    Independent of ``lanes``: every lane has its own exponential and output datapath.
    """
    return EXP_DRAIN_CYCLES + HANDOVER_CYCLES + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES


def softmax_stage_cycles(beats: int, recip_bits: int = SOFTMAX_RECIP_BITS) -> tuple[int, int]:
    """Each stage's cycle per row for rows of ``beats`` beats: (row, output) stage.

    Row stage ``2 * beats + EXP drain + hand-over`` (``2 b + 6``), output stage
    ``divider(recip_bits + 1) + beats + OUT fill + idle`` (``b + 35``; its hand-over is its last
    output).
    """
    return (2 * beats + EXP_DRAIN_CYCLES + HANDOVER_CYCLES,
            divider_cycles(recip_bits + 1) + beats + OUT_FILL_CYCLES + IDLE_CYCLES)


def softmax_period(beats: int) -> int:
    """Cycles between consecutive rows' last outputs: the slower stage's (``max(softmax_stage_cycles)``)."""
    return max(softmax_stage_cycles(beats))


def softmax_cycles(lanes: int, latency: int, rows: int, length: int) -> int:
    """Cycles for ``rows`` softmaxes over ``length`` scores each on a ``lanes``-wide unit.

    ``3 * b + latency + (rows - 1) * softmax_period(b)`` with ``b = ceil(length / lanes)``.

    Parameters
    ----------
    lanes : int
        Scores per beat.
    latency : int
        The first row's cycles beyond its three passes (``softmax_latency()`` for the RTL: 40).
    rows : int
        Rows to normalise; 0 costs nothing.
    length : int
        Scores per row.
    """
    return row_cycles("softmax", lanes, latency, rows, length, softmax_stage_cycles)
