"""Integer-only LayerNorm over the last axis of INT8 tokens, in the manner of I-BERT.

Per row of D INT8 values ``x`` (the residual stream):
  1. ``mean = requant(sum(x), 2**6 / D)``               Q.6, a dyadic multiply, no divider
  2. ``c = x * 2**6 - mean``                            Q.6, |c| <= 255 * 64
  3. ``var = requant(sum((c*c + 128) >> 8), 2**12 / D)`` variance in Q.16; squares kept in Q.4
                                                        so a row of 2064 fits the INT32 sum
  4. ``std = max(int_sqrt(var), 1)``                    standard deviation in Q.8 (Newton)
  5. ``recip = 2**30 // std``                           the one division per row
  6. ``y = requant(c, recip, 2**-18)``                  c / std in Q.10
  7. ``z = y * gamma + beta``                           INT8 gamma, INT32 beta, per channel
  8. ``out = requant(z, out_multiplier, out_shift)``    per channel, to INT8

The mean keeps 6 fraction bits because the residual stream is INT8: a token whose values
spread over a few LSBs would otherwise be shifted by up to half an LSB, a large part of
its standard deviation. ``int_sqrt`` is Newton's iteration ``x <- (x + n // x) // 2`` from ``2**ceil(bits/2)``
(>= sqrt n, so it falls monotonically onto floor(sqrt n)), a fixed
``ISQRT_ITERATIONS`` times so hardware can unroll or sequence it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from intvit.quant.errors import IntVitError
from intvit.quant.requant import (INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, add32, as_rows, derived, dyadic, lane_scale,
                                  mul32, requantize_lane, requantize_value, round_shift, run_parallel, shr32, sub32,
                                  unary_operand, unary_result)

__all__ = [
    "LN_MEAN_FRAC_BITS", "LN_SQUARE_SHIFT", "LN_STD_FRAC_BITS", "LN_NORM_FRAC_BITS", "LN_RECIP_BITS",
    "ISQRT_INPUT_BITS", "ISQRT_ITERATIONS",
    "sqrt_value", "int_sqrt", "layernorm_divisors", "int_layernorm",
]

LN_MEAN_FRAC_BITS = 6       # mean and centred values in Q.6
LN_SQUARE_SHIFT = 8         # squares summed in Q.4 (from Q.12), rounded
LN_STD_FRAC_BITS = 8        # std in Q.8: small spreads keep precision, var in Q.16 still fits 31 bits
LN_NORM_FRAC_BITS = 10      # normalised values in Q.10
LN_RECIP_BITS = 30
LN_NORM_SHIFT = LN_RECIP_BITS - LN_STD_FRAC_BITS - LN_NORM_FRAC_BITS + LN_MEAN_FRAC_BITS
ISQRT_INPUT_BITS = 31
ISQRT_ITERATIONS = 5        # enough from a start within 2x of the root for 31-bit inputs (tested exhaustively)
MAX_CENTRED = 255 << LN_MEAN_FRAC_BITS
MAX_SQUARE = (MAX_CENTRED**2 + (1 << (LN_SQUARE_SHIFT - 1))) >> LN_SQUARE_SHIFT


@njit(cache=True)
def sqrt_value(n):
    """``floor(sqrt(n))`` for one integer ``0 <= n < 2**31``, by fixed-count Newton iteration."""
    bits = 0
    while (n >> bits) > 0:
        bits += 1
    x = np.int64(1) << ((bits + 1) >> 1)                 # >= sqrt(n)
    for _ in range(ISQRT_ITERATIONS):
        x = min(x, (x + n // max(x, 1)) >> 1)
    return x


@njit(cache=True)
def _sqrt_flat(n, out):
    for i in range(n.size):
        out[i] = sqrt_value(n[i])


def int_sqrt(n: np.ndarray) -> np.ndarray:
    """``floor(sqrt(n))`` for integer ``0 <= n < 2**31``, element-wise; int64 result."""
    flat = unary_operand(n)
    out = np.empty(flat.size, dtype=np.int64)
    _sqrt_flat(flat, out)
    return unary_result(out, n)


def layernorm_divisors(width: int) -> tuple[int, int, int, int]:
    """Dyadic ``(mean_multiplier, mean_shift, var_multiplier, var_shift)`` for a row of ``width``.

    Computed once at quantisation time; they turn the two divisions by D into multiplies.
    """
    if width * MAX_SQUARE > INT32_MAX:
        raise IntVitError(f"LayerNorm width {width} is too large for an INT32 sum of squares")
    mean_m, mean_s = dyadic(2.0**LN_MEAN_FRAC_BITS / width)
    var_m, var_s = dyadic(2.0 ** (2 * LN_STD_FRAC_BITS + LN_SQUARE_SHIFT - 2 * LN_MEAN_FRAC_BITS) / width)
    return int(mean_m), int(mean_s), int(var_m), int(var_s)


def int_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                  out_multiplier: np.ndarray, out_shift: np.ndarray,
                  divisors: tuple[int, int, int, int], *, cache: bool = False) -> np.ndarray:
    """LayerNorm of INT8 rows (last axis) to INT8.

    Parameters
    ----------
    x : int8 array (..., D)
    gamma : int8 (D,), beta : int32 (D,)
        Affine weight and bias on the scales ``s_gamma`` and ``s_gamma * 2**-10``.
    out_multiplier, out_shift : integer arrays (D,)
        Dyadic form of ``s_gamma * 2**-10 / s_out`` per channel.
    divisors : from ``layernorm_divisors(D)``
    cache : bool
        ``gamma``, ``beta`` and the output scale are a program's constants: their kernel operands
        are made once (``quant.requant.derived``) and the arrays made read-only.
    """
    x = np.asarray(x)
    rows = np.ascontiguousarray(as_rows(x))
    width = rows.shape[1]
    parameters = (gamma, beta, out_multiplier, out_shift)
    make = lambda: _kernel_operands(width, tuple(int(v) for v in divisors), *parameters)
    lanes, operands = derived(f"layernorm {width} {divisors}", parameters, make) if cache else make()
    out = np.empty(rows.shape, dtype=np.int8)
    if lanes and rows.dtype == np.int8:
        run_parallel(_layernorm_lanes, rows.size, rows, *operands, out)
    else:
        run_parallel(_layernorm_rows, rows.size, rows, *operands[:8], out)
    return out.reshape(x.shape)


def _kernel_operands(width: int, divisors: tuple, *parameters) -> tuple[bool, tuple]:
    # (whether the lane kernel may run, its operands); the first eight are ``_layernorm_rows``'s.
    gamma, beta, multiplier, shift = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int64), (width,)))
                                      for v in parameters)
    if not _lanes_hold(width, divisors, gamma, beta):
        return False, (gamma, beta, multiplier, shift, *divisors)
    lanes = lane_scale(multiplier, shift, width)
    return True, (gamma.astype(np.int32), beta.astype(np.int32), multiplier, shift, *divisors, lanes is not None,
                  *(lanes or (np.zeros(width, np.int32),) * 2), *(int(np.abs(v).max(initial=0)) for v in (gamma, beta)))


def _lanes_hold(width: int, divisors: tuple, gamma: np.ndarray, beta: np.ndarray) -> bool:
    # ``_layernorm_lanes``'s bounds: the divisors of this width (then |mean| <= 128 * 2**6 + 1, so
    # |c| <= 255 * 2**6 + 1 and c*c < 2**31, and the width passed layernorm_divisors' check, so the
    # sum of squares fits INT32), and an affine weight and bias that are INT32 values.
    try:
        if tuple(int(v) for v in divisors) != layernorm_divisors(width):
            return False
    except IntVitError:
        return False
    return all(v.size == 0 or (int(v.min()) >= INT32_MIN and int(v.max()) <= INT32_MAX) for v in (gamma, beta))


# ``_layernorm_rows`` in INT32 lanes where ``_lanes_hold``: the row sums and the centred values and
# their squares in INT32; ``y = round_shift(c * recip, 18)`` from a 32 x 32 -> 64 product, with
# |y| <= 16321 * 2**30 / 2**18 < 2**27, so its INT32 clamp never acts. Where a row's bound on
# ``|z| = |y * gamma + beta|`` (|y| is largest at the largest |c|) fits INT32 and the output scale
# has a lane form (``out_lanes``), the affine step and the output requantiser run in INT32 too
# (``requantize_lane``); otherwise in int64, as in ``_layernorm_rows``.
@njit(parallel=True, cache=True)
def _layernorm_lanes(x, gamma, beta, out_multiplier, out_shift, mean_m, mean_s, var_m, var_s,
                     out_lanes, lane_multiplier, lane_shift, gamma_max, beta_max, out):
    width = x.shape[1]
    for i in prange(x.shape[0]):
        total = np.int32(0)
        for j in range(width):
            total = add32(total, x[i, j])
        mean = np.int32(requantize_value(np.int64(total), mean_m, mean_s, INT32_MIN, INT32_MAX))
        squares = np.int32(0)
        widest = np.int32(0)
        for j in range(width):
            c = sub32(np.int32(x[i, j]) << LN_MEAN_FRAC_BITS, mean)
            squares = add32(squares, shr32(add32(shr32(mul32(c, c), LN_SQUARE_SHIFT - 1), 1), 1))
            widest = max(widest, abs(c))
        var = requantize_value(np.int64(squares), var_m, var_s, INT32_MIN, INT32_MAX)
        recip = np.int32((np.int64(1) << LN_RECIP_BITS) // max(sqrt_value(var), 1))
        bound = round_shift(np.int64(widest) * recip, LN_NORM_SHIFT) * gamma_max + beta_max
        if out_lanes and bound <= INT32_MAX:
            for j in range(width):
                c = sub32(np.int32(x[i, j]) << LN_MEAN_FRAC_BITS, mean)
                y = shr32(add32(np.int32((np.int64(c) * np.int64(recip)) >> (LN_NORM_SHIFT - 1)), 1), 1)
                out[i, j] = requantize_lane(add32(mul32(y, gamma[j]), beta[j]), lane_multiplier[j], lane_shift[j],
                                            INT8_MIN, INT8_MAX)
        else:
            for j in range(width):
                c = sub32(np.int32(x[i, j]) << LN_MEAN_FRAC_BITS, mean)
                y = shr32(add32(np.int32((np.int64(c) * np.int64(recip)) >> (LN_NORM_SHIFT - 1)), 1), 1)
                z = np.int64(y) * np.int64(gamma[j]) + beta[j]
                out[i, j] = requantize_value(z, out_multiplier[j], out_shift[j], INT8_MIN, INT8_MAX)


@njit(parallel=True, cache=True)
def _layernorm_rows(x, gamma, beta, out_multiplier, out_shift, mean_m, mean_s, var_m, var_s, out):
    width = x.shape[1]
    for i in prange(x.shape[0]):
        total = np.int64(0)
        for j in range(width):
            total += x[i, j]
        mean = requantize_value(total, mean_m, mean_s, INT32_MIN, INT32_MAX)
        squares = np.int64(0)
        for j in range(width):
            c = (np.int64(x[i, j]) << LN_MEAN_FRAC_BITS) - mean
            squares += round_shift(c * c, LN_SQUARE_SHIFT)
        var = requantize_value(squares, var_m, var_s, INT32_MIN, INT32_MAX)
        recip = (np.int64(1) << LN_RECIP_BITS) // max(sqrt_value(var), 1)
        for j in range(width):
            c = (np.int64(x[i, j]) << LN_MEAN_FRAC_BITS) - mean
            y = requantize_value(c, recip, LN_NORM_SHIFT, INT32_MIN, INT32_MAX)
            z = y * gamma[j] + beta[j]
            out[i, j] = requantize_value(z, out_multiplier[j], out_shift[j], INT8_MIN, INT8_MAX)
