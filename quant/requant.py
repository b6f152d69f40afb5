"""Dyadic requantisation: the one rounding rule every unit shares.

A real scale ``s`` is carried as an integer pair ``(multiplier, shift)`` with
``s ~= multiplier / 2**shift`` and ``2**30 <= multiplier < 2**31`` (31 significant bits).
Applying it to an integer ``x`` is a 32 x 32 -> 64 bit product, a rounding right shift
(round half up, i.e. towards +inf on ties) and a saturation to a signed ``bits``-bit range:

    y = saturate((x * multiplier + 2**(shift - 1)) >> shift, bits)

This is exactly what ``rtl.requant.Requantiser`` computes. Saturation is on purpose
and counted (``quant.executor.saturation_counts``), never a silent wrap-around.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from intvit.quant.errors import IntVitError

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX", "MULTIPLIER_BITS", "MIN_SHIFT", "MAX_SHIFT",
    "ADD_MULTIPLIER_BITS", "check_dyadic", "check_add",
    "int_range", "out_dtype", "round_shift", "clamp", "requantize_value", "as_rows", "broadcast_rows", "rounding_shift", "dyadic", "dyadic_value",
    "requantize", "int_add", "add_multipliers", "unary_operand", "unary_result", "PARALLEL_MIN_ELEMENTS",
    "run_parallel", "derived", "add32", "sub32", "mul32", "shr32", "LANE_MIN_SHIFT", "lane_scale", "requantize_lane",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MULTIPLIER_BITS = 31          # multiplier is a positive INT32: [2**30, 2**31)
MIN_SHIFT = 1                 # a rounding shift needs a half to add
MAX_SHIFT = 62                # the shifter's range; products of INT32 x multiplier stay inside int64
ADD_MULTIPLIER_BITS = 22      # residual-add multipliers leave 9 bits for the INT8 operands


def _first_outside(values, lo: int, hi: int):
    """The first element of ``values`` outside ``[lo, hi]`` (Python ints compared exactly), or None."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        values = np.asarray(values, dtype=object)
    bad = (values < lo) | (values > hi)
    return values[bad].flat[0] if np.any(bad) else None


def check_dyadic(multiplier, shift, what: str) -> None:
    """Raise unless every ``(multiplier, shift)`` pair is one that ``dyadic`` produces.

    The bounds the quantiser guarantees and the requantiser's datapath assumes: ``shift`` in
    [MIN_SHIFT, MAX_SHIFT]; ``multiplier`` a 31-bit integer with its top bit set
    (``2**30 <= m < 2**31``), fewer significant bits (down to 0) only at ``MAX_SHIFT``,
    where ``dyadic`` drops bits of a tiny scale.
    ``multiplier`` and ``shift`` are integers or integer arrays of one shape.
    """
    bad = _first_outside(shift, MIN_SHIFT, MAX_SHIFT)
    if bad is not None:
        raise IntVitError(f"{what}: shift must be in [{MIN_SHIFT}, {MAX_SHIFT}], not {bad}")
    bad = _first_outside(multiplier, 0, (1 << MULTIPLIER_BITS) - 1)
    if bad is not None:
        raise IntVitError(f"{what}: multiplier must be in [0, 2**{MULTIPLIER_BITS}), not {bad}")
    multiplier, shift = np.broadcast_arrays(np.asarray(multiplier, dtype=np.int64), np.asarray(shift, dtype=np.int64))
    short = (multiplier < (1 << (MULTIPLIER_BITS - 1))) & (shift < MAX_SHIFT)
    if np.any(short):
        raise IntVitError(f"{what}: multiplier {int(multiplier[short].flat[0])} has fewer than {MULTIPLIER_BITS} "
                          f"significant bits at shift {int(shift[short].flat[0])} (only shift {MAX_SHIFT} allows it)")


def check_add(m_a, m_b, shift, what: str) -> None:
    """Raise unless ``(m_a, m_b, shift)`` is a triple that ``add_multipliers`` produces.

    Both multipliers in [0, 2**ADD_MULTIPLIER_BITS), the larger at least
    ``2**(ADD_MULTIPLIER_BITS - 2)`` (smaller only at ``MAX_SHIFT``), ``shift`` in
    [MIN_SHIFT, MAX_SHIFT]: so ``a*m_a + b*m_b`` of two INT8 values fits 31 bits.
    """
    if _first_outside(shift, MIN_SHIFT, MAX_SHIFT) is not None:
        raise IntVitError(f"{what}: shift must be in [{MIN_SHIFT}, {MAX_SHIFT}], not {shift}")
    for name, value in (("m_a", m_a), ("m_b", m_b)):
        if _first_outside(value, 0, (1 << ADD_MULTIPLIER_BITS) - 1) is not None:
            raise IntVitError(f"{what}: {name} must be in [0, 2**{ADD_MULTIPLIER_BITS}), not {value}")
    if max(m_a, m_b) < 1 << (ADD_MULTIPLIER_BITS - 2) and shift < MAX_SHIFT:
        raise IntVitError(f"{what}: the larger multiplier {max(m_a, m_b)} is below 2**{ADD_MULTIPLIER_BITS - 2} "
                          f"at shift {shift} (only shift {MAX_SHIFT} allows it)")


