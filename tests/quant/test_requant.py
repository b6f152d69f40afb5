"""Dyadic requantisation: ``dyadic`` against exact binary fractions, ``requantize`` and
``int_add`` against exact rational rounding computed with Python integers."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intvit.quant.errors import IntVitError
from intvit.quant.requant import (
    INT32_MAX, INT32_MIN, MAX_SHIFT, MULTIPLIER_BITS, add_multipliers, dyadic, dyadic_value, int_add,
    int_range, out_dtype, requantize, rounding_shift,
)

MULT_LO, MULT_HI = 1 << (MULTIPLIER_BITS - 1), 1 << MULTIPLIER_BITS
# |x| the requantiser is fed in a program: INT32 accumulators and fixed-point values.
X_BOUND = 1 << 31
SCALES = st.floats(min_value=2.0**-30, max_value=2.0**28, allow_nan=False, allow_infinity=False)


def exact_requant(x: int, multiplier: int, shift: int, bits: int) -> int:
    """floor(x * m / 2**shift + 1/2), saturated: round half towards +inf, in exact rationals."""
    value = Fraction(x * multiplier, 1 << shift) + Fraction(1, 2)
    lo, hi = int_range(bits)
    return min(max(value.numerator // value.denominator, lo), hi)


def exact_array(x, multiplier, shift, bits):
    x, multiplier, shift = np.broadcast_arrays(np.asarray(x), np.asarray(multiplier), np.asarray(shift))
    return np.array([exact_requant(int(a), int(m), int(s), bits)
                     for a, m, s in zip(x.ravel(), multiplier.ravel(), shift.ravel())]).reshape(x.shape)


# ---------------------------------------------------------------------------------------- dyadic
@settings(max_examples=300, deadline=None)
@given(SCALES)
def test_dyadic_multiplier_range_and_relative_error(scale):
    m, s = (int(v) for v in dyadic(scale))
    assert MULT_LO <= m < MULT_HI
    assert 1 <= s <= MAX_SHIFT
    error = abs(Fraction(m, 1 << s) - Fraction(scale)) / Fraction(scale)
    assert error < Fraction(1, 1 << 30)


def test_dyadic_is_nearest_on_a_vector():
    scales = np.geomspace(2.0**-30, 2.0**28, 2001)
    m, s = dyadic(scales)
    assert m.shape == s.shape == scales.shape and m.dtype == s.dtype == np.int64
    for scale, mi, si in zip(scales, m.tolist(), s.tolist()):
        target = Fraction(float(scale)) * (1 << si)
        assert abs(target - mi) <= Fraction(1, 2)          # nearest multiplier at that shift


@pytest.mark.parametrize("power", [-20, -1, 0, 1, 10])
def test_dyadic_powers_of_two_are_exact(power):
    m, s = dyadic(2.0**power)
    assert int(m) == MULT_LO and dyadic_value(m, s) == 2.0**power


def test_dyadic_carry_when_mantissa_rounds_up_to_one():
    # 1 - 2**-40 has a mantissa that rounds to 2**31: the pair must renormalise to (2**30, 30).
    m, s = dyadic(1.0 - 2.0**-40)
    assert (int(m), int(s)) == (MULT_LO, MULTIPLIER_BITS - 1)
    m, s = dyadic(3.0 * (1.0 - 2.0**-40))
    assert MULT_LO <= int(m) < MULT_HI


@pytest.mark.parametrize("scale", [1e-12, 2.0**-60, 1e-17])
def test_dyadic_tiny_scales_saturate_the_shift_and_round_the_multiplier(scale):
    m, s = dyadic(scale)
    assert int(s) == MAX_SHIFT
    assert abs(Fraction(int(m), 1 << MAX_SHIFT) - Fraction(scale)) <= Fraction(1, 1 << MAX_SHIFT)


def test_dyadic_scale_below_the_shifter_becomes_zero():
    # Below 2**-63 the nearest representable value at the largest shift is 0: x * scale rounds
    # to 0 for every |x| < 2**32 anyway.
    assert tuple(int(v) for v in dyadic(1e-25)) == (0, MAX_SHIFT)


def test_dyadic_largest_scale_that_fits():
    m, s = dyadic(2.0**29)
    assert (int(m), int(s)) == (MULT_LO, 1)


@pytest.mark.parametrize("scale", [0.0, -1.5, [0.5, 0.0], float("nan"), float("inf"), [1.0, float("inf")]])
def test_dyadic_rejects_non_positive_or_non_finite_scales(scale):
    with pytest.raises(IntVitError, match=r"^requantisation scale must be positive and finite, got "):
        dyadic(scale)


@pytest.mark.parametrize("scale, shown", [(0.0, r"0\.0"), (-1.5, r"-1\.5"), ([1.0, float("inf")], "inf")])
def test_dyadic_error_names_the_offending_scale(scale, shown):
    with pytest.raises(IntVitError, match=rf"^requantisation scale must be positive and finite, got {shown}$"):
        dyadic(scale)


@pytest.mark.parametrize("scale, message", [
    (2.0**30, r"^requantisation scale 1\.07e\+09 is too large for a right shift$"),
    (1e12, r"^requantisation scale 1e\+12 is too large for a right shift$"),
])
def test_dyadic_huge_scale_errors(scale, message):
    with pytest.raises(IntVitError, match=message):
        dyadic(scale)


# ------------------------------------------------------------------------------------ requantize
@settings(max_examples=400, deadline=None)
@given(st.integers(-X_BOUND, X_BOUND), st.integers(0, MULT_HI - 1), st.integers(1, MAX_SHIFT),
       st.sampled_from([8, 17, 32]))
def test_requantize_matches_exact_rounding(x, multiplier, shift, bits):
    assert int(requantize(np.array([x]), multiplier, shift, bits)[0]) == exact_requant(x, multiplier, shift, bits)


def test_requantize_random_arrays_all_widths():
    rng = np.random.default_rng(1)
    x = rng.integers(-X_BOUND, X_BOUND, 4000, endpoint=True)
    m = rng.integers(MULT_LO, MULT_HI, 4000)
    s = rng.integers(1, MAX_SHIFT + 1, 4000)
    for bits in (8, 17, 32):
        assert np.array_equal(requantize(x, m, s, bits), exact_array(x, m, s, bits))


@pytest.mark.parametrize("bits, dtype", [(8, np.int8), (16, np.int16), (17, np.int32), (32, np.int32)])
def test_requantize_output_dtype_is_the_narrowest(bits, dtype):
    assert requantize(np.arange(5), MULT_LO, 31, bits).dtype == dtype


def test_rounding_ties_go_towards_plus_infinity():
    # Shift 1 with multiplier 1 halves x: every odd x is a tie.
    x = np.arange(-9, 10)
    assert requantize(x, 1, 1, 32).tolist() == [(v + 1) // 2 for v in x.tolist()]
    assert requantize(np.array([-3, -1, 1, 3]), 1, 1, 8).tolist() == [-1, 0, 1, 2]
    # Shift 62: the tie is x * m == 2**61 exactly.
    assert requantize(np.array([1, -1]), 1 << 61, 62, 8).tolist() == [1, 0]
    assert requantize(np.array([1, -1]), (1 << 61) - 1, 62, 8).tolist() == [0, 0]


@pytest.mark.parametrize("bits", [8, 17, 32])
def test_requantize_saturates_at_both_bounds(bits):
    lo, hi = int_range(bits)
    x = np.array([INT32_MIN, 2 * lo, lo - 1, lo, hi, hi + 1, 2 * hi, INT32_MAX], dtype=np.int64)
    # Multiplier 2**30 at shift 30 is exactly 1.
    expected = np.clip(x, lo, hi)
    assert np.array_equal(requantize(x, MULT_LO, MULTIPLIER_BITS - 1, bits), expected)
    assert requantize(np.array([hi]), MULT_HI - 1, MULTIPLIER_BITS - 1, bits)[0] == hi  # scale just below 2


def test_requantize_int8_edge_values():
    x = np.array([-128, -127, -1, 0, 1, 126, 127])
    for m, s in [(MULT_LO, 30), (MULT_HI - 1, 31), (MULT_LO, 31), (3 << 29, 31)]:
        assert np.array_equal(requantize(x, m, s, 8), exact_array(x, m, s, 8))


def test_requantize_per_channel_broadcast():
    rng = np.random.default_rng(2)
    x = rng.integers(-(1 << 20), 1 << 20, (3, 5, 7))
    m = rng.integers(MULT_LO, MULT_HI, 7)
    s = rng.integers(20, 40, 7).astype(np.int8)      # programs store shifts as int8
    assert np.array_equal(requantize(x, m, s, 8), exact_array(x, m, s, 8))


def test_requantize_per_row_broadcast():
    rng = np.random.default_rng(3)
    x = rng.integers(-(1 << 20), 1 << 20, (4, 6, 9))
    m = rng.integers(MULT_LO, MULT_HI, (4, 6, 1))
    s = rng.integers(20, 40, (4, 6, 1))
    assert np.array_equal(requantize(x, m, s, 32), exact_array(x, m, s, 32))


@pytest.mark.parametrize("shift", [1, 62])
def test_requantize_extreme_shifts(shift):
    rng = np.random.default_rng(shift)
    x = np.concatenate([rng.integers(-X_BOUND, X_BOUND, 500, endpoint=True), [-X_BOUND, X_BOUND, 0, 1, -1]])
    m = np.concatenate([rng.integers(0, MULT_HI, 500), [MULT_HI - 1] * 5])
    assert np.array_equal(requantize(x, m, shift, 32), exact_array(x, m, shift, 32))


def test_requantize_whole_documented_input_range():
    x = np.array([2**32 - 1, -(2**32 - 1)])
    m, s = MULT_HI - 1, 34
    assert np.array_equal(requantize(x, m, s, 32), exact_array(x, m, s, 32))


def test_requantize_applies_dyadic_scales():
    rng = np.random.default_rng(4)
    scales = rng.uniform(1e-4, 1.0, 16)
    m, s = dyadic(scales)
    x = rng.integers(-(1 << 24), 1 << 24, (50, 16))
    y = requantize(x, m, s, 32)
    assert np.all(np.abs(y - x * scales) <= 0.5 + np.abs(x) * scales * 2.0**-30)


def test_rounding_shift_and_width_helpers():
    assert rounding_shift(np.array([5, 6, 7, -5, -6, -7]), 2).tolist() == [1, 2, 2, -1, -1, -2]
    assert rounding_shift(np.array([2**63 - 1]), 62).tolist() == [2]          # no overflow of the sum
    assert [out_dtype(b) for b in (8, 16, 17, 32, 33)] == [np.int8, np.int16, np.int32, np.int32, np.int64]
    assert int_range(8) == (-128, 127) and int_range(32) == (INT32_MIN, INT32_MAX)


# --------------------------------------------------------------------------------------- int_add
def exact_add(a: int, b: int, m_a: int, m_b: int, shift: int) -> int:
    value = Fraction(a * m_a + b * m_b, 1 << shift) + Fraction(1, 2)
    return min(max(value.numerator // value.denominator, -128), 127)


def test_int_add_matches_exact_rounding_on_all_int8_pairs():
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    a, b = a.astype(np.int8), b.astype(np.int8)
    m_a, m_b, shift = add_multipliers(0.031, 0.017, 0.04)
    y = int_add(a, b, m_a, m_b, shift)
    assert y.dtype == np.int8
    total = a.astype(np.int64) * m_a + b.astype(np.int64) * m_b
    assert np.array_equal(y, np.clip((total + (1 << (shift - 1))) >> shift, -128, 127))
    picks = np.random.default_rng(5).integers(0, a.size, 300)
    for i in picks:
        assert y.flat[i] == exact_add(int(a.flat[i]), int(b.flat[i]), m_a, m_b, shift)


def test_int_add_saturates():
    m_a, m_b, shift = add_multipliers(1.0, 1.0, 1.0)
    a = np.array([127, -128, 100, -100], dtype=np.int8)
    assert int_add(a, a, m_a, m_b, shift).tolist() == [127, -128, 127, -128]


def test_int_add_equal_scales_is_plain_addition_with_ties_up():
    m_a, m_b, shift = add_multipliers(0.5, 0.5, 1.0)
    a = np.array([1, -1, 3, -3, 10], dtype=np.int8)
    b = np.array([0, 0, 0, 0, 5], dtype=np.int8)
    assert int_add(a, b, m_a, m_b, shift).tolist() == [1, 0, 2, -1, 8]


@settings(max_examples=200, deadline=None)
@given(SCALES.filter(lambda v: v < 2.0**10), SCALES.filter(lambda v: v < 2.0**10),
       st.floats(min_value=2.0**-10, max_value=2.0**10))
def test_add_multipliers_shared_shift_and_accuracy(scale_a, scale_b, scale_out):
    bigger = max(scale_a, scale_b) / scale_out
    if bigger >= 2.0**20:
        with pytest.raises(IntVitError, match=r"^residual scales .* are too far above"):
            add_multipliers(scale_a, scale_b, scale_out)
        return
    m_a, m_b, shift = add_multipliers(scale_a, scale_b, scale_out)
    assert all(isinstance(v, int) for v in (m_a, m_b, shift))
    assert 1 <= shift <= MAX_SHIFT
    # The larger multiplier has 21 significant bits unless the shift is capped, so both
    # INT8 products and their sum stay far inside int64 and within 2**-20 of the ratio.
    assert max(m_a, m_b) < 1 << 22
    if shift < MAX_SHIFT:
        assert max(m_a, m_b) >= 1 << 20
    for m, scale in ((m_a, scale_a), (m_b, scale_b)):
        assert abs(m / 2.0**shift - scale / scale_out) <= 2.0**-(shift + 1) * 1.0000001


def test_add_multipliers_error_message():
    with pytest.raises(IntVitError, match=r"^residual scales 4\.19e\+06, 1 are too far above 1$"):
        add_multipliers(2.0**22, 1.0, 1.0)
