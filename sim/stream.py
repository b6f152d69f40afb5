"""The two timing shapes of the element-wise units, shared by their cycle models.

* a *stream* (Requantiser, GELU): ``ceil(elements / lanes) + latency``, one beat of ``lanes``
  values per cycle into a ``latency``-deep pipeline, 0 for no elements;
* *overlapped rows* (Softmax, LayerNorm): ``3 * b + latency + (rows - 1) * period(b)`` with
  ``b = ceil(length / lanes)``: the first row reads its ``b`` beats three times, one beat per
  cycle, plus a fixed cost; the rows after it follow one ``period`` apart, the cycle of the
  unit's slowest stage (each stage holds one row, in its own region of the row buffer, and
  hands it on when the next stage is free), 0 for no rows.

Counts run from the first input handshake to the last output handshake, both included, as
the cocotb benches measure them.
"""

from __future__ import annotations

from collections.abc import Callable

from intvit.quant.errors import IntVitError

__all__ = ["ROW_PASSES", "check_count", "divider_cycles", "stream_cycles", "row_cycles"]

ROW_PASSES = 3


def divider_cycles(quotient_bits: int) -> int:
    """One division on the row units' sequential radix-4 divider, issue to result taken: ``ceil(quotient_bits / 2) + 1``.

    The operands are registered on the issue edge, each of the next ``ceil(quotient_bits / 2)``
    edges retires two quotient bits, and the result is taken on the edge after the last one.
    """
    return -(-quotient_bits // 2) + 1


def check_count(unit: str, name: str, value, minimum: int) -> None:
    """Raise ``IntVitError`` (``"softmax.lanes must be a positive integer, not 0"``) unless an int >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "positive" if minimum > 0 else "non-negative"
        raise IntVitError(f"{unit}.{name} must be a {kind} integer, not {value!r}")


def stream_cycles(unit: str, lanes: int, latency: int, elements: int) -> int:
    """``ceil(elements / lanes) + latency`` (0 when there are no elements)."""
    check_count(unit, "lanes", lanes, 1)
    check_count(unit, "latency", latency, 0)
    check_count(unit, "elements", elements, 0)
    return 0 if elements == 0 else -(-elements // lanes) + latency


def row_cycles(unit: str, lanes: int, latency: int, rows: int, length: int,
               period: Callable[[int], int], length_name: str = "length") -> int:
    """``3 * b + latency + (rows - 1) * period(b)`` for ``b = ceil(length / lanes)``, 0 for no rows.

    ``period(b)`` is the unit's slowest stage's cycle per row (from taking a row to taking the
    next when it never waits).
    """
    check_count(unit, "lanes", lanes, 1)
    check_count(unit, "latency", latency, 0)
    check_count(unit, "rows", rows, 0)
    check_count(unit, length_name, length, 1)
    if rows == 0:
        return 0
    beats = -(-length // lanes)
    return ROW_PASSES * beats + latency + (rows - 1) * period(beats)