def int_range(bits: int) -> tuple[int, int]:
    """Inclusive range of a signed ``bits``-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def out_dtype(bits: int) -> np.dtype:
    """Narrowest numpy integer dtype that holds a signed ``bits``-bit value."""
    return np.dtype(np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64)


@njit(cache=True)
def round_shift(x, shift):
    """``(x + 2**(shift-1)) >> shift`` for ``shift >= 1``: ties towards +inf.

    Written as ``((x >> (shift-1)) + 1) >> 1``, which is equal and cannot overflow the sum.
    """
    return ((x >> (shift - 1)) + 1) >> 1


@njit(cache=True)
def clamp(x, lo, hi):
    return min(max(x, lo), hi)


@njit(cache=True)
def requantize_value(x, multiplier, shift, lo, hi):
    """One element of ``requantize``: the requantiser's product, rounding shift and saturation."""
    return clamp(round_shift(x * multiplier, shift), lo, hi)


# Forms derived from a program's constant arrays (float32 weights, lane scales), made once per array
# object: converting DeiT-Tiny's 5.7M weights to float32 on every pass cost ~2 ms of a ~30 ms
# batch-1 pass. Arrays are not hashable, so entries are keyed by id and dropped when an array dies;
# the arrays are made read-only, so a later write through them raises instead of leaving a stale
# form. Callers use it for a program's constants only (the executor), never for views of memory
# that other code writes.
_DERIVED: dict[tuple, tuple[tuple, object]] = {}


def derived(tag: str, arrays: tuple, make: Callable[[], object]) -> object:
    """``make()``, computed once for this ``tag`` and these array objects while they live.

    If anything in ``arrays`` is not a numpy array (a Python int scale), nothing is cached:
    ``make()`` runs every call. Cached arrays are made read-only.
    """
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return make()
    key = (tag, *map(id, arrays))
    entry = _DERIVED.get(key)
    if entry is not None and all(ref() is a for ref, a in zip(entry[0], arrays)):
        return entry[1]
    value = make()
    for a in arrays:
        a.flags.writeable = False
    drop = lambda _, key=key, entries=_DERIVED: entries.pop(key, None)   # safe at interpreter exit too
    _DERIVED[key] = (tuple(weakref.ref(a, drop) for a in arrays), value)
    return value


# 32-bit integer arithmetic for kernels whose operands and results provably fit INT32 (each
# caller states the bound). numba widens every integer operation to int64, and LLVM cannot narrow
# it back where a shift or compare follows; int64 lanes take two AVX2 registers for 8 values and a
# 64-bit multiply has no AVX2 instruction, so these keep the vectorised loops at 8 lanes.
def _int32_operation(operation: str):
    @intrinsic
    def kernel(typingctx, a, b):
        if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            x, y = (context.cast(builder, v, t, types.int32) for v, t in zip(args, signature.args))
            return getattr(builder, operation)(x, y)
        return types.int32(a, b), codegen
    return kernel


add32, sub32, mul32 = _int32_operation("add"), _int32_operation("sub"), _int32_operation("mul")
shr32 = _int32_operation("ashr")         # arithmetic; the shift must be in [0, 31]

# ``requantize_lane`` takes shifts from this one up: the product shifted right by 31 (its bits
# 31..62) fits INT32, and the rest of the rounding shift runs in INT32.
LANE_MIN_SHIFT = 32


