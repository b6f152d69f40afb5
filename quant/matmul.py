"""INT8 x INT8 -> INT32 matrix products, the MatMul unit's integer semantics.

Every linear layer (patch embedding, QKV, Q.K^T, attention.V, projections, MLP, head)
is ``int_matmul``: signed INT8 operands, products summed exactly into an INT32
accumulator that starts at the INT32 bias. The sum cannot leave INT32 when
``K * 2**14 + max|bias| <= 2**31 - 1``; ``check_accumulator`` enforces that bound
before any work, so an accumulator never wraps silently.

Two kernels compute the same integers:

* ``int_matmul`` runs the products on the float32 BLAS GEMM, which holds them exactly:
  the proof is the comment on ``FLOAT32_EXACT_DEPTH``. It is as fast as a float model's
  own GEMMs on any x86 (AVX2 or AVX-512, VNNI or not), at every shape measured.
* ``int_matmul_reference`` is a numba loop of INT32 multiply-adds, the plain statement
  of the semantics that the tests hold the BLAS path to. It is 2-10x slower than BLAS
  on the model's shapes and not faster on tiny ones, so the executor does not use it.

The float32 GEMM is torch's (MKL/oneDNN, on torch's OpenMP pool) when the process has torch
loaded, numpy's (OpenBLAS) otherwise: both are exact by the same bound, so the choice changes
no bit. With a float model in the process, sharing its BLAS keeps one thread pool: with two
threads on a loaded 2-core machine, OpenBLAS's spinning workers beside torch's and numba's
made the integer pass 3.7x the float pass, torch's GEMM 1.2x. A process without torch (a
cached program, images already at size) does not import it for this.

``torch._int_mm`` was measured and is not used: with oneDNN limited to AVX2 (no VNNI) its
int8 GEMM saturates 16-bit pair sums (``vpmaddubsw``) and returns wrong sums, e.g. 32640
instead of 4129024 for 256 products of 127 * 127.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from intvit.quant.errors import IntVitError
from intvit.quant.requant import INT8_MIN, INT32_MAX, derived

__all__ = ["int_matmul", "int_matmul_reference", "check_accumulator", "operands", "product_blocks", "MAX_PRODUCT",
           "FLOAT32_EXACT_DEPTH", "float_weights"]

MAX_PRODUCT = INT8_MIN * INT8_MIN   # 2**14, the largest |a * b| of two INT8 values

# Deepest dot product that float32 sums exactly. float32 has a 24-bit significand, so every
# integer of magnitude <= 2**24 is representable. Each INT8 product is an integer with
# |a * b| <= MAX_PRODUCT = 2**14 (exact in float32). Whatever order, blocking or fused
# multiply-adds a BLAS uses, each intermediate it rounds is a sum of some of the K products,
# an integer of magnitude <= K * 2**14 <= 2**24 when K <= 2**24 // 2**14 = 1024; a
# representable result is returned unrounded, so every step is exact and the GEMM yields the
# exact integer sum. Deeper products are cut into K chunks of this depth, each chunk's exact
# sum is converted to INT32 and the chunks are added in INT32, where ``check_accumulator``'s
# bound covers every partial sum.
FLOAT32_SIGNIFICAND_BITS = 24
FLOAT32_EXACT_DEPTH = 2**FLOAT32_SIGNIFICAND_BITS // MAX_PRODUCT


def check_accumulator(depth: int, bias: np.ndarray | None, name: str = "matmul") -> None:
    """Raise if a ``depth``-term INT8 dot product plus ``bias`` could overflow INT32."""
    _check_worst(depth, _widest(bias), name)


def _widest(bias: np.ndarray | None) -> int:
    return 0 if bias is None or np.size(bias) == 0 else int(np.abs(np.asarray(bias).astype(np.int64)).max())


def _check_worst(depth: int, widest: int, name: str) -> None:
    worst = depth * MAX_PRODUCT + widest
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


def float_weights(b: np.ndarray, transpose_b: bool) -> np.ndarray | None:
    """A 2-D INT8 weight as the float32 (K, N) operand of ``product_blocks``, cached per array; None if not 2-D."""
    if np.ndim(b) != 2:
        return None
    return derived(f"float32 (K, N), transpose_b={transpose_b}", (b,),
                   lambda: (b.T if transpose_b else b).astype(np.float32))


def _gemm(a_f: np.ndarray, b_f: np.ndarray) -> np.ndarray:
    # The float32 GEMM of a loaded torch, else numpy's (see the module docstring).
    torch = sys.modules.get("torch")
    if torch is None:
        return np.matmul(a_f, b_f)
    return torch.matmul(torch.from_numpy(a_f), torch.from_numpy(b_f)).numpy()


def _exact_products(a_f: np.ndarray, b_f: np.ndarray) -> np.ndarray:
    # float32 a_f (..., M, K) @ b_f (..., K, N): the exact sums, as float32 when K fits one chunk
    # (exact by FLOAT32_EXACT_DEPTH, converted by the caller), else INT32 summed over chunks.
    depth = a_f.shape[-1]
    if depth <= FLOAT32_EXACT_DEPTH:
        return _gemm(a_f, b_f)
    out = None
    for start in range(0, depth, FLOAT32_EXACT_DEPTH):
        stop = start + FLOAT32_EXACT_DEPTH
        part = _gemm(a_f[..., start:stop], b_f[..., start:stop, :]).astype(np.int32)
        out = part if out is None else np.add(out, part, out=out)
    return out


def product_blocks(a3: np.ndarray, b3: np.ndarray, block_elements: int, b_float: np.ndarray | None = None):
    """Exact INT8 products of ``a3 @ b3^T`` in blocks of whole rows, for a pass that uses them at once.

    Parameters
    ----------
    a3 : int8 (P, M, K)
    b3 : int8 (Pb, N, K) with Pb in {1, P}
    block_elements : int
        Products per block, at least one row (or one matrix when ``b3`` differs per ``p``).
    b_float : float32 (K, N), optional
        ``b3[0].T`` as float32 when Pb is 1 (``float_weights``), so that it is not converted again.

    Yields
    ------
    ``(start, products)``: rows ``start:start + len(products)`` of the (P*M, N) result, as
    float32 holding exact integers (K <= FLOAT32_EXACT_DEPTH) or INT32; no bias added.
    """
    p, m, depth = a3.shape
    n = b3.shape[1]
    if b3.shape[0] == 1:
        rows = a3.reshape(p * m, depth)                                 # (P*M, K)
        b_f = b3[0].T.astype(np.float32) if b_float is None else b_float   # (K, N)
        step = max(1, block_elements // max(n, 1))
        for start in range(0, p * m, step):
            yield start, _exact_products(rows[start:start + step].astype(np.float32), b_f)
    else:
        step = max(1, block_elements // max(m * n, 1))
        for first in range(0, p, step):
            a_f = a3[first:first + step].astype(np.float32)             # (g, M, K)
            b_f = np.swapaxes(b3[first:first + step], -1, -2).astype(np.float32)   # (g, K, N)
            yield first * m, _exact_products(a_f, b_f).reshape(-1, n)


def _blas_products(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    # a3 (P, M, K), b3 (Pb, N, K) with Pb in {1, P} -> INT32 (P, M, N), exact by FLOAT32_EXACT_DEPTH.
    p, m, depth = a3.shape
    shared = b3.shape[0] == 1
    a_f = a3.reshape(p * m, depth).astype(np.float32) if shared else a3.astype(np.float32)   # (P*M, K) | (P, M, K)
    b_f = np.swapaxes(b3[0] if shared else b3, -1, -2).astype(np.float32)                   # (K, N) | (P, K, N)
    return _exact_products(a_f, b_f).astype(np.int32, copy=False).reshape(p, m, -1)


def operands(a, b, bias, transpose_b: bool, name: str, cache: bool = False):
    """Checked 3-D operands: a (P, M, K), b as (Pb, N, K), INT32 bias (N,), and the leading dims.

    With ``cache``, ``bias`` is a program's constant: its INT32 form and largest magnitude are
    made once (``quant.requant.derived``).
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
        bias, widest = np.zeros(n, dtype=np.int32), 0
    else:
        make = lambda: (np.ascontiguousarray(bias, dtype=np.int32), _widest(bias))
        bias, widest = derived("INT32 bias", (bias,), make) if cache else make()
    _check_worst(depth, widest, name)
    if b_t.ndim == 2:
        b3 = b_t[None]
    else:
        if b_t.shape[:-2] != lead:
            raise IntVitError(f"{name}: batch dimensions differ ({a.shape} @ {b.shape})")
        b3 = b_t.reshape(-1, n, depth)
    return a.reshape(-1, m, depth), b3, bias, lead


def int_matmul(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, *,
               transpose_b: bool = False, name: str = "matmul") -> np.ndarray:
    """Exact INT8 matrix product with INT32 accumulation (float32 BLAS, exact by construction).

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
    int32 array (..., M, N), equal to ``int_matmul_reference`` bit for bit.
    """
    a3, b3, bias, lead = operands(a, b, bias, transpose_b, name)
    out = _blas_products(a3, b3)
    out += bias
    return out.reshape(*lead, *out.shape[1:])


def int_matmul_reference(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, *,
                         transpose_b: bool = False, name: str = "matmul") -> np.ndarray:
    """``int_matmul`` as INT32 multiply-adds in a numba loop: the reference the fast path is tested against.

    Parameters and result as for ``int_matmul``.
    """
    a3, b3, bias, lead = operands(a, b, bias, transpose_b, name)
    out = np.empty((a3.shape[0], a3.shape[1], b3.shape[1]), dtype=np.int32)
    _matmul_kernel(np.ascontiguousarray(a3), np.ascontiguousarray(b3), bias, out)
    return out.reshape(*lead, *out.shape[1:])
