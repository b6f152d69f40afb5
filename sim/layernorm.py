"""Cycle model of the LayerNorm unit (``rtl.layernorm.LayerNorm``): three stages, three rows in flight.

``layernorm_cycles = 3 * b + latency + (rows - 1) * period``, ``b = ceil(width / lanes)``

The unit is a pipeline of three stages, each holding one row (in its own region of the row
buffer) and handing it on, in one cycle, when the next stage is free:

* row stage: ``LOAD`` (b beats, summing), ``MEAN`` (1), the ``VAR`` pass (b beats and a
  3-cycle drain), ``VAR_SCALE`` (1), then ``HOLD`` until taken: ``2 b + 6`` per row;
* root stage: ``ISQRT_ITERATIONS`` Newton steps on a radix-4 divider of 16 quotient bits (9
  cycles each), each issued on the edge that takes the previous quotient (the first on the
  take), ``HOLD``, ``IDLE``: ``5 * 9 + 2 = 47`` per row;
* output stage: the reciprocal ``2**30 // std`` on a radix-4 divider of 31 quotient bits (17
  cycles, issued on the take), the ``OUT`` pass (b beats and a 4-cycle fill), ``IDLE``:
  ``b + 17 + 4 + 1``.

The first row goes through all three: ``latency`` is what it spends beyond its three passes
over the beats, ``layernorm_latency`` states its composition from the unit's widths (73
cycles); every further row follows one ``period`` later, the slowest stage's cycle
(``layernorm_period``: 47, Newton's, up to 20 beats a row, then the row stage's ``2 b + 6``).
Before, one row at a time on a divider of one quotient bit a cycle: ``rows * (3 b + 133)``. The RTL declares its own
(``rtl.layernorm.LAYERNORM_ROW_OVERHEAD_CYCLES``, ``layernorm_period_cycles``), the benches
measure it, and ``tests/sim/test_rtl_cycles.py`` holds this prediction to the measured cycles
exactly. The count runs from the first input handshake to the last output handshake, both
included, as the cocotb bench measures (``tests/rtl/cycles/layernorm.json``); loading the
per-channel parameters, once per layer, is not included.
"""

from __future__ import annotations

from intvit.quant.layernorm import ISQRT_ITERATIONS, LN_RECIP_BITS
from intvit.sim.stream import divider_cycles, row_cycles

__all__ = ["NEWTON_QUOTIENT_BITS", "layernorm_latency", "layernorm_stage_cycles", "layernorm_period",
           "layernorm_cycles"]

# Newton's quotients var // x stay below 2**16 for every var < 2**31
# (tests/quant/test_layernorm.py proves it), so those divisions retire 16 quotient bits.
NEWTON_QUOTIENT_BITS = 16
RECIP_QUOTIENT_BITS = LN_RECIP_BITS + 1  # the quotient 2**30 // 1 needs 31
MEAN_CYCLES = 1                 # the mean's dyadic requantisation
VAR_DRAIN_CYCLES = 3            # the VAR pass: buffer read, centre, square (summed as it leaves)
VAR_SCALE_CYCLES = 1            # the variance's dyadic requantisation
HANDOVER_CYCLES = 1             # a stage holds its finished row a cycle, taken by the next stage
IDLE_CYCLES = 1                 # a stage that handed its row on waits a cycle to take the next
OUT_FILL_CYCLES = 4             # the OUT pass: buffer read, y, z, output register


def layernorm_latency(iterations: int = ISQRT_ITERATIONS, newton_bits: int = NEWTON_QUOTIENT_BITS,
                      recip_bits: int = RECIP_QUOTIENT_BITS) -> int:
    """The first row's cycles in the LayerNorm unit beyond its three passes over the row's beats.

    ``MEAN + VAR drain + VAR scale + hand-over + iterations * divider(newton_bits) + hand-over
    + divider(recip_bits) + OUT fill`` = 1 + 3 + 1 + 1 + 5 * 9 + 1 + 17 + 4 = 73, with
    Newton's divisions on ``newton_bits`` quotient bits and the reciprocal ``2**30 // std`` on
    ``recip_bits`` (31: the quotient ``2**30 // 1`` needs them); each division issues on the
    edge that hands the row over or takes the previous quotient.
    Independent of ``lanes`` and the width: each lane has its own datapath.
    """
    return (MEAN_CYCLES + VAR_DRAIN_CYCLES + VAR_SCALE_CYCLES + HANDOVER_CYCLES
            + iterations * divider_cycles(newton_bits)
            + HANDOVER_CYCLES + divider_cycles(recip_bits) + OUT_FILL_CYCLES)


def layernorm_stage_cycles(beats: int, iterations: int = ISQRT_ITERATIONS, newton_bits: int = NEWTON_QUOTIENT_BITS,
                           recip_bits: int = RECIP_QUOTIENT_BITS) -> tuple[int, int, int]:
    """Each stage's cycle per row for rows of ``beats`` beats: (row, root, output) stage.

    Row stage ``2 * beats + MEAN + VAR drain + VAR scale + hand-over`` (``2 b + 6``), root
    stage ``iterations * divider(newton_bits) + hand-over + idle`` (47), output stage
    ``divider(recip_bits) + beats + OUT fill + idle`` (``b + 22``; the output stage's hand-over
    is its last output).
    """
    return (2 * beats + MEAN_CYCLES + VAR_DRAIN_CYCLES + VAR_SCALE_CYCLES + HANDOVER_CYCLES,
            iterations * divider_cycles(newton_bits) + HANDOVER_CYCLES + IDLE_CYCLES,
            divider_cycles(recip_bits) + beats + OUT_FILL_CYCLES + IDLE_CYCLES)


def layernorm_period(beats: int) -> int:
    """Cycles between consecutive rows' last outputs: the slowest stage's (``max(layernorm_stage_cycles)``)."""
    return max(layernorm_stage_cycles(beats))


def layernorm_cycles(lanes: int, latency: int, rows: int, width: int) -> int:
    """Cycles to normalise ``rows`` rows of ``width`` INT8 values on a ``lanes``-wide unit.

    ``3 * b + latency + (rows - 1) * layernorm_period(b)`` with ``b = ceil(width / lanes)``.

    Parameters
    ----------
    lanes : int
        Values per beat.
    latency : int
        The first row's cycles beyond its three passes (``layernorm_latency()`` for the RTL: 73).
    rows : int
        Rows (tokens) to normalise; 0 costs nothing.
    width : int
        Values per row (the embedding width D).
    """
    return row_cycles("layernorm", lanes, latency, rows, width, layernorm_period, "width")
