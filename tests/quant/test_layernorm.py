"""Integer LayerNorm against float LayerNorm, and the Newton ``int_sqrt`` exhaustively."""

import math

import numpy as np
import pytest

import intvit.quant.layernorm as layernorm
from intvit.quant.errors import IntVitError
from intvit.quant.layernorm import ISQRT_ITERATIONS, LN_NORM_FRAC_BITS, int_layernorm, int_sqrt, layernorm_divisors
from intvit.quant.requant import dyadic, requantize

# Output scale: normalised values up to ~6 sigma times |gamma| <= 2 fit INT8.
OUT_SCALE = 12 / 127
# Measured p99 error over rows spreading >= 2 LSB: 0.69 LSB (D = 768); max 4.2 LSB on rows whose
# std is under one LSB, where Q.8 std and Q.6 mean rounding are a few % of the normalised value.
P99_LSB_ERROR = 1.0
MAX_LSB_ERROR = 5.0
MIN_SPREAD = 2
# The widest row whose INT32 sum of squares cannot overflow.
MAX_WIDTH = 2064


def exact_isqrt(n: np.ndarray) -> np.ndarray:
    root = np.sqrt(n.astype(np.float64)).astype(np.int64)
    root -= root * root > n
    root += (root + 1) * (root + 1) <= n
    return root


def affine(width: int, rng=None):
    """Integer gamma/beta/output requantisation for float gamma, beta (ones and zeros without rng)."""
    gamma = rng.uniform(-2, 2, width) if rng is not None else np.ones(width)
    beta = rng.uniform(-1, 1, width) if rng is not None else np.zeros(width)
    s_gamma = np.abs(gamma) / 127
    norm_scale = s_gamma * 2.0**-LN_NORM_FRAC_BITS
    m, s = dyadic(norm_scale / OUT_SCALE)
    params = (np.rint(gamma / s_gamma).astype(np.int8), np.rint(beta / norm_scale).astype(np.int32),
              m.astype(np.int32), s.astype(np.int8), layernorm_divisors(width))
    return params, gamma, beta


