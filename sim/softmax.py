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

from intvit.sim.stream import row_cycles

__all__ = ["softmax_cycles"]


def softmax_cycles(lanes: int, latency: int, rows: int, length: int) -> int:
    """Cycles for ``rows`` softmaxes over ``length`` scores each on a ``lanes``-wide unit.

    Parameters
    ----------
    lanes : int
        Scores per beat.
    latency : int
        Per-row cycles beyond the three passes (``rtl.softmax.Softmax.latency`` is 40).
    rows : int
        Rows to normalise; 0 costs nothing.
    length : int
        Scores per row.
    """
    return row_cycles("softmax", lanes, latency, rows, length)
