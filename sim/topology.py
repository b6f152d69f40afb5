"""A ViT as the list of GEMMs the MatMul unit runs, one per matmul, attention heads expanded.

Shapes follow ``quant.config.ViTConfig`` at batch 1, as (M x K) @ (K x N) with
T = tokens (patches + class token), D = embed_dim, H = head_dim, F = mlp_dim::

    patch_embed          M = patches  K = in_chans * patch**2  N = D
    block{b}.qkv         M = T        K = D                    N = 3D
    block{b}.head{h}.qk  M = T        K = H                    N = T     (Q @ K^T)
    block{b}.head{h}.av  M = T        K = T                    N = H     (attn @ V)
    block{b}.proj        M = T        K = D                    N = D
    block{b}.fc1         M = T        K = D                    N = F
    block{b}.fc2         M = T        K = F                    N = D
    head                 M = 1        K = D                    N = num_classes (class token only)
"""

from __future__ import annotations

from dataclasses import dataclass

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError

__all__ = ["Gemm", "vit_gemms", "block_gemms", "MAX_GEMM_DIM"]

# Size guard: a GEMM dimension an INT32 address can count (the cycle formulas stay exact far beyond).
MAX_GEMM_DIM = (1 << 31) - 1


@dataclass(frozen=True)
class Gemm:
    """One (M x K) @ (K x N) product, named as in SCALE-Sim topologies (``Layer, M, N, K``)."""

    name: str
    m: int
    n: int
    k: int

    def __post_init__(self):
        if not self.name or "," in self.name:
            raise IntVitError(f"layer name must be non-empty and without commas, not {self.name!r}")
        for field in ("m", "n", "k"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise IntVitError(f"layer {self.name}: {field.upper()} must be a positive integer, not {value!r}")
            if value > MAX_GEMM_DIM:
                digits = len(str(value))
                shown = value if digits <= 20 else f"a {digits}-digit number"
                raise IntVitError(f"layer {self.name}: {field.upper()} must be at most {MAX_GEMM_DIM}, not {shown}")

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k


def block_gemms(config: ViTConfig, block: int) -> list[Gemm]:
    """The GEMMs of encoder block ``block``: qkv, per-head Q.K^T and attn.V, proj, fc1, fc2."""
    tokens, dim, head_dim = config.num_tokens, config.embed_dim, config.head_dim
    prefix = f"block{block}"
    gemms = [Gemm(f"{prefix}.qkv", tokens, 3 * dim, dim)]
    for head in range(config.num_heads):
        gemms.append(Gemm(f"{prefix}.head{head}.qk", tokens, tokens, head_dim))
        gemms.append(Gemm(f"{prefix}.head{head}.av", tokens, head_dim, tokens))
    gemms += [
        Gemm(f"{prefix}.proj", tokens, dim, dim),
        Gemm(f"{prefix}.fc1", tokens, config.mlp_dim, dim),
        Gemm(f"{prefix}.fc2", tokens, dim, config.mlp_dim),
    ]
    return gemms


def vit_gemms(config: ViTConfig, blocks: int | None = None) -> list[Gemm]:
    """Every GEMM of a ViT forward pass at batch 1, in execution order.

    Parameters
    ----------
    config : ViTConfig
    blocks : int, optional
        Keep only the first ``blocks`` encoder blocks (all of them by default).
    """
    depth = config.depth if blocks is None else blocks
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= config.depth:
        raise IntVitError(f"blocks must be an integer from 0 to {config.depth}, not {blocks!r}")
    gemms = [Gemm("patch_embed", config.num_patches, config.embed_dim, config.patch_dim)]
    for block in range(depth):
        gemms += block_gemms(config, block)
    gemms.append(Gemm("head", 1, config.num_classes, config.embed_dim))
    return gemms
