"""Integer-only softmax: I-BERT's polynomial exp with ln2 range reduction, in fixed point.

Input: INT32 scores in Q.12 (the requantiser brings Q.K^T accumulators there), one row
per query along the last axis. Output: INT8 probabilities in Q.7 (scale 2**-7).

Per row:
  1. ``d = x - max(x)``                        (<= 0)
  2. ``e = int_exp(d)``                        Q.12, 0 <= e <= 4096
  3. ``total = sum(e)``;  ``recip = 2**30 // total``   (one division per row)
  4. ``p = sat8(round(e * recip / 2**23))``    Q.7

``int_exp`` writes ``-d = q*LN2 + rem`` (q by a multiply-shift that equals floor
division on the clamped range), evaluates ``exp(-rem)`` by the second-order polynomial
``A*(r + B)**2 + C`` on ``r in (-ln2, 0]``, capped at 1.0, and shifts right by ``q``,
rounding half up.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from intvit.quant.requant import (INT8_MAX, INT32_MIN, add32, as_rows, mul32, round_shift, run_parallel, shr32, sub32,
                                  unary_operand, unary_result)

__all__ = [
    "SOFTMAX_INPUT_FRAC_BITS", "SOFTMAX_OUTPUT_FRAC_BITS", "EXP_LN2", "EXP_POLY_A", "EXP_POLY_A_SHIFT",
    "EXP_POLY_B", "EXP_POLY_C", "EXP_N_MAX", "EXP_DIV_MULT", "EXP_DIV_SHIFT", "SOFTMAX_RECIP_BITS",
    "exp_value", "exp_lane", "int_exp", "int_softmax", "softmax_row", "softmax_row_lanes",
]

SOFTMAX_INPUT_FRAC_BITS = 12                   # Q.12 scores: 1/4096 resolution, +-2**19 range
SOFTMAX_OUTPUT_FRAC_BITS = 7                   # INT8 probabilities, 1.0 saturates to 127/128
ONE = 1 << SOFTMAX_INPUT_FRAC_BITS
EXP_LN2 = round(math.log(2) * ONE)             # 2839
# exp(r) ~ 0.3585 * (r + 1.353)**2 + 0.344 on (-ln2, 0] (I-BERT, Kim et al. 2021)
EXP_POLY_A_SHIFT = 14
EXP_POLY_A = round(0.3585 * (1 << EXP_POLY_A_SHIFT))
EXP_POLY_B = round(1.353 * ONE)
EXP_POLY_C = round(0.344 * ONE)
# exp(x) < 2**-13 for x < -16 ln2: every such input gives 0, so clamp -d to 16*LN2 - 1
EXP_N_MAX = 16 * EXP_LN2 - 1
# q = floor(n / LN2) for 0 <= n <= EXP_N_MAX as (n * EXP_DIV_MULT) >> EXP_DIV_SHIFT
EXP_DIV_SHIFT = 28
EXP_DIV_MULT = -(-(1 << EXP_DIV_SHIFT) // EXP_LN2)
SOFTMAX_RECIP_BITS = 30


@njit(cache=True)
def exp_value(d):
    """``exp(d / 2**12)`` in Q.12 for one integer ``d <= 0``."""
    n = min(-d, EXP_N_MAX)
    q = (n * EXP_DIV_MULT) >> EXP_DIV_SHIFT
    r = q * EXP_LN2 - n                                  # in (-LN2, 0]
    s = r + EXP_POLY_B
    poly = (((s * s) >> SOFTMAX_INPUT_FRAC_BITS) * EXP_POLY_A >> EXP_POLY_A_SHIFT) + EXP_POLY_C
    poly = min(poly, ONE)                                # exp(r) <= 1: keeps e monotonic across q steps
    return (poly + ((1 << q) >> 1)) >> q                 # rounded: a floor would bias row sums low


@njit(cache=True, inline="always")
def exp_lane(n):
    """``exp_value(-n)`` for ``0 <= n <= EXP_N_MAX`` (INT32), in INT32 lanes.

    On that range ``n * EXP_DIV_MULT < 2**33`` is a 32 x 32 -> 64 multiply whose bits 28..59
    give ``q <= 15``; ``r + EXP_POLY_B <= 5542`` squares below 2**25, ``(s*s >> 12) * A < 2**26``,
    and ``poly + 2**q`` below 2**13: every other step fits INT32.
    """
    q = np.int32((np.int64(n) * EXP_DIV_MULT) >> EXP_DIV_SHIFT)
    s = add32(sub32(mul32(q, EXP_LN2), n), EXP_POLY_B)
    poly = add32(shr32(mul32(shr32(mul32(s, s), SOFTMAX_INPUT_FRAC_BITS), EXP_POLY_A), EXP_POLY_A_SHIFT), EXP_POLY_C)
    poly = min(poly, np.int32(ONE))
    return shr32(add32(poly, shr32(np.int32(1) << q, 1)), q)


@njit(cache=True, inline="always")
def softmax_row_lanes(x, e, out):
    """``softmax_row`` of INT32 scores ``x``, in INT32 lanes; ``e`` an INT32 buffer of the row's length.

    ``n = peak - max(x, floor)`` with ``floor = max(peak - EXP_N_MAX, INT32_MIN)`` is
    ``min(peak - x, EXP_N_MAX)`` without leaving INT32. The total of at most 4096 per element
    is summed in int64; ``e * recip <= 4096 * 2**30 // total <= 2**30`` since ``total >= e``.
    """
    length = x.shape[0]
    peak = x[0]
    for j in range(1, length):
        peak = max(peak, x[j])
    floor = np.int32(max(np.int64(peak) - EXP_N_MAX, INT32_MIN))
    total = np.int64(0)
    for j in range(length):
        e[j] = exp_lane(sub32(peak, max(x[j], floor)))
        total += e[j]
    recip = np.int32((np.int64(1) << SOFTMAX_RECIP_BITS) // total)
    shift = SOFTMAX_RECIP_BITS - SOFTMAX_OUTPUT_FRAC_BITS
    for j in range(length):
        out[j] = min(shr32(add32(shr32(mul32(e[j], recip), shift - 1), 1), 1), np.int32(INT8_MAX))


@njit(cache=True)
def _exp_flat(d, out):
    for i in range(d.size):
        out[i] = exp_value(d[i])


def int_exp(d: np.ndarray) -> np.ndarray:
    """``exp(d / 2**12)`` in Q.12 for integer ``d <= 0``; int32 result in [0, 4096]."""
    flat = unary_operand(d)
    out = np.empty(flat.size, dtype=np.int32)
    _exp_flat(flat, out)
    return unary_result(out, d)


@njit(cache=True)
def softmax_row(x, e, out):
    """Softmax of one row of integer Q.12 scores ``x`` into the INT8 row ``out``.

    ``e`` is an int64 buffer of the row's length (the row's exponentials); the fused
    matmul epilogue (``quant.fused``) calls this on rows it has just requantised.
    """
    length = x.shape[0]
    peak = np.int64(x[0])
    for j in range(1, length):
        peak = max(peak, np.int64(x[j]))
    total = np.int64(0)                                  # >= 4096: the max element contributes exp(0)
    for j in range(length):
        e[j] = exp_value(np.int64(x[j]) - peak)
        total += e[j]
    recip = (np.int64(1) << SOFTMAX_RECIP_BITS) // total
    for j in range(length):
        p = round_shift(e[j] * recip, SOFTMAX_RECIP_BITS - SOFTMAX_OUTPUT_FRAC_BITS)
        out[j] = min(p, INT8_MAX)


@njit(parallel=True, cache=True)
def _softmax_rows(x, out):
    # x (rows, L) integer Q.12, out (rows, L) int8; one row per thread, e kept in a row buffer.
    for i in prange(x.shape[0]):
        softmax_row(x[i], np.empty(x.shape[1], dtype=np.int64), out[i])


def int_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of Q.12 INT32 scores; INT8 Q.7 probabilities."""
    x = np.asarray(x)
    rows = np.ascontiguousarray(as_rows(x))
    out = np.empty(rows.shape, dtype=np.int8)
    run_parallel(_softmax_rows, rows.size, rows, out)
    return out.reshape(x.shape)