def lane_scale(multiplier, shift, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A requant scale as ``requantize_lane``'s per-channel operands, or None when it has no such form.

    Returns contiguous INT32 ``(multiplier, shift - LANE_MIN_SHIFT)`` of ``channels`` entries from
    ``multiplier`` and ``shift`` given one per channel or one for all; None unless every shift is in
    [LANE_MIN_SHIFT, MAX_SHIFT] and every multiplier in [0, 2**31).
    """
    multiplier, shift = (np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (channels,))
                         for v in (multiplier, shift))
    if channels and (int(shift.min()) < LANE_MIN_SHIFT or int(shift.max()) > MAX_SHIFT
                     or int(multiplier.min()) < 0 or int(multiplier.max()) >= 1 << MULTIPLIER_BITS):
        return None
    return (np.ascontiguousarray(multiplier, dtype=np.int32),
            np.ascontiguousarray(shift - LANE_MIN_SHIFT, dtype=np.int32))


@njit(cache=True, inline="always")
def requantize_lane(x, multiplier, shift32, lo, hi):
    """``requantize_value(x, multiplier, shift32 + 32, lo, hi)`` for INT32 ``x``, in INT32 lanes.

    ``multiplier`` in [0, 2**31) and ``shift32`` in [0, 30] come from ``lane_scale``; ``lo, hi``
    lie within INT32. ``round_shift(p, s) = ((p >> (s - 1)) + 1) >> 1`` and
    ``p >> (s - 1) = (p >> 31) >> (s - 32)`` (floors of floors); ``|p| < 2**62``, so ``p >> 31``
    fits INT32, and the 32 x 32 -> 64 product is one ``vpmuldq`` on AVX2.
    """
    high = np.int32((np.int64(x) * np.int64(multiplier)) >> (LANE_MIN_SHIFT - 1))
    y = shr32(add32(shr32(high, shift32), 1), 1)
    return min(max(y, np.int32(lo)), np.int32(hi))


# Operand dtypes of the element-wise kernels of the other modules, narrowest first.
_UNARY_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def unary_operand(x) -> np.ndarray:
    """``x`` as a flat array of the narrowest of ``_UNARY_DTYPES`` that holds its dtype exactly.

    The kernels are compiled per operand dtype on first use (and cached on disk), so importing
    a kernel module compiles nothing. The dtype is picked as numpy picks a ufunc loop (the first
    safe cast), so a kernel sees an int8 operand as int8, as the hardware's narrow input does.
    """
    x = np.asarray(x)
    for dtype in _UNARY_DTYPES:
        if np.can_cast(x.dtype, dtype):
            return np.ravel(x.astype(dtype, copy=False))
    raise TypeError(f"integer kernels take signed integers up to 64 bits, not {x.dtype}")


def unary_result(flat: np.ndarray, x):
    """``flat`` in the shape of ``x``: a numpy scalar for a scalar ``x``, as a ufunc returns."""
    shape = np.shape(x)
    return flat.reshape(shape) if shape else flat[0]


# Below this many elements a ``parallel=True`` kernel runs on one thread. Waking a second thread
# costs more than it saves on so little work (~1 ns an element), and when other jobs share the
# cores a descheduled worker stalls the call for a time slice: measured ~20 ms a call on a loaded
# 2-core machine, against 0.3 ms of work for 600,000 elements on one thread.
PARALLEL_MIN_ELEMENTS = 1 << 20


def _thread_controls():
    # numba's public get/set_num_threads take two locks each time (5 us a call, ~600 calls a
    # DeiT-Tiny pass); once the pool is up, the threading layer's own getter and setter are what
    # they call. Both public ones are kept where a numba release lacks those attributes.
    numba.get_num_threads()                                     # launches the pool
    layer = numba.np.ufunc.parallel
    get, set_ = getattr(layer, "_get_num_threads", None), getattr(layer, "_set_num_threads", None)
    return (get, set_) if callable(get) and callable(set_) else (numba.get_num_threads, numba.set_num_threads)


_THREADS: list = []


def run_parallel(kernel, elements: int, *args):
    """``kernel(*args)``, on one numba thread when ``elements`` is below ``PARALLEL_MIN_ELEMENTS``."""
    if not _THREADS:
        _THREADS.extend(_thread_controls())
    get_threads, set_threads = _THREADS
    threads = get_threads()
    if elements >= PARALLEL_MIN_ELEMENTS or threads == 1:
        return kernel(*args)
    set_threads(1)
    try:
        return kernel(*args)
    finally:
        set_threads(threads)


# Element-wise kernels run over rows of the broadcast operands in parallel, writing the
# narrow output directly: one pass, no int64 temporaries.
@njit(parallel=True, cache=True)
def _requantize_rows(x, multiplier, shift, lo, hi, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = requantize_value(np.int64(x[i, j]), np.int64(multiplier[i, j]), np.int64(shift[i, j]),
                                         lo, hi)


# The same loop where the scale is one per channel (last axis) or one for all: the scale is read
# from a short contiguous vector instead of a broadcast 2-D view, about 12x less CPU.
@njit(parallel=True, cache=True)
def _requantize_channels(x, multiplier, shift, lo, hi, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = requantize_value(np.int64(x[i, j]), multiplier[j], shift[j], lo, hi)


@njit(parallel=True, cache=True)
def _add_rows(a, b, m_a, m_b, shift, out):
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = clamp(round_shift(np.int64(a[i, j]) * m_a + np.int64(b[i, j]) * m_b, shift),
                              INT8_MIN, INT8_MAX)


def as_rows(a: np.ndarray) -> np.ndarray:
    """``a`` folded to 2-D ``(rows, last axis)``, a view where numpy can."""
    return a.reshape(-1, a.shape[-1] if a.ndim else 1)


def broadcast_rows(shape: tuple[int, ...], *operands) -> list[np.ndarray]:
    """Read-only views of the operands broadcast to ``shape``, folded by ``as_rows``."""
    return [as_rows(np.broadcast_to(np.asarray(v), shape)) for v in operands]


def rounding_shift(x: np.ndarray, shift) -> np.ndarray:
    """Element-wise ``round_shift`` on int64 (``shift`` broadcast against ``x``, >= 1)."""
    return (np.asarray(x, dtype=np.int64) >> (np.asarray(shift, dtype=np.int64) - 1)) + 1 >> 1


def dyadic(scale, bits: int = MULTIPLIER_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``(multiplier, shift)`` with ``multiplier / 2**shift`` nearest to ``scale``.

    Computed once, at quantisation time, for a scalar or an array of positive scales;
    the multiplier has ``bits`` significant bits (``2**(bits-1) <= m < 2**bits``).
    """
    scale = np.asarray(scale, dtype=np.float64)
    bad = ~(np.isfinite(scale) & (scale > 0))
    if bad.any():
        raise IntVitError(f"requantisation scale must be positive and finite, got {float(scale[bad].flat[0])}")
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
    if np.any(shift < MIN_SHIFT):
        raise IntVitError(f"requantisation scale {float(scale.max()):.3g} is too large for a right shift")
    check_dyadic(multiplier, shift, "requantisation")
    return multiplier, shift


def dyadic_value(multiplier, shift) -> np.ndarray:
    """The real scale an integer pair stands for (for reports and tests only)."""
    return np.asarray(multiplier, dtype=np.float64) / np.exp2(np.asarray(shift, dtype=np.float64))


def requantize(x: np.ndarray, multiplier, shift, bits: int = 8) -> np.ndarray:
    """Scale an integer tensor by ``multiplier / 2**shift`` and saturate to ``bits`` bits.

    Parameters
    ----------
    x : integer array with ``|x * multiplier| < 2**63`` (INT32 ``x`` always is)
    multiplier, shift : int or integer arrays broadcast against ``x``
        (per output channel: shape ``(channels,)``; per row: shape ``(..., 1)``).
    bits : int
        Output width; 8 for INT8 activations, 32 for INT32 fixed-point.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(multiplier), np.shape(shift))
    out = np.empty(shape, dtype=out_dtype(bits))
    x, multiplier, shift = broadcast_rows(shape, x, multiplier, shift)
    scales = (multiplier, shift)
    vector = lambda a: np.ascontiguousarray(a, dtype=np.int64)
    if x.size and all(a.strides[0] == 0 or a.shape[0] == 1 for a in scales):
        run_parallel(_requantize_channels, x.size, x, vector(multiplier[0]), vector(shift[0]), *int_range(bits),
                     as_rows(out))
    else:
        run_parallel(_requantize_rows, x.size, x, multiplier, shift, *int_range(bits), as_rows(out))
    return out


def add_multipliers(scale_a: float, scale_b: float, scale_out: float) -> tuple[int, int, int]:
    """``(m_a, m_b, shift)`` aligning two INT8 scales onto ``scale_out`` with one common shift."""
    ratios = np.array([scale_a / scale_out, scale_b / scale_out])
    shift = ADD_MULTIPLIER_BITS - 1 - math.frexp(float(ratios.max()))[1]
    shift = min(shift, MAX_SHIFT)
    if shift < MIN_SHIFT:
        raise IntVitError(f"residual scales {scale_a:.3g}, {scale_b:.3g} are too far above {scale_out:.3g}")
    m_a, m_b = (int(v) for v in np.round(ratios * 2.0**shift))
    check_add(m_a, m_b, shift, "residual add")
    return m_a, m_b, shift


def int_add(a: np.ndarray, b: np.ndarray, m_a: int, m_b: int, shift: int) -> np.ndarray:
    """Residual addition of two INT8 tensors on different scales: ``sat8((a*m_a + b*m_b) >> shift)``."""
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    out = np.empty(shape, dtype=np.int8)
    run_parallel(_add_rows, out.size, *broadcast_rows(shape, a, b), m_a, m_b, shift, as_rows(out))
    return out
