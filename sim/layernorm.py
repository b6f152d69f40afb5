"""Cycle model of the LayerNorm unit (``rtl.layernorm.LayerNorm``): rows buffered, read three times.

``layernorm_cycles = rows * (3 * ceil(width / lanes) + latency)``

Each row passes over its ``b = ceil(width / lanes)`` beats three times, one beat per
cycle: loading (with the sum), the variance pass and the output pass. ``latency`` is
everything per row that does not scale with the row: the mean and variance requantisers,
the pipeline drains and fills, and six sequential divisions (``ISQRT_ITERATIONS`` Newton
steps of 16 quotient bits and the 31-bit reciprocal). ``layernorm_latency`` states its
composition from the unit's widths (133 cycles); the RTL declares its own
(``rtl.layernorm.LAYERNORM_ROW_OVERHEAD_CYCLES``), the benches measure it, and
``tests/sim/test_rtl_cycles.py`` holds this prediction to the measured cycles exactly.
Rows do not overlap: the next row's first beat enters the edge after the previous row's
last output. The count runs from the first input handshake to the last
output handshake, both included, as the cocotb bench measures
(``tests/rtl/cycles/layernorm.json``); loading the per-channel parameters, once per layer,
is not included.
"""

from __future__ import annotations

from intvit.quant.layernorm import ISQRT_ITERATIONS, LN_RECIP_BITS
from intvit.sim.stream import divider_cycles, row_cycles

__all__ = ["NEWTON_QUOTIENT_BITS", "layernorm_latency", "layernorm_cycles"]

# Newton's quotients var // x stay below 2**16 for every var < 2**31
# (tests/quant/test_layernorm.py proves it), so those divisions retire 16 quotient bits.
NEWTON_QUOTIENT_BITS = 16
MEAN_CYCLES = 1                 # the mean's dyadic requantisation
VAR_DRAIN_CYCLES = 3            # the VAR pass: buffer read, centre, square (summed as it leaves)
VAR_SCALE_CYCLES = 1            # the variance's dyadic requantisation
SQRT_START_CYCLES = 1           # Newton's first estimate from the variance's bit length
ISSUE_CYCLES = 1                # each division's issue cycle
OUT_FILL_CYCLES = 4             # the OUT pass: buffer read, y, z, output register


def layernorm_latency(iterations: int = ISQRT_ITERATIONS, newton_bits: int = NEWTON_QUOTIENT_BITS,
                      recip_bits: int = LN_RECIP_BITS + 1) -> int:
    """Per-row cycles of the LayerNorm unit beyond its three passes over the row's beats.

    ``MEAN + VAR drain + VAR scale + SQRT start + iterations * (issue + divider(newton_bits))
    + issue + divider(recip_bits) + OUT fill`` = 1 + 3 + 1 + 1 + 5 * 18 + 1 + 32 + 4 = 133, with
    Newton's divisions on ``newton_bits`` quotient bits and the reciprocal ``2**30 // std`` on
    ``recip_bits`` (31: the quotient ``2**30 // 1`` needs them).
    Independent of ``lanes`` and the width: each lane has its own datapath.
    """
    return (MEAN_CYCLES + VAR_DRAIN_CYCLES + VAR_SCALE_CYCLES + SQRT_START_CYCLES
            + iterations * (ISSUE_CYCLES + divider_cycles(newton_bits))
            + ISSUE_CYCLES + divider_cycles(recip_bits) + OUT_FILL_CYCLES)


def layernorm_cycles(lanes: int, latency: int, rows: int, width: int) -> int:
    """Cycles to normalise ``rows`` rows of ``width`` INT8 values on a ``lanes``-wide unit.

    Parameters
    ----------
    lanes : int
        Values per beat.
    latency : int
        Per-row cycles beyond the three passes (``layernorm_latency()`` for the RTL: 133).
    rows : int
        Rows (tokens) to normalise; 0 costs nothing.
    width : int
        Values per row (the embedding width D).
    """
    return row_cycles("layernorm", lanes, latency, rows, width, "width")
