"""Cycle formulas of the non-linear units against hand-computed cases and explicit schedules."""

from __future__ import annotations

import pytest

from intvit.quant.errors import IntVitError
from intvit.sim.gelu import gelu_cycles
from intvit.sim.layernorm import layernorm_cycles
from intvit.sim.softmax import softmax_cycles


def pipelined_schedule(beats: int, latency: int) -> int:
    """Edge by edge: beat k enters on edge k and leaves on edge k + latency."""
    exits = [k + latency for k in range(beats)]
    return exits[-1] + 1          # first entry on edge 0, both ends counted


def row_schedule(rows: int, beats: int, passes: int, overhead: int) -> int:
    """Rows back to back: ``passes`` passes of one beat per edge plus a fixed overhead each."""
    edge = 0
    for _ in range(rows):
        for _ in range(passes):
            edge += beats
        edge += overhead
    return edge


@pytest.mark.parametrize("lanes, latency, elements, expected", [
    (8, 4, 1, 5), (8, 4, 8, 5), (8, 4, 9, 6), (4, 4, 197, 54), (1, 4, 64, 68), (16, 0, 32, 2), (8, 4, 0, 0),
])
def test_gelu_hand_cases(lanes, latency, elements, expected):
    assert gelu_cycles(lanes, latency, elements) == expected


@pytest.mark.parametrize("lanes, latency, elements", [(1, 4, 1), (3, 2, 10), (8, 4, 197), (5, 7, 25)])
def test_gelu_matches_schedule(lanes, latency, elements):
    assert gelu_cycles(lanes, latency, elements) == pipelined_schedule(-(-elements // lanes), latency)


@pytest.mark.parametrize("lanes, latency, rows, length, expected", [
    (4, 40, 1, 1, 43),          # one beat: 3 passes + 40
    (4, 40, 2, 50, 158),        # 13 beats: 2 * (39 + 40)
    (8, 40, 197, 197, 197 * (3 * 25 + 40)),
    (1, 0, 3, 5, 45),
    (4, 40, 0, 10, 0),
])
def test_softmax_hand_cases(lanes, latency, rows, length, expected):
    assert softmax_cycles(lanes, latency, rows, length) == expected


@pytest.mark.parametrize("lanes, latency, rows, length", [(1, 40, 2, 3), (4, 40, 3, 197), (8, 12, 5, 64)])
def test_softmax_matches_schedule(lanes, latency, rows, length):
    assert softmax_cycles(lanes, latency, rows, length) == row_schedule(rows, -(-length // lanes), 3, latency)


@pytest.mark.parametrize("lanes, latency, rows, width, expected", [
    (1, 208, 1, 1, 211),
    (8, 208, 3, 192, 3 * (72 + 208)),
    (8, 208, 197, 768, 197 * (288 + 208)),
    (3, 208, 1, 10, 220),       # 4 beats, the last one a third full
    (8, 208, 0, 192, 0),
])
def test_layernorm_hand_cases(lanes, latency, rows, width, expected):
    assert layernorm_cycles(lanes, latency, rows, width) == expected


@pytest.mark.parametrize("lanes, latency, rows, width", [(1, 208, 2, 3), (4, 208, 3, 50), (16, 5, 4, 100)])
def test_layernorm_matches_schedule(lanes, latency, rows, width):
    assert layernorm_cycles(lanes, latency, rows, width) == row_schedule(rows, -(-width // lanes), 3, latency)


@pytest.mark.parametrize("call, message", [
    (lambda: gelu_cycles(0, 4, 10), r"^gelu\.lanes must be a positive integer, not 0$"),
    (lambda: gelu_cycles(8, -1, 10), r"^gelu\.latency must be a non-negative integer, not -1$"),
    (lambda: gelu_cycles(8, 4, 2.5), r"^gelu\.elements must be a non-negative integer, not 2\.5$"),
    (lambda: softmax_cycles(8, 40, 1, 0), r"^softmax\.length must be a positive integer, not 0$"),
    (lambda: softmax_cycles(8, 40, -2, 5), r"^softmax\.rows must be a non-negative integer, not -2$"),
    (lambda: layernorm_cycles(True, 208, 1, 8), r"^layernorm\.lanes must be a positive integer, not True$"),
    (lambda: layernorm_cycles(8, 208, 1, 0), r"^layernorm\.width must be a positive integer, not 0$"),
])
def test_rejects_bad_arguments(call, message):
    with pytest.raises(IntVitError, match=message):
        call()
