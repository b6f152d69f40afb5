"""Cycle model of the Softmax unit (``rtl.softmax.Softmax``): rows buffered, read twice, one division each.

``softmax_cycles = rows * (3 * ceil(length / lanes) + latency)``

Each row passes over its ``b = ceil(length / lanes)`` beats three times, one beat per
cycle: loading (with the running maximum), the exponential pass (with the row total) and
the output pass. ``latency`` is everything per row that does not scale with the row: the
exponential pipeline's drain, the 31-bit sequential division ``2**30 // total`` and the
output pipeline's fill (``rtl.softmax.SOFTMAX_ROW_OVERHEAD_CYCLES`` = 40 for the RTL).
Rows do not overlap: the next row's first beat enters the edge after the previous row's
last output. The count runs from the first input handshake to the last output handshake,
both included, as the cocotb bench measures (``tests/rtl/cycles/softmax.json``).
"""

from __future__ import annotations

from intvit.quant.softmax import SOFTMAX_RECIP_BITS
from intvit.sim.stream import divider_cycles, row_cycles

__all__ = ["EXP_DRAIN_CYCLES", "OUT_FILL_CYCLES", "softmax_latency", "softmax_cycles"]

EXP_DRAIN_CYCLES = 1 + 4        # the EXP pass: buffer read, then 4 exponential stages
DIVIDE_ISSUE_CYCLES = 1         # the cycle that hands the row total to the divider
OUT_FILL_CYCLES = 2             # the OUT pass: buffer read, then the output register


def softmax_latency(recip_bits: int = SOFTMAX_RECIP_BITS) -> int:
    """Per-row cycles of the Softmax unit beyond its three passes over the row's beats.

    ``EXP_DRAIN_CYCLES + DIVIDE_ISSUE_CYCLES + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES``
    (5 + 1 + 32 + 2 = 40): the division ``2**30 // total`` runs on a divider of
    ``recip_bits + 1`` quotient bits (the quotient ``2**30`` of a total of 1 needs 31).
    Independent of ``lanes``: every lane has its own exponential and output datapath.
    """
    return EXP_DRAIN_CYCLES + DIVIDE_ISSUE_CYCLES + divider_cycles(recip_bits + 1) + OUT_FILL_CYCLES


def softmax_cycles(lanes: int, latency: int, rows: int, length: int) -> int:
    """Cycles for ``rows`` softmaxes over ``length`` scores each on a ``lanes``-wide unit.

    Parameters
    ----------
    lanes : int
        Scores per beat.
    latency : int
        Per-row cycles beyond the three passes (``softmax_latency()`` for the RTL: 40).
    rows : int
        Rows to normalise; 0 costs nothing.
    length : int
        Scores per row.
    """
    return row_cycles("softmax", lanes, latency, rows, length, lambda beats: (3 * beats + latency,))
