"""The INT32-lane forms of the fused epilogues equal the reference scalar functions bit for bit.

``requantize_lane``, ``gelu_lane``, ``exp_lane`` and ``softmax_row_lanes`` are the fast forms that
``quant.fused`` runs; each is held here to the function it replaces (``requantize_value``,
``gelu_value``, ``exp_value``, ``softmax_row``, through their own kernels) over its whole domain
where that is small, and on tens of thousands of seeded vectors and the edges where it is not.
"""

import numpy as np
import pytest
from numba import njit

from intvit.quant.gelu import GELU_INPUT_BITS, gelu_lane, int_gelu
from intvit.quant.requant import (INT32_MAX, INT32_MIN, LANE_MIN_SHIFT, MAX_SHIFT, int_range, lane_scale, requantize,
                                  requantize_lane)
from intvit.quant.softmax import EXP_N_MAX, exp_lane, int_exp, int_softmax, softmax_row_lanes


@njit(cache=True)
def _requantize_lanes(x, multiplier, shift32, lo, hi, out):
    for i in range(x.size):
        out[i] = requantize_lane(x[i], multiplier[i], shift32[i], lo, hi)


@njit(cache=True)
def _gelu_lanes(x, out):
    for i in range(x.size):
        out[i] = gelu_lane(x[i])


@njit(cache=True)
def _exp_lanes(n, out):
    for i in range(n.size):
        out[i] = exp_lane(n[i])


@njit(cache=True)
def _softmax_lanes(x, out):
    for i in range(x.shape[0]):
        softmax_row_lanes(x[i], np.empty(x.shape[1], dtype=np.int32), out[i])


def lanes_requantize(x, multiplier, shift, bits):
    lanes = lane_scale(multiplier, shift, x.size)
    out = np.empty(x.size, dtype=np.int32)
    _requantize_lanes(x.astype(np.int32), *lanes, *int_range(bits), out)
    return out


EDGE_X = np.array([INT32_MIN, INT32_MIN + 1, -(1 << 30), -6, -2, -1, 0, 1, 2, 6, 1 << 30, INT32_MAX - 1, INT32_MAX])
EDGE_M = np.array([0, 1, 3, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, (1 << 31) - 1])
EDGE_S = np.array([LANE_MIN_SHIFT, LANE_MIN_SHIFT + 1, 40, MAX_SHIFT - 1, MAX_SHIFT])


@pytest.mark.parametrize("bits", [8, 16, 17, 32])
def test_requantize_lane_equals_requantize_on_random_and_edge_operands(bits):
    rng = np.random.default_rng(bits)
    count = 40_000
    x = rng.integers(INT32_MIN, INT32_MAX, count, endpoint=True)
    x[: count // 2] >>= rng.integers(0, 31, count // 2)              # small magnitudes too
    m = rng.integers(0, 1 << 31, count)
    s = rng.integers(LANE_MIN_SHIFT, MAX_SHIFT, count, endpoint=True)
    grid = np.stack(np.meshgrid(EDGE_X, EDGE_M, EDGE_S, indexing="ij")).reshape(3, -1)
    # Exact ties: x * m = (2k + 1) * 2**(s - 1) with m = 2**30, s = 32, x = 2 mod 4.
    ties = np.array([[v, 1 << 30, 32] for v in (-10, -6, -2, 2, 6, 10)]).T
    x, m, s = (np.concatenate(parts) for parts in zip((x, m, s), grid, ties))
    assert np.array_equal(lanes_requantize(x, m, s, bits), requantize(x, m, s, bits).astype(np.int32))


def test_lane_scale_takes_only_the_lane_forms():
    m, s32 = lane_scale(np.array([1 << 30]), np.array([40]), 5)
    assert m.dtype == s32.dtype == np.int32 and m.tolist() == [1 << 30] * 5 and s32.tolist() == [8] * 5
    assert lane_scale(np.array([1, 2]), np.array([32, 62]), 2) is not None
    for multiplier, shift in [(1 << 30, LANE_MIN_SHIFT - 1), (1 << 30, MAX_SHIFT + 1), (-1, 40), (1 << 31, 40)]:
        assert lane_scale(np.array([multiplier, 1 << 30]), np.array([shift, 40]), 2) is None


def test_gelu_lane_on_every_17_bit_input_and_random_31_bit_ones():
    lo, hi = int_range(GELU_INPUT_BITS)
    rng = np.random.default_rng(7)
    x = np.concatenate([np.arange(lo, hi + 1), rng.integers(INT32_MIN + 1, INT32_MAX, 100_000, endpoint=True),
                        [INT32_MIN + 1, INT32_MAX, -(1 << 30), 1 << 30]])
    out = np.empty(x.size, dtype=np.int32)
    _gelu_lanes(x.astype(np.int32), out)
    assert np.array_equal(out, int_gelu(x.astype(np.int64)))   # gelu_value in int64, stored as INT32


def test_exp_lane_on_its_whole_domain():
    n = np.arange(EXP_N_MAX + 1, dtype=np.int32)
    out = np.empty(n.size, dtype=np.int32)
    _exp_lanes(n, out)
    assert np.array_equal(out, int_exp(-n.astype(np.int64)))


@pytest.mark.parametrize("length", [1, 2, 7, 197, 1000])
def test_softmax_row_lanes_equals_softmax_row(length):
    rng = np.random.default_rng(length)
    rows = []
    for spread in (0, 1, 1 << 8, 1 << 12, 1 << 14, 1 << 20):
        rows.append(rng.normal(rng.integers(-1 << 30, 1 << 30), spread + 1e-9, (64, length)))
    rows.append(rng.integers(INT32_MIN, INT32_MAX, (64, length), endpoint=True))
    extremes = rng.choice([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - EXP_N_MAX, INT32_MAX], (64, length))
    x = np.concatenate([np.clip(np.concatenate(rows), INT32_MIN, INT32_MAX).astype(np.int64), extremes]).astype(np.int32)
    out = np.empty(x.shape, dtype=np.int8)
    _softmax_lanes(x, out)
    assert np.array_equal(out, int_softmax(x))
