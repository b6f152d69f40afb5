"""Integer LayerNorm against float LayerNorm, and the Newton ``int_sqrt`` exhaustively."""

import math

import numpy as np
import pytest
import sympy

import intvit.quant.layernorm as layernorm
from intvit.quant.errors import IntVitError
from intvit.quant.layernorm import (
    ISQRT_INPUT_BITS, ISQRT_ITERATIONS, LN_NORM_FRAC_BITS, int_layernorm, int_sqrt, layernorm_divisors,
)
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


# ------------------------------------------------------------- Newton's quotients fit 16 bits
def test_newton_quotients_fit_the_narrow_divider_by_proof():
    """``var // x < 2**16`` at every Newton step for every ``var < 2**31``: a proof, each step checked.

    The RTL's and the cycle model's Newton divider has ``NEWTON_QUOTIENT_BITS`` = 16 quotient
    bits; a quotient that did not fit would come out wrong, silently. With ``s = isqrt(var)``:

    1. the start ``2**ceil(bits(var) / 2)`` is at least ``s`` (checked for all 32 bit lengths);
    2. a step keeps every estimate ``x >= s``: ``(x + var // x) // 2 >= s`` for ``x >= 1``,
       since ``var // x >= s*s // x >= 2 s - x`` because ``s*s - x (2 s - x) = (s - x)**2 >= 0``
       (sympy checks the identity; the floor of a number at least an integer is at least it),
       and ``min(x, step)`` keeps the smaller of two values that are both ``>= s``;
    3. so ``var // x <= var // s <= (s*s + 2 s) // s = s + 2`` (``var < (s + 1)**2``), at most
       ``isqrt(2**31 - 1) + 2`` = 46342 (for ``var = 0`` the divisor is 1 and the quotient 0).
    """
    from intvit.rtl.layernorm import NEWTON_QUOTIENT_BITS as RTL_BITS
    from intvit.sim.layernorm import NEWTON_QUOTIENT_BITS as SIM_BITS

    # 1: the start bounds isqrt of the largest value of its bit length, hence of every value.
    for bits in range(ISQRT_INPUT_BITS + 1):
        assert 1 << ((bits + 1) >> 1) >= math.isqrt((1 << bits) - 1 if bits else 0), bits
    # 2: the identity behind the AM-GM step, and the step itself on a dense small range.
    s, x = sympy.symbols("s x", integer=True)
    assert sympy.expand(s * s - x * (2 * s - x) - (s - x) ** 2) == 0
    roots = np.arange(0, 1 << 10, dtype=np.int64)[:, None]
    estimates = np.arange(1, 1 << 12, dtype=np.int64)[None, :]
    assert ((estimates + roots * roots // estimates) >> 1 >= roots).all()
    # 3: the bound, and the divider widths that rely on it.
    bound = math.isqrt((1 << ISQRT_INPUT_BITS) - 1) + 2
    assert bound == 46342 and bound < 1 << RTL_BITS and bound < 1 << SIM_BITS
    # Cross-check: Newton as the unit runs it, on the values where var // x peaks (var = s*s + 2 s
    # just below the next square), the squares, and the widest inputs, reaches the bound less one.
    top = np.arange(1, math.isqrt((1 << ISQRT_INPUT_BITS) - 1) + 1, dtype=np.int64)
    var = np.concatenate([top**2 + 2 * top, top**2, top**2 - 1,
                          np.arange((1 << ISQRT_INPUT_BITS) - 4096, 1 << ISQRT_INPUT_BITS)])
    var = var[var < 1 << ISQRT_INPUT_BITS]
    estimate = np.int64(1) << ((np.ceil(np.log2(var + 1)).astype(np.int64) + 1) >> 1)
    worst = 0
    for _ in range(ISQRT_ITERATIONS):
        quotient = var // np.maximum(estimate, 1)
        assert (estimate >= int_sqrt(var)).all()
        worst = max(worst, int(quotient.max()))
        estimate = np.minimum(estimate, (estimate + quotient) >> 1)
    assert (estimate == int_sqrt(var)).all()
    assert bound - 2 <= worst <= bound


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


# ------------------------------------------------------------------------ the INT32-lane kernel
def reference_layernorm(x, gamma, beta, m, s, divisors):
    """The int64 kernel ``_layernorm_rows`` on its own: what ``int_layernorm``'s lane kernel must equal."""
    per_channel = lambda v: np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int64), (x.shape[-1],)))
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty(rows.shape, dtype=np.int8)
    layernorm._layernorm_rows(rows, *map(per_channel, (gamma, beta, m, s)), *divisors, out)
    return out.reshape(x.shape)


def lane_cases(width, rng):
    """Rows of every kind (flat, narrow, wide, extreme, one outlier) and affine parameters of every
    kind: the model's, a bias near INT32's edge (the per-row fallback), output shifts below 32."""
    rows = [random_rows(rng, 40, width, spread) for spread in (0.2, 0.6, 2.0, 20.0, 200.0)]
    rows.append(np.where(rng.integers(2, size=(8, width)) > 0, 127, -128).astype(np.int8))
    rows.append(np.full((4, width), rng.integers(-128, 128), dtype=np.int8))
    outlier = np.zeros((4, width), dtype=np.int8)
    outlier[:, rng.integers(width)] = [1, -1, 127, -128]
    x = np.concatenate(rows + [outlier])
    (gamma, beta, m, s, divisors), _, _ = affine(width, rng)
    yield x, gamma, beta, m, s, divisors
    gamma = rng.integers(-128, 128, width, dtype=np.int8)
    edge = rng.integers((1 << 31) - (1 << 24), 1 << 31, width) * rng.choice([-1, 1], width)
    yield x, gamma, edge.astype(np.int32), m, s, divisors
    short = rng.integers(1, 32, width).astype(np.int8)
    yield x, gamma, beta, m, short, divisors


@pytest.mark.parametrize("width", [1, 2, 7, 192, 768, MAX_WIDTH])
def test_lane_kernel_equals_the_int64_kernel(width):
    rng = np.random.default_rng(width)
    for case, (x, gamma, beta, m, s, divisors) in enumerate(lane_cases(width, rng)):
        expected = reference_layernorm(x, gamma, beta, m, s, divisors)
        assert np.array_equal(int_layernorm(x, gamma, beta, m, s, divisors), expected), case
        assert np.array_equal(int_layernorm(x, gamma, beta, m, s, divisors, cache=True), expected), case


def test_other_divisors_run_the_int64_kernel():
    # Divisors other than layernorm_divisors(D) void the lane kernel's bounds: the int64 one runs.
    rng = np.random.default_rng(3)
    x = random_rows(rng, 50, 64, 30.0)
    (gamma, beta, m, s, divisors), _, _ = affine(64, rng)
    assert layernorm._kernel_operands(64, divisors, gamma, beta, m, s)[0]
    for other in [(divisors[0] >> 1, divisors[1], *divisors[2:]), (*divisors[:2], (1 << 31) - 1, 20)]:
        assert not layernorm._kernel_operands(64, other, gamma, beta, m, s)[0]
        assert np.array_equal(int_layernorm(x, gamma, beta, m, s, other),
                              reference_layernorm(x, gamma, beta, m, s, other))
