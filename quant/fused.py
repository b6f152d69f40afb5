"""Fused matmul epilogues: a linear layer's products requantised (and activated) in one pass.

The integer program writes a linear layer as separate ops, ``matmul`` (INT32 accumulator)
then ``requant``, with ``gelu`` and a second ``requant`` after an MLP's first layer and
``softmax`` after the attention scores; the simulator and the RTL keep them apart. The
golden executor may run such a chain as one of the kernels below, which compute the same
integers as the ops one after another (``requantize_value``, ``gelu_value`` and
``softmax_row`` are the very functions the separate kernels call) but never store the
INT32 accumulator or the intermediates: the exact float32 products of ``product_blocks``
are requantised block by block while still in cache, so the INT32 conversion, the bias
add and the requantiser's re-read each cost no pass over memory of their own.

* ``matmul_requant``: ``requantize(int_matmul(a, b, bias), m, s, bits)``
* ``matmul_gelu``: ``requantize(int_gelu(requantize(int_matmul(...), m1, s1, bits1)), m2, s2, bits2)``
* ``matmul_softmax``: ``int_softmax(requantize(int_matmul(...), m, s, bits))``

The scales are one per output channel or one for all (the program's only forms);
``fusable_scale`` says whether a scale operand is one of them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from intvit.quant.gelu import gelu_lane, gelu_value
from intvit.quant.matmul import float_weights, operands, product_blocks
from intvit.quant.requant import (add32, derived, int_range, lane_scale, out_dtype, requantize_lane, requantize_value,
                                  run_parallel)
from intvit.quant.softmax import softmax_row, softmax_row_lanes

__all__ = ["BLOCK_ELEMENTS", "fusable_scale", "matmul_requant", "matmul_gelu", "matmul_softmax"]

# Products per block: 2 MiB of float32; smaller blocks would stay in L2 but make each GEMM call less
# efficient (measured: 64-row blocks cost 20% more GEMM time than one call, 512 rows 7%).
BLOCK_ELEMENTS = 1 << 19


# Every kernel takes a block of exact products ``acc`` (rows, N), float32 holding integers or
# INT32, and the INT32 bias (N,). ``np.int64(acc[i, j]) + bias[j]`` is the INT32 accumulator
# of ``int_matmul`` exactly: a float32 integer converts without rounding, and
# ``check_accumulator`` bounds the sum within INT32.
@njit(parallel=True, cache=True)
def _requant_block(acc, bias, multiplier, shift, lo, hi, out):
    for i in prange(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[i, j] = requantize_value(np.int64(acc[i, j]) + bias[j], multiplier[j], shift[j], lo, hi)


# The separate ops store GELU's input in out_dtype(bits1) and its output in INT32 (the
# element-wise kernels' store); the casts below are those stores, so a wrap would match too.
@njit(parallel=True, cache=True)
def _gelu_block(acc, bias, m1, s1, lo1, hi1, m2, s2, lo2, hi2, stored, out):
    for i in prange(acc.shape[0]):
        for j in range(acc.shape[1]):
            x = stored(requantize_value(np.int64(acc[i, j]) + bias[j], m1[j], s1[j], lo1, hi1))
            y = np.int32(gelu_value(x))
            out[i, j] = requantize_value(np.int64(y), m2[j], s2[j], lo2, hi2)


@njit(parallel=True, cache=True)
def _softmax_block(acc, bias, multiplier, shift, lo, hi, stored, out):
    n = acc.shape[1]
    for i in prange(acc.shape[0]):
        scores = np.empty(n, dtype=np.int64)
        for j in range(n):
            scores[j] = stored(requantize_value(np.int64(acc[i, j]) + bias[j], multiplier[j], shift[j], lo, hi))
        softmax_row(scores, np.empty(n, dtype=np.int64), out[i])


# The same chains in INT32 lanes (``requantize_lane``, ``gelu_lane``, ``softmax_row_lanes``), taken
# when every shift is at least LANE_MIN_SHIFT and every width at most 32 (31 for GELU's input):
# the forms a calibrated model's scales take. ``add32`` of the product and the bias cannot wrap
# (``check_accumulator``). 2-3x less time than the int64 kernels above, which handle the rest.
@njit(parallel=True, cache=True)
def _requant_lanes(acc, bias, multiplier, shift32, lo, hi, out):
    for i in prange(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[i, j] = requantize_lane(add32(np.int32(acc[i, j]), bias[j]), multiplier[j], shift32[j], lo, hi)


@njit(parallel=True, cache=True)
def _gelu_lanes(acc, bias, m1, shift1, lo1, hi1, m2, shift2, lo2, hi2, out):
    n = acc.shape[1]
    for i in prange(acc.shape[0]):
        x = np.empty(n, dtype=np.int32)
        for j in range(n):
            x[j] = requantize_lane(add32(np.int32(acc[i, j]), bias[j]), m1[j], shift1[j], lo1, hi1)
        for j in range(n):
            out[i, j] = requantize_lane(gelu_lane(x[j]), m2[j], shift2[j], lo2, hi2)


@njit(parallel=True, cache=True)
def _softmax_lanes(acc, bias, multiplier, shift32, lo, hi, out):
    n = acc.shape[1]
    for i in prange(acc.shape[0]):
        scores = np.empty(n, dtype=np.int32)
        for j in range(n):
            scores[j] = requantize_lane(add32(np.int32(acc[i, j]), bias[j]), multiplier[j], shift32[j], lo, hi)
        softmax_row_lanes(scores, np.empty(n, dtype=np.int32), out[i])


def fusable_scale(value, channels: int) -> bool:
    """Whether a requant scale operand is one per channel (``(channels,)``) or one for all."""
    shape = np.shape(value)
    return len(shape) <= 1 and (not shape or shape[0] in (1, channels))


def _channels(value, n: int) -> np.ndarray:
    # A scale operand as a contiguous int64 vector of the N output channels.
    return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=np.int64).reshape(-1), (n,)))


def _lanes(multiplier, shift, n: int, cache: bool):
    # ``lane_scale``, made once per pair of a program's arrays when ``cache``.
    make = lambda: lane_scale(multiplier, shift, n)
    return derived(f"lane scale of {n}", (multiplier, shift), make) if cache else make()


def _store(bits: int):
    # The numba scalar type that ``requantize`` stores a ``bits``-wide result as.
    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[out_dtype(bits).itemsize]


def _run(a, b, bias, transpose_b, name, dtype, block, cache):
    """Checked operands, then ``block(products, bias, out_rows)`` per block; the (..., M, N) result."""
    a3, b3, bias, lead = operands(a, b, bias, transpose_b, name, cache)
    p, m, _ = a3.shape
    n = b3.shape[1]
    out = np.empty((p * m, n), dtype=dtype)
    for start, products in product_blocks(a3, b3, BLOCK_ELEMENTS, float_weights(b, transpose_b) if cache else None):
        run_parallel(block, out.size, products, bias, out[start:start + len(products)])
    return out.reshape(*lead, m, n)


def matmul_requant(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, multiplier, shift, bits: int, *,
                   transpose_b: bool = False, name: str = "matmul", cache: bool = False) -> np.ndarray:
    """``requantize(int_matmul(a, b, bias, ...), multiplier, shift, bits)``, bit for bit.

    Parameters
    ----------
    a, b, bias, transpose_b, name : as for ``int_matmul``
    multiplier, shift : integer scale, one per output channel ``(N,)`` or one for all
    bits : int
        Output width, as for ``requantize``.
    cache : bool
        ``b`` (when 2-D) and the scales are a program's constants: their float32 and lane forms are
        kept from call to call (``quant.requant.derived``), and the arrays made read-only.
    """
    n = np.shape(b)[-2 if transpose_b else -1]
    lanes = _lanes(multiplier, shift, n, cache) if bits <= 32 else None
    if lanes is not None:
        return _run(a, b, bias, transpose_b, name, out_dtype(bits),
                    lambda acc, bias, out: _requant_lanes(acc, bias, *lanes, *int_range(bits), out), cache)
    m, s = _channels(multiplier, n), _channels(shift, n)
    return _run(a, b, bias, transpose_b, name, out_dtype(bits),
                lambda acc, bias, out: _requant_block(acc, bias, m, s, *int_range(bits), out), cache)


def matmul_gelu(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, scale: tuple, bits: int,
                act_scale: tuple, act_bits: int, *, transpose_b: bool = False, name: str = "matmul",
                cache: bool = False) -> np.ndarray:
    """``requantize(int_gelu(requantize(int_matmul(a, b, bias), *scale, bits)), *act_scale, act_bits)``.

    ``scale`` and ``act_scale`` are ``(multiplier, shift)`` pairs, each one per output channel or
    one for all; the rest as for ``matmul_requant``.
    """
    n = np.shape(b)[-2 if transpose_b else -1]
    lanes = [_lanes(*pair, n, cache) for pair in (scale, act_scale)] if bits <= 31 and act_bits <= 32 else [None]
    if None not in lanes:
        return _run(a, b, bias, transpose_b, name, out_dtype(act_bits),
                    lambda acc, bias, out: _gelu_lanes(acc, bias, *lanes[0], *int_range(bits), *lanes[1],
                                                       *int_range(act_bits), out), cache)
    m1, s1, m2, s2 = (_channels(v, n) for v in (*scale, *act_scale))
    stored = _store(bits)
    return _run(a, b, bias, transpose_b, name, out_dtype(act_bits),
                lambda acc, bias, out: _gelu_block(acc, bias, m1, s1, *int_range(bits), m2, s2, *int_range(act_bits),
                                                   stored, out), cache)


def matmul_softmax(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, multiplier, shift, bits: int, *,
                   transpose_b: bool = False, name: str = "matmul", cache: bool = False) -> np.ndarray:
    """``int_softmax(requantize(int_matmul(a, b, bias, ...), multiplier, shift, bits))``: INT8 Q.7 rows.

    Parameters as for ``matmul_requant``; the softmax runs over the output's last axis (N).
    """
    n = np.shape(b)[-2 if transpose_b else -1]
    lanes = _lanes(multiplier, shift, n, cache) if bits <= 32 else None
    if lanes is not None:
        return _run(a, b, bias, transpose_b, name, np.int8,
                    lambda acc, bias, out: _softmax_lanes(acc, bias, *lanes, *int_range(bits), out), cache)
    m, s = _channels(multiplier, n), _channels(shift, n)
    stored = _store(bits)
    return _run(a, b, bias, transpose_b, name, np.int8,
                lambda acc, bias, out: _softmax_block(acc, bias, m, s, *int_range(bits), stored, out), cache)
