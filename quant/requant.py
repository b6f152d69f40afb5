"""Dyadic requantisation: the one rounding rule every unit shares.

A real scale ``s`` is carried as an integer pair ``(multiplier, shift)`` with
``s ~= multiplier / 2**shift`` and ``2**30 <= multiplier < 2**31`` (31 significant bits).
Applying it to an integer ``x`` is a 32 x 32 -> 64 bit product, a rounding right shift
(round half up, i.e. towards +inf on ties) and a saturation to a signed ``bits``-bit range:

    y = saturate((x * multiplier + 2**(shift - 1)) >> shift, bits)

This is exactly what ``rtl.requant.Requantiser`` computes. Saturation is on purpose
and counted (see ``saturation_count``), never a silent wrap-around.
"""

from __future__ import annotations

import math

import numpy as np

from quant.errors import IntVitError

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX", "MULTIPLIER_BITS", "MAX_SHIFT",
    "int_range", "saturate", "rounding_shift", "dyadic", "dyadic_value",
    "requantize", "int_add", "add_multipliers",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MULTIPLIER_BITS = 31          # multiplier is a positive INT32: [2**30, 2**31)
MAX_SHIFT = 62                # keeps the rounding constant and the product inside int64
ADD_MULTIPLIER_BITS = 22      # residual-add multipliers leave 9 bits for the INT8 operands


def int_range(bits: int) -> tuple[int, int]:
    """Inclusive range of a signed ``bits``-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(x: np.ndarray, bits: int) -> np.ndarray:
    """Clamp to the signed ``bits``-bit range and return the narrowest numpy dtype that holds it."""
    lo, hi = int_range(bits)
    dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64
    return np.clip(x, lo, hi).astype(dtype)


def rounding_shift(x: np.ndarray, shift) -> np.ndarray:
    """``(x + 2**(shift-1)) >> shift`` on int64: arithmetic shift, ties round towards +inf."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (x + (np.int64(1) << (shift - 1))) >> shift


def dyadic(scale, bits: int = MULTIPLIER_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``(multiplier, shift)`` with ``multiplier / 2**shift`` nearest to ``scale``.

    Computed once, at quantisation time, for a scalar or an array of positive scales;
    the multiplier has ``bits`` significant bits (``2**(bits-1) <= m < 2**bits``).
    """
    scale = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise IntVitError(f"requantisation scale must be positive and finite, got {scale.min()!r}")
    mantissa, exponent = np.frexp(scale)                     # scale = mantissa * 2**exponent, 0.5 <= m < 1
    multiplier = np.round(mantissa * (1 << bits)).astype(np.int64)
    shift = (bits - exponent).astype(np.int64)
    carry = multiplier == (1 << bits)                        # mantissa rounded up to 1.0
    multiplier = np.where(carry, multiplier >> 1, multiplier)
    shift = np.where(carry, shift - 1, shift)
    # A tiny scale: drop low multiplier bits rather than exceed the shifter.
    excess = np.maximum(shift - MAX_SHIFT, 0)
    multiplier = (multiplier + ((np.int64(1) << excess) >> 1)) >> excess
    shift = shift - excess
    if np.any(shift < 1):
        raise IntVitError(f"requantisation scale {float(scale.max()):.3g} is too large for a right shift")
    return multiplier, shift


def dyadic_value(multiplier, shift) -> np.ndarray:
    """The real scale an integer pair stands for (for reports and tests only)."""
    return np.asarray(multiplier, dtype=np.float64) / np.exp2(np.asarray(shift, dtype=np.float64))


def requantize(x: np.ndarray, multiplier, shift, bits: int = 8) -> np.ndarray:
    """Scale an integer tensor by ``multiplier / 2**shift`` and saturate to ``bits`` bits.

    Parameters
    ----------
    x : integer array, |x| < 2**32
    multiplier, shift : int or integer arrays broadcast against ``x``
        (per output channel: shape ``(channels,)``; per row: shape ``(..., 1)``).
    bits : int
        Output width; 8 for INT8 activations, 32 for INT32 fixed-point.
    """
    product = np.asarray(x, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return saturate(rounding_shift(product, shift), bits)


def add_multipliers(scale_a: float, scale_b: float, scale_out: float) -> tuple[int, int, int]:
    """``(m_a, m_b, shift)`` aligning two INT8 scales onto ``scale_out`` with one common shift."""
    ratios = np.array([scale_a / scale_out, scale_b / scale_out])
    shift = ADD_MULTIPLIER_BITS - 1 - math.frexp(float(ratios.max()))[1]
    shift = min(shift, MAX_SHIFT)
    if shift < 1:
        raise IntVitError(f"residual scales {scale_a:.3g}, {scale_b:.3g} are too far above {scale_out:.3g}")
    m_a, m_b = (int(v) for v in np.round(ratios * 2.0**shift))
    return m_a, m_b, shift


def int_add(a: np.ndarray, b: np.ndarray, m_a: int, m_b: int, shift: int) -> np.ndarray:
    """Residual addition of two INT8 tensors on different scales: ``sat8((a*m_a + b*m_b) >> shift)``."""
    total = np.asarray(a, dtype=np.int64) * m_a + np.asarray(b, dtype=np.int64) * m_b
    return saturate(rounding_shift(total, shift), 8)
