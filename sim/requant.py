"""Cycle model of the Requantiser (``rtl.requant.Requantiser``), in closed form.

The unit takes one beat of ``lanes`` values per cycle into a ``latency``-stage pipeline
(product, rounding shift, saturation), so ``E`` elements stream as ``ceil(E / lanes)`` beats
and the last one leaves ``latency`` cycles after it entered::

    requant_cycles = ceil(E / lanes) + latency        (0 when E = 0)

counted from the cycle that accepts the first beat to the one that delivers the last, both
included (the RTL bench measures the same span; ``tests/rtl/cycles/requant.json``).
"""

from __future__ import annotations

from quant.errors import IntVitError

__all__ = ["requant_cycles"]


def _check(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "positive" if minimum > 0 else "non-negative"
        raise IntVitError(f"requant.{name} must be a {kind} integer, not {value!r}")


def requant_cycles(lanes: int, latency: int, elements: int) -> int:
    """Cycles to requantise ``elements`` values on a ``lanes``-wide unit with ``latency`` stages.

    Parameters
    ----------
    lanes : int
        Values per beat.
    latency : int
        Pipeline register stages; ``rtl.requant.Requantiser.LATENCY`` is 3.
    elements : int
        Values to requantise; 0 costs nothing.

    Returns
    -------
    int
        ``ceil(elements / lanes) + latency``.
    """
    _check("lanes", lanes, 1)
    _check("latency", latency, 0)
    _check("elements", elements, 0)
    if elements == 0:
        return 0
    return -(-elements // lanes) + latency
