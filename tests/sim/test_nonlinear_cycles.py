"""Cycle formulas of the non-linear units against hand-computed cases and explicit schedules."""

from __future__ import annotations

import pytest

from intvit.quant.errors import IntVitError
from intvit.sim.gelu import gelu_cycles
from intvit.sim.layernorm import layernorm_cycles, layernorm_latency, layernorm_period
from intvit.sim.softmax import softmax_cycles, softmax_latency, softmax_period


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


def line_schedule(rows: int, works: list[int]) -> int:
    """Rows through stages that each hold one row, edge by edge, input always offered.

    ``works[k]``: edges from stage ``k`` taking a row to the first edge it can hand it on (for
    the last stage: to the row's last output). A hand-over happens on the first such edge on
    which the next stage is free; a stage is free again the edge after it handed its row on
    (the first stage takes the next row's first beat then). Both ends counted.
    """
    free = [0] * len(works)
    for _ in range(rows):
        take = free[0]
        for k, work in enumerate(works):
            ready = take + work
            if k + 1 < len(works):
                take = max(ready, free[k + 1])
                free[k] = take + 1
            else:
                free[k] = ready + 1
                end = ready
    return end + 1


def layernorm_works(beats: int, iterations: int = 5, newton_bits: int = 16) -> list[int]:
    """The LayerNorm RTL's states per stage: LOAD b, MEAN 1, VAR b + 3, VAR_SCALE 1 to HOLD; Newton's
    steps of ``ceil(newton_bits / 2) + 1`` edges each (two quotient bits a cycle) from the take,
    HOLD; the reciprocal (16 steps + 1) from the take, OUT b + 4."""
    return [beats + 1 + beats + 3 + 1, iterations * (-(-newton_bits // 2) + 1) + 1, 17 + beats + 4]


@pytest.mark.parametrize("lanes, latency, elements, expected", [
    (8, 4, 1, 5), (8, 4, 8, 5), (8, 4, 9, 6), (4, 4, 197, 54), (1, 4, 64, 68), (16, 0, 32, 2), (8, 4, 0, 0),
])
def test_gelu_hand_cases(lanes, latency, elements, expected):
    assert gelu_cycles(lanes, latency, elements) == expected


@pytest.mark.parametrize("lanes, latency, elements", [(1, 4, 1), (3, 2, 10), (8, 4, 197), (5, 7, 25)])
def test_gelu_matches_schedule(lanes, latency, elements):
    assert gelu_cycles(lanes, latency, elements) == pipelined_schedule(-(-elements // lanes), latency)


def softmax_works(beats: int) -> list[int]:
    """The Softmax RTL's states per stage: LOAD b to HOLD; EXP b + 5 from the take to HOLD; the
    division (16 steps + 1) from the take, OUT b + 2."""
    return [beats, beats + 5 + 1, 17 + beats + 2]


@pytest.mark.parametrize("lanes, latency, rows, length, expected", [
    (4, 26, 1, 1, 29),          # one beat: 3 passes + 26
    (4, 26, 2, 50, 39 + 26 + 33),   # 13 beats: the output stage's b + 20 sets the period
    (8, 26, 197, 197, 3 * 25 + 26 + 196 * 45),
    (1, 26, 3, 197, 3 * 197 + 26 + 2 * (197 + 20)),
    (1, 0, 3, 5, 15 + 2 * 25),
    (4, 26, 0, 10, 0),
])
def test_softmax_hand_cases(lanes, latency, rows, length, expected):
    assert softmax_cycles(lanes, latency, rows, length) == expected


@pytest.mark.parametrize("lanes, rows, length", [(1, 2, 3), (4, 3, 197), (8, 5, 64), (1, 4, 50), (8, 197, 197)])
def test_softmax_matches_schedule(lanes, rows, length):
    beats = -(-length // lanes)
    assert softmax_cycles(lanes, softmax_latency(), rows, length) == line_schedule(rows, softmax_works(beats))


def test_softmax_period_follows_the_stages():
    for beats in (1, 25, 197):
        works = softmax_works(beats)
        assert softmax_period(beats) == line_schedule(3, works) - line_schedule(2, works) == max(works) + 1


@pytest.mark.parametrize("lanes, latency, rows, width, expected", [
    (1, 73, 1, 1, 76),
    (8, 73, 3, 64, 24 + 73 + 2 * 47),                  # 8 beats: Newton's 47 sets the period
    (8, 73, 197, 192, 72 + 73 + 196 * (2 * 24 + 6)),   # 24 beats: the row stage's 2 b + 6
    (3, 73, 1, 10, 85),         # 4 beats, the last one a third full
    (8, 73, 0, 192, 0),
])
def test_layernorm_hand_cases(lanes, latency, rows, width, expected):
    assert layernorm_cycles(lanes, latency, rows, width) == expected


@pytest.mark.parametrize("lanes, rows, width", [(1, 2, 3), (4, 3, 50), (16, 4, 100), (1, 5, 64), (2, 7, 100),
                                                (8, 197, 768), (8, 197, 192)])
def test_layernorm_matches_schedule(lanes, rows, width):
    beats = -(-width // lanes)
    assert layernorm_cycles(lanes, layernorm_latency(), rows, width) == line_schedule(rows, layernorm_works(beats))


def test_layernorm_latency_and_period_follow_the_stages():
    assert layernorm_latency(iterations=3, newton_bits=12) == line_schedule(1, layernorm_works(0, 3, 12))
    for beats in (1, 20, 21, 96):
        works = layernorm_works(beats)
        assert layernorm_period(beats) == line_schedule(3, works) - line_schedule(2, works) == max(works) + 1


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
