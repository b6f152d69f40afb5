"""Integer pooling kernels for the ViT heads: the mean over tokens and the mean of two heads.

* ``int_token_mean``: timm's ``global_pool='avg'``, the mean of the patch tokens, on INT8
  tokens: an exact INT32 sum and one division by the token count rounded half up
  (``(2 sum + n) // (2 n)``), so the result stays INT8 on the input's scale.
* ``int_average``: DeiT-distilled inference averages the class and distillation heads; both
  heads are quantised on one scale, so their INT32 logits average as
  ``(a + b + 1) >> 1`` (round half up) on that scale.
"""

from __future__ import annotations

import numpy as np

from intvit.quant.errors import IntVitError

__all__ = ["int_token_mean", "int_average"]


def int_token_mean(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Mean over tokens ``start:`` of INT8 ``(B, N, D)``, rounded half up; INT8 ``(B, D)``.

    Parameters
    ----------
    x : numpy.ndarray
        int8 tokens ``(B, N, D)``.
    start : int
        Leading (prefix) tokens to leave out of the mean.
    """
    if x.dtype != np.int8 or x.ndim != 3:
        raise IntVitError(f"int_token_mean takes int8 (B, N, D) tokens, not {x.dtype}{list(x.shape)}")
    if not 0 <= start < x.shape[1]:
        raise IntVitError(f"int_token_mean: start {start} leaves no token of {x.shape[1]}")
    count = x.shape[1] - start
    total = x[:, start:].sum(axis=1, dtype=np.int64)                 # |total| <= 128 * count
    return ((2 * total + count) // (2 * count)).astype(np.int8)      # floor(total / count + 1/2)


def int_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise mean of two INT32 tensors on one scale, rounded half up; INT32."""
    if a.dtype != np.int32 or b.dtype != np.int32 or a.shape != b.shape:
        raise IntVitError(f"int_average takes two int32 tensors of one shape, not "
                          f"{a.dtype}{list(a.shape)} and {b.dtype}{list(b.shape)}")
    return ((a.astype(np.int64) + b + 1) >> 1).astype(np.int32)
