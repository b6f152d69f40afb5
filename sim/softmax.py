"""Cycle model of the Softmax unit (``rtl.softmax.Softmax``): three stages, three rows in flight.

``softmax_cycles = 3 * b + latency + (rows - 1) * period``, ``b = ceil(length / lanes)``

The unit is a pipeline of three stages, each holding one row (in its own region of the row
buffer) and handing it on, in one cycle, when the next stage is free:

* load stage: ``LOAD`` (b beats, with the running maximum), then ``HOLD`` until taken:
  ``b + 1`` per row;
* exponential stage: ``IDLE`` (the take), the ``EXP`` pass (b beats, then the buffer read and
  4 exponential stages drain, summing the row total), ``HOLD``: ``b + 7``;
* output stage: the division ``2**30 // total`` on the 31-quotient-bit radix-4 divider (17
  cycles, issued on the take), the ``OUT`` pass (b beats and a 2-cycle fill), ``IDLE``:
  ``b + 17 + 2 + 1``.

The first row goes through all three: ``latency`` is what it spends beyond its three passes
over the beats, ``softmax_latency`` states its composition (26 cycles); every further row
follows one ``period`` later, the slowest stage's cycle (``softmax_period``: the output
stage's ``b + 20``). Before, one row at a time on a divider of one quotient bit a cycle:
``rows * (3 b + 40)``. The RTL declares its own (``rtl.softmax.SOFTMAX_ROW_OVERHEAD_CYCLES``,
``softmax_period_cycles``), the benches measure it, and ``tests/sim/test_rtl_cycles.py`` holds
this prediction to the measured cycles exactly. The count runs from the first input handshake
to the last output handshake, both included, as the cocotb bench measures
(``tests/rtl/cycles/softmax.json``).
"""

from __future__ import annotations

from intvit.quant.softmax import SOFTMAX_RECIP_BITS
from intvit.sim.stream import divider_cycles, row_cycles

__all__ = ["EXP_DRAIN_CYCLES", "OUT_FILL_CYCLES", "softmax_latency", "softmax_stage_cycles", "softmax_period",
           "softmax_cycles"]

EXP_DRAIN_CYCLES = 1 + 4        # the EXP pass: buffer read, then 4 exponential stages
HANDOVER_CYCLES = 1             # a stage holds its finished row a cycle, taken by the next stage
IDLE_CYCLES = 1                 # a stage that handed its row on waits a cycle to take the next
OUT_FILL_CYCLES = 2             # the OUT pass: buffer read, then the output register


def softmax_latency(recip_bits: int = SOFTMAX_RECIP_BITS) -> int:
    """The first row's cycles in the Softmax unit beyond its three passes over the row's beats.

    ``hand-over + EXP_DRAIN_CYCLES + hand-over + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES``
    (1 + 5 + 1 + 17 + 2 = 26): the division ``2**30 // total`` runs on a divider of
    ``recip_bits + 1`` quotient bits (the quotient ``2**30`` of a total of 1 needs 31), issued
    on the second hand-over. Independent of ``lanes``: every lane has its own exponential and
    output datapath.
    """
    return HANDOVER_CYCLES + EXP_DRAIN_CYCLES + HANDOVER_CYCLES + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES


def softmax_stage_cycles(beats: int, recip_bits: int = SOFTMAX_RECIP_BITS) -> tuple[int, int, int]:
    """Each stage's cycle per row for rows of ``beats`` beats: (load, exponential, output) stage.

    Load stage ``beats + hand-over`` (``b + 1``), exponential stage ``idle + beats + EXP drain
    + hand-over`` (``b + 7``), output stage ``divider(recip_bits + 1) + beats + OUT fill + idle``
    (``b + 20``; its hand-over is its last output).
    """
    return (beats + HANDOVER_CYCLES,
            IDLE_CYCLES + beats + EXP_DRAIN_CYCLES + HANDOVER_CYCLES,
            divider_cycles(recip_bits + 1) + beats + OUT_FILL_CYCLES + IDLE_CYCLES)


def softmax_period(beats: int) -> int:
    """Cycles between consecutive rows' last outputs: the slowest stage's (``max(softmax_stage_cycles)``)."""
    return max(softmax_stage_cycles(beats))


def softmax_cycles(lanes: int, latency: int, rows: int, length: int) -> int:
    """Cycles for ``rows`` softmaxes over ``length`` scores each on a ``lanes``-wide unit.

    ``3 * b + latency + (rows - 1) * softmax_period(b)`` with ``b = ceil(length / lanes)``.

    Parameters
    ----------
    lanes : int
        Scores per beat.
    latency : int
        The first row's cycles beyond its three passes (``softmax_latency()`` for the RTL: 26).
    rows : int
        Rows to normalise; 0 costs nothing.
    length : int
        Scores per row.
    """
    return row_cycles("softmax", lanes, latency, rows, length, softmax_period)
