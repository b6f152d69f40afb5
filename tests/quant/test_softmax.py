"""Integer softmax: ``int_exp`` against exp over its whole input range, the range-reduction
constants exhaustively, and ``int_softmax`` against float softmax of the same Q.12 scores."""

import numpy as np
import pytest

from intvit.quant.softmax import (
    EXP_DIV_MULT, EXP_DIV_SHIFT, EXP_LN2, EXP_N_MAX, SOFTMAX_INPUT_FRAC_BITS, SOFTMAX_OUTPUT_FRAC_BITS,
    int_exp, int_softmax,
)

ONE = 1 << SOFTMAX_INPUT_FRAC_BITS
LSB = 2.0**-SOFTMAX_OUTPUT_FRAC_BITS
# Measured: 0.00215 (at d = -580, i.e. exp(-0.14)); the second-order polynomial's own error.
EXP_ABS_ERROR = 0.003
# Measured worst over the spreads below: exactly the 1 LSB of p = 1.0 saturating to 127/128
# (with a truncating shift in int_exp it was 1.9 LSB: row totals were biased low).
SOFTMAX_LSB_ERROR = 1.0 + 1e-9
# Score spreads (std of the real scores) and row lengths: flat rows to one-hot rows.
SPREADS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 32.0)
LENGTHS = (4, 16, 197)


def float_softmax(scores_q12: np.ndarray) -> np.ndarray:
    x = scores_q12 / ONE
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_lsb_errors():
    rng = np.random.default_rng(0)
    worst = 0.0
    for spread in SPREADS:
        for length in LENGTHS:
            x = np.rint(rng.normal(0, spread, (20000 // length * 10, length)) * ONE).astype(np.int32)
            p = int_softmax(x)
            assert p.dtype == np.int8 and p.shape == x.shape
            worst = max(worst, float(np.abs(p * LSB - float_softmax(x)).max() / LSB))
    return worst


def test_exp_division_constants_equal_floor_division_everywhere():
    n = np.arange(EXP_N_MAX + 1, dtype=np.int64)
    assert np.array_equal((n * EXP_DIV_MULT) >> EXP_DIV_SHIFT, n // EXP_LN2)


def test_int_exp_tracks_exp_over_the_whole_input_range():
    d = -np.arange(0, EXP_N_MAX + 2 * ONE, dtype=np.int64)
    e = int_exp(d)
    assert e.dtype == np.int32
    assert e.min() >= 0 and e.max() <= ONE + 1
    assert np.abs(e / ONE - np.exp(d / ONE)).max() < EXP_ABS_ERROR
    assert int(int_exp(np.array([0]))[0]) in (ONE, ONE + 1)


def test_int_exp_is_zero_beyond_the_clamp():
    d = -np.array([EXP_N_MAX + 1, EXP_N_MAX + 1000, 1 << 20, 1 << 31, 1 << 40], dtype=np.int64)
    assert not int_exp(d).any()


def test_int_exp_is_monotonic():
    e = int_exp(-np.arange(0, EXP_N_MAX + 1))
    assert np.all(np.diff(e) <= 0)


def test_softmax_tracks_float_softmax():
    assert softmax_lsb_errors() <= SOFTMAX_LSB_ERROR


def test_wide_random_integer_scores():
    rng = np.random.default_rng(1)
    for length in (1, 2, 3, 16, 50):
        x = rng.integers(-(1 << 19), 1 << 19, (2000, length)).astype(np.int32)
        err = np.abs(int_softmax(x) * LSB - float_softmax(x)).max() / LSB
        assert err <= SOFTMAX_LSB_ERROR


def test_rows_of_length_one_saturate_to_127():
    x = np.array([[0], [-(1 << 19)], [(1 << 19) - 1]], dtype=np.int32)
    assert int_softmax(x).tolist() == [[127], [127], [127]]


@pytest.mark.parametrize("value", [0, 1 << 18, -(1 << 19), 12345])
def test_constant_rows_are_uniform(value):
    for length in (2, 4, 8, 64, 128, 197):
        p = int_softmax(np.full((1, length), value, dtype=np.int32))
        assert np.all(p == p[0, 0]) and abs(int(p[0, 0]) - 128 / length) <= 0.5 + 1e-9


def test_one_hot_rows():
    x = np.full((3, 10), -(1 << 19), dtype=np.int32)
    x[np.arange(3), [0, 4, 9]] = 1 << 18
    p = int_softmax(x)
    assert p[np.arange(3), [0, 4, 9]].tolist() == [127, 127, 127]
    assert (p != 127).sum() == 27 and not p[p != 127].any()


def test_extreme_int32_rows_do_not_overflow():
    x = np.array([[-(1 << 31), (1 << 31) - 1, 0], [(1 << 31) - 1, (1 << 31) - 1, (1 << 31) - 1]], dtype=np.int32)
    assert int_softmax(x).tolist() == [[0, 127, 0], [43, 43, 43]]


def test_probabilities_are_non_negative_and_sum_near_one():
    rng = np.random.default_rng(2)
    x = np.rint(rng.normal(0, 4.0, (500, 197)) * ONE).astype(np.int32)
    p = int_softmax(x).astype(np.int64)
    assert p.min() >= 0
    # Measured totals 120..129: 197 terms each rounded to Q.7 and the exp error.
    assert np.all(np.abs(p.sum(axis=-1) - 128) <= 16)


def test_batched_leading_dims():
    rng = np.random.default_rng(3)
    x = rng.integers(-(1 << 16), 1 << 16, (2, 3, 5, 7)).astype(np.int32)
    assert np.array_equal(int_softmax(x), int_softmax(x.reshape(-1, 7)).reshape(x.shape))
