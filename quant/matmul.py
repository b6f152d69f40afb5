"""INT8 x INT8 -> INT32 matrix products, the MatMul unit's integer semantics.

Every linear layer (patch embedding, QKV, Q.K^T, attention.V, projections, MLP, head)
is ``int_matmul``: signed INT8 operands, products summed exactly into an INT32
accumulator that starts at the INT32 bias. The sum cannot leave INT32 when
``K * 2**14 + max|bias| <= 2**31 - 1``; ``check_accumulator`` enforces that bound
before any work, so an accumulator never wraps silently.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from intvit.quant.errors import IntVitError
from intvit.quant.requant import INT8_MIN, INT32_MAX

__all__ = ["int_matmul", "check_accumulator", "MAX_PRODUCT"]

MAX_PRODUCT = INT8_MIN * INT8_MIN   # 2**14, the largest |a * b| of two INT8 values


def check_accumulator(depth: int, bias: np.ndarray | None, name: str = "matmul") -> None:
    """Raise if a ``depth``-term INT8 dot product plus ``bias`` could overflow INT32."""
    worst = depth * MAX_PRODUCT + (0 if bias is None or bias.size == 0 else int(np.abs(bias.astype(np.int64)).max()))
    if worst > INT32_MAX:
        raise IntVitError(
            f"{name}: INT32 accumulator can overflow (K={depth}, worst-case |sum| {worst} > {INT32_MAX})"
        )


@njit(parallel=True, cache=True, nogil=True)
def _matmul_kernel(a, b_t, bias, out):
    # a (P, M, K), b_t (Pb, N, K) with Pb in {1, P}, bias (N,), out (P, M, N).
    # Dot products over contiguous K let LLVM vectorise the widening multiply-add.
    P, M, K = a.shape
    N = b_t.shape[1]
    Pb = b_t.shape[0]
    for row in prange(P * M):
        p = row // M
        i = row - p * M
        pb = p % Pb
        for j in range(N):
            acc = bias[j]
            for k in range(K):
                acc += np.int32(a[p, i, k]) * np.int32(b_t[pb, j, k])
            out[p, i, j] = acc


def int_matmul(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, *,
               transpose_b: bool = False, name: str = "matmul") -> np.ndarray:
    """Exact INT8 matrix product with INT32 accumulation.

    Parameters
    ----------
    a : int8 array (..., M, K)
    b : int8 array (K, N), or (..., K, N) with the same leading dims as ``a``;
        with ``transpose_b`` it is given as (N, K) / (..., N, K) (e.g. K for Q.K^T).
    bias : int32 array (N,) or None
    name : str
        Layer name used in the overflow error.

    Returns
    -------
    int32 array (..., M, N)
    """
    if a.dtype != np.int8 or b.dtype != np.int8:
        raise IntVitError(f"{name}: operands must be int8, got {a.dtype} and {b.dtype}")
    b_t = b if transpose_b else np.swapaxes(b, -1, -2)          # (..., N, K)
    depth = a.shape[-1]
    if b_t.shape[-1] != depth:
        raise IntVitError(f"{name}: inner dimensions differ ({a.shape} @ {b.shape})")
    lead = a.shape[:-2]
    m, n = a.shape[-2], b_t.shape[-2]
    if bias is None:
        bias = np.zeros(n, dtype=np.int32)
    check_accumulator(depth, bias, name)
    a3 = np.ascontiguousarray(a.reshape(-1, m, depth))
    if b_t.ndim == 2:
        b3 = np.ascontiguousarray(b_t)[None]
    else:
        if b_t.shape[:-2] != lead:
            raise IntVitError(f"{name}: batch dimensions differ ({a.shape} @ {b.shape})")
        b3 = np.ascontiguousarray(b_t.reshape(-1, n, depth))
    out = np.empty((a3.shape[0], m, n), dtype=np.int32)
    _matmul_kernel(a3, b3, np.ascontiguousarray(bias, dtype=np.int32), out)
    return out.reshape(*lead, m, n)