def float_layernorm(x: np.ndarray, gamma, beta) -> np.ndarray:
    x = x.astype(np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    normalised = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return np.clip((normalised * gamma + beta) / OUT_SCALE, -128, 127)


def random_rows(rng, count, width, spread):
    centre = rng.integers(-100, 100, (count, 1))
    return np.clip(np.rint(centre + rng.normal(0, spread, (count, width))), -128, 127).astype(np.int8)


# ------------------------------------------------------------------------------------- int_sqrt
def test_int_sqrt_every_input_below_2_pow_20():
    n = np.arange(1 << 20, dtype=np.int64)
    assert np.array_equal(int_sqrt(n), [math.isqrt(v) for v in range(1 << 20)])


def test_int_sqrt_perfect_squares_and_their_predecessors():
    root = np.arange(1, math.isqrt(2**31 - 1) + 1, dtype=np.int64)
    assert np.array_equal(int_sqrt(root * root), root)
    assert np.array_equal(int_sqrt(root * root - 1), root - 1)
    assert int(int_sqrt(np.array([2**31 - 1]))[0]) == math.isqrt(2**31 - 1)


def test_int_sqrt_random_31_bit_inputs():
    n = np.random.default_rng(0).integers(0, 2**31, 10**6)
    assert np.array_equal(int_sqrt(n), exact_isqrt(n))


def newton_sqrt(n: int, iterations: int) -> int:
    """The documented algorithm in plain Python, with a chosen iteration count."""
    x = 1 << ((n.bit_length() + 1) >> 1)
    for _ in range(iterations):
        x = min(x, (x + n // max(x, 1)) >> 1)
    return x


def test_int_sqrt_needs_every_iteration():
    # Found by a sweep: one iteration fewer leaves these a step above floor(sqrt(n)).
    n = [17397240, 67551960, 268730433]
    assert int_sqrt(np.array(n)).tolist() == [newton_sqrt(v, ISQRT_ITERATIONS) for v in n] == [math.isqrt(v) for v in n]
    assert all(newton_sqrt(v, ISQRT_ITERATIONS - 1) > math.isqrt(v) for v in n)


@pytest.mark.slow
def test_int_sqrt_every_31_bit_input():
    chunk = 1 << 24
    for start in range(0, 2**31, chunk):
        n = np.arange(start, start + chunk, dtype=np.int64)
        assert np.array_equal(int_sqrt(n), exact_isqrt(n)), start


# ------------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("width", [8, 64, 192, 768])
@pytest.mark.parametrize("random_affine", [False, True])
def test_layernorm_tracks_float(width, random_affine):
    rng = np.random.default_rng(width + random_affine)
    params, gamma, beta = affine(width, rng if random_affine else None)
    count = max(4000 // width, 8)
    errors = []
    for spread in (0.3, 1.0, 2.0, 5.0, 20.0, 60.0):
        x = random_rows(rng, count, width, spread)
        y = int_layernorm(x, *params)
        assert y.dtype == np.int8 and y.shape == x.shape
        error = np.abs(y - float_layernorm(x, gamma, beta))
        assert error.max() <= MAX_LSB_ERROR
        errors.append(error[x.max(axis=-1).astype(int) - x.min(axis=-1) >= MIN_SPREAD])
    assert np.percentile(np.concatenate(errors), 99) <= P99_LSB_ERROR


@pytest.mark.parametrize("width", [1, 2, 8, 192])
@pytest.mark.parametrize("value", [0, -128, 127, 37])
def test_constant_rows_give_beta(width, value):
    params, gamma, beta = affine(width, np.random.default_rng(width))
    gamma_q, beta_q, m, s, divisors = params
    x = np.full((3, width), value, dtype=np.int8)
    expected = requantize(beta_q, m, s, 8)
    assert np.array_equal(int_layernorm(x, *params), np.broadcast_to(expected, x.shape))
    assert np.abs(expected - float_layernorm(x, gamma, beta)).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("width", [2, 64, 768, MAX_WIDTH])
def test_extreme_rows_normalise_to_plus_minus_one(width):
    # Half -128 and half 127: mean -0.5, std 127.5, so every value normalises to exactly +-1,
    # and the centred squares reach their largest possible sum.
    params, gamma, beta = affine(width)
    x = np.where(np.arange(width) % 2 == 0, -128, 127).astype(np.int8)[None]
    y = int_layernorm(x, *params)
    assert np.abs(y - float_layernorm(x, gamma, beta)).max() <= 0.5 + 1e-6
    assert np.array_equal(y[0], np.where(x[0] < 0, -round(1 / OUT_SCALE), round(1 / OUT_SCALE)))


def test_single_outlier_rows():
    width = 192
    params, gamma, beta = affine(width)
    x = np.zeros((4, width), dtype=np.int8)
    x[:, 5] = [1, -1, 127, -128]
    error = np.abs(int_layernorm(x, *params) - float_layernorm(x, gamma, beta))
    # The outlier normalises to sqrt(191) ~ 13.8 -> saturates at 127; the rest to ~ -0.07.
    assert error.max() <= 1.0


def test_batched_rows_are_independent():
    rng = np.random.default_rng(9)
    params, _, _ = affine(64, rng)
    x = random_rows(rng, 24, 64, 10.0).reshape(2, 3, 4, 64)
    y = int_layernorm(x, *params)
    assert np.array_equal(y.reshape(-1, 64), int_layernorm(x.reshape(-1, 64), *params))


def test_layernorm_divisors_width_limit():
    layernorm_divisors(MAX_WIDTH)
    with pytest.raises(IntVitError, match=rf"^LayerNorm width {MAX_WIDTH + 1} is too large for an INT32 "
                                          r"sum of squares$"):
        layernorm_divisors(MAX_WIDTH + 1)
