"""Cycle model of the Requantiser (``rtl.requant.Requantiser``), in closed form.

The unit takes one beat of ``lanes`` values per cycle into a ``latency``-stage pipeline
(product, rounding shift, saturation), so ``E`` elements stream as ``ceil(E / lanes)`` beats
and the last one leaves ``latency`` cycles after it entered::

    requant_cycles = ceil(E / lanes) + latency

counted from the cycle that accepts the first beat to the one that delivers the last, both
included (the RTL bench measures the same span; ``tests/rtl/cycles/requant.json``).
"""

from __future__ import annotations

from quant.errors import IntVitError

__all__ = ["requant_cycles"]


def requant_cycles(lanes: int, latency: int, elements: int) -> int:
    """Cycles to requantise ``elements`` values on a ``lanes``-wide unit with ``latency`` stages.

    Parameters
    ----------
    lanes : int
        Values per beat (positive).
    latency : int
        Pipeline register stages (non-negative); ``rtl.requant.Requantiser.LATENCY`` is 3.
    elements : int
        Values to requantise (positive).

    Returns
    -------
    int
        ``ceil(elements / lanes) + latency``.
    """
    for name, value, least in (("lanes", lanes, 1), ("latency", latency, 0), ("elements", elements, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            kind = "a positive" if least else "a non-negative"
            raise IntVitError(f"requant {name} must be {kind} integer, not {value!r}")
    return -(-elements // lanes) + latency
