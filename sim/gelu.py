"""Cycle model of the GELU unit (``rtl.gelu.Gelu``): a fully pipelined element-wise stream.

``gelu_cycles = ceil(elements / lanes) + latency``

One beat of ``lanes`` elements enters per cycle and each leaves ``latency`` cycles later
(fill + stream, SCALE-Sim's fold length without the drain of a systolic array). The count
runs from the first input handshake to the last output handshake, both included, which is
what the cocotb bench measures (``tests/rtl/cycles/gelu.json``: for ``Gelu`` the pipeline
depth is 4).
"""

from __future__ import annotations

from intvit.sim.stream import stream_cycles

__all__ = ["GELU_LATENCY", "gelu_cycles"]

GELU_LATENCY = 4                # registers: the clipped gap, its square, erf, the product x * (1 + erf)


def gelu_cycles(lanes: int, latency: int, elements: int) -> int:
    """Cycles to stream ``elements`` values through a ``lanes``-wide, ``latency``-deep GELU pipeline.

    Parameters
    ----------
    lanes : int
        Elements per cycle.
    latency : int
        Pipeline depth in cycles; ``GELU_LATENCY`` (4) for the RTL.
    elements : int
        Values to transform; 0 costs nothing.
    """
    return stream_cycles("gelu", lanes, latency, elements)
