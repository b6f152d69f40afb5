"""Integer-only GELU: ``x * (1 + erf(x / sqrt 2)) / 2`` with I-BERT's second-order erf.

Input: INT32 in Q.10, already saturated by the requantiser to 17 bits (|x| < 64).
Output: INT32 in Q.21 (scale 2**-21: the product of two Q.10 terms and the 1/2).

``erf(x/sqrt 2) ~ sign(x) * (1 - A * (CLIP - min(|x|, CLIP))**2)`` with I-BERT's
``a = -0.2888, b = -1.769`` folded for the ``1/sqrt 2``: ``A = 0.2888 / 2``,
``CLIP = 1.769 * sqrt 2``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from intvit.quant.requant import add32, mul32, shr32, sub32, unary_operand, unary_result

__all__ = [
    "GELU_INPUT_FRAC_BITS", "GELU_INPUT_BITS", "GELU_OUTPUT_FRAC_BITS",
    "ERF_CLIP", "ERF_POLY_A", "ERF_POLY_A_SHIFT", "erf_value", "gelu_value", "gelu_lane", "int_erf", "int_gelu",
]

GELU_INPUT_FRAC_BITS = 10
GELU_INPUT_BITS = 17                          # |x| < 64.0 in Q.10: GELU(x) = x beyond a handful
GELU_OUTPUT_FRAC_BITS = 2 * GELU_INPUT_FRAC_BITS + 1
ONE = 1 << GELU_INPUT_FRAC_BITS
ERF_CLIP = round(1.769 * math.sqrt(2) * ONE)  # 2562
ERF_POLY_A_SHIFT = 14
ERF_POLY_A = round(0.2888 / 2 * (1 << ERF_POLY_A_SHIFT))


@njit(cache=True)
def erf_value(x):
    """``erf(x / sqrt 2)`` in Q.10 for one Q.10 integer."""
    gap = ERF_CLIP - min(abs(x), ERF_CLIP)
    square = (gap * gap) >> GELU_INPUT_FRAC_BITS
    magnitude = ONE - ((square * ERF_POLY_A) >> ERF_POLY_A_SHIFT)
    return magnitude if x > 0 else -magnitude if x < 0 else 0


@njit(cache=True)
def gelu_value(x):
    """GELU of one Q.10 integer (17-bit range), in Q.21."""
    return x * (ONE + erf_value(x))


@njit(cache=True, inline="always")
def gelu_lane(x):
    """``np.int32(gelu_value(x))`` (the INT32 store of GELU) for INT32 ``|x| < 2**31``, in INT32 lanes.

    Every intermediate fits INT32: ``gap <= ERF_CLIP``, ``gap**2 < 2**23``, ``square * A < 2**24``;
    the final product wraps exactly as the INT32 store of the 64-bit one does. The fused MLP
    epilogue (``quant.fused``) calls it on requantised inputs of at most 31 bits.
    """
    gap = sub32(ERF_CLIP, min(abs(x), ERF_CLIP))
    magnitude = sub32(ONE, shr32(mul32(shr32(mul32(gap, gap), GELU_INPUT_FRAC_BITS), ERF_POLY_A), ERF_POLY_A_SHIFT))
    erf = magnitude if x > 0 else sub32(0, magnitude) if x < 0 else np.int32(0)
    return mul32(x, add32(ONE, erf))


# One pass over the flat operand, compiled per operand dtype on first use; the int32 store
# wraps as numpy's astype(int32) does.
@njit(cache=True)
def _erf_flat(x, out):
    for i in range(x.size):
        out[i] = erf_value(x[i])


@njit(cache=True)
def _gelu_flat(x, out):
    for i in range(x.size):
        out[i] = gelu_value(x[i])


def int_erf(x: np.ndarray) -> np.ndarray:
    """``erf(x / sqrt 2)`` in Q.10 for Q.10 input; int32 in [-1024, 1024]."""
    flat = unary_operand(x)
    out = np.empty(flat.size, dtype=np.int32)
    _erf_flat(flat, out)
    return unary_result(out, x)


def int_gelu(x: np.ndarray) -> np.ndarray:
    """GELU of Q.10 INT32 input (17-bit range); INT32 result in Q.21."""
    flat = unary_operand(x)
    out = np.empty(flat.size, dtype=np.int32)
    _gelu_flat(flat, out)
    return unary_result(out, x)
