"""Cycle model of the Requantiser (``rtl.requant.Requantiser``), in closed form.

The unit takes one beat of ``lanes`` values per cycle into a ``latency``-stage pipeline
(product, rounding shift, saturation), so ``E`` elements stream as ``ceil(E / lanes)`` beats
and the last one leaves ``latency`` cycles after it entered::

    requant_cycles = ceil(E / lanes) + latency        (0 when E = 0)

counted from the cycle that accepts the first beat to the one that delivers the last, both
included (the RTL bench measures the same span; ``tests/rtl/cycles/requant.json``).
"""

from __future__ import annotations

from intvit.sim.stream import stream_cycles

__all__ = ["REQUANT_LATENCY", "requant_cycles"]

REQUANT_LATENCY = 3             # registers: the product, the rounding shift, the saturated result


def requant_cycles(lanes: int, latency: int, elements: int) -> int:
    """Cycles to requantise ``elements`` values on a ``lanes``-wide unit with ``latency`` stages.

    Parameters
    ----------
    lanes : int
        Values per beat.
    latency : int
        Pipeline register stages; ``REQUANT_LATENCY`` (3) for the RTL.
    elements : int
        Values to requantise; 0 costs nothing.

    Returns
    -------
    int
        ``ceil(elements / lanes) + latency``.
    """
    return stream_cycles("requant", lanes, latency, elements)
