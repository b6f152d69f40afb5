"""Cycle model of the LayerNorm unit (``rtl.layernorm.LayerNorm``): rows buffered, read three times.

``layernorm_cycles = rows * (3 * ceil(width / lanes) + latency)``

Each row passes over its ``b = ceil(width / lanes)`` beats three times, one beat per
cycle: loading (with the sum), the variance pass and the output pass. ``latency`` is
everything per row that does not scale with the row: the mean and variance requantisers,
the pipeline drains and fills, and six sequential divisions (``ISQRT_ITERATIONS`` Newton
steps of 16 quotient bits and the 31-bit reciprocal);
``rtl.layernorm.LAYERNORM_ROW_OVERHEAD_CYCLES`` = 133 for the RTL. Rows do not overlap: the next row's first beat enters the edge after the
previous row's last output. The count runs from the first input handshake to the last
output handshake, both included, as the cocotb bench measures
(``tests/rtl/cycles/layernorm.json``); loading the per-channel parameters, once per layer,
is not included.
"""

from __future__ import annotations

from intvit.sim.stream import row_cycles

__all__ = ["layernorm_cycles"]


def layernorm_cycles(lanes: int, latency: int, rows: int, width: int) -> int:
    """Cycles to normalise ``rows`` rows of ``width`` INT8 values on a ``lanes``-wide unit.

    Parameters
    ----------
    lanes : int
        Values per beat.
    latency : int
        Per-row cycles beyond the three passes (``rtl.layernorm.LayerNorm.latency`` is 133).
    rows : int
        Rows (tokens) to normalise; 0 costs nothing.
    width : int
        Values per row (the embedding width D).
    """
    return row_cycles("layernorm", lanes, latency, rows, width, "width")
