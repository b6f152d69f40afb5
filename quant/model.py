"""Float reference Vision Transformer, readable in one file (nanoGPT style).

Parameter names follow timm's ``VisionTransformer`` exactly, so a timm or DeiT state dict
loads with ``load_state_dict`` unchanged. Every step that the integer pipeline replaces is
its own module, so forward hooks see each intermediate: ``norm1``, ``attn.qkv``,
``attn.softmax`` (output = attention probabilities), ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.act``, ``mlp.fc2``, each block's output, the final ``norm`` and ``head``.
The model takes images already normalised by :func:`quant.data.normalize`.

Variants that timm and Hugging Face checkpoints hold, chosen by the config: a distillation
token with its own head (DeiT distilled; the two heads' logits are averaged, as timm and
transformers do at inference), global average pooling of the patch tokens followed by
``fc_norm`` instead of the class token (timm ``global_pool='avg'``, with or without a class
token), a q|k|v projection without bias, and GELU in its exact or tanh form.
"""

from __future__ import annotations

import torch
from torch import nn

from intvit.quant.config import ViTConfig

__all__ = ["ViT", "PatchEmbed", "Attention", "Mlp", "Block"]

# timm's initialisation: truncated normal with this std for linear weights and tokens.
INIT_STD = 0.02


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to ``embed_dim``."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, grid, grid)
        return x.flatten(2).transpose(1, 2)  # (B, patches, D), row-major over the grid


class Attention(nn.Module):
    """Multi-head self-attention with one fused q|k|v projection, written out step by step."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        probs = self.softmax((q @ k.transpose(-2, -1)) * self.scale)  # (B, heads, N, N)
        out = (probs @ v).transpose(1, 2).reshape(B, N, D)  # heads concatenated again
        return self.proj(out)


class Mlp(nn.Module):
    """Two linear layers with GELU (exact erf, or tanh as the config says) between them."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """timm-compatible VisionTransformer with prefix tokens and a learned position embedding.

    Parameters
    ----------
    config : ViTConfig
        Shape of the model; kept as ``self.config``.

    Notes
    -----
    ``forward(x)`` takes normalised images ``(B, in_chans, img_size, img_size)`` and returns
    logits ``(B, num_classes)``: from the class token after the final ``norm`` (averaged with
    ``head_dist`` of the distillation token when there is one), or from the mean of the patch
    tokens after ``fc_norm``. Parameter names are timm's for every variant.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        if config.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        if config.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.embed_dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        # timm: with average pooling the final norm moves after the pooling, as fc_norm.
        final_norm = nn.LayerNorm(config.embed_dim, eps=config.eps)
        if config.global_pool == "avg":
            self.fc_norm = final_norm
        else:
            self.norm = final_norm
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        if config.dist_token:
            self.head_dist = nn.Linear(config.embed_dim, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default initialisation: truncated normal weights, zero biases, unit norms."""
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for token in self.prefix_tokens():
            nn.init.trunc_normal_(token, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def prefix_tokens(self) -> list[nn.Parameter]:
        """The class and distillation tokens, in the order they precede the patches."""
        return [getattr(self, name) for name in ("cls_token", "dist_token") if hasattr(self, name)]

    @property
    def final_norm(self) -> nn.LayerNorm:
        """The last LayerNorm: ``norm`` on the class token, or ``fc_norm`` after pooling."""
        return self.fc_norm if self.config.global_pool == "avg" else self.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, patches, D)
        tokens = [t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens()]
        x = torch.cat((*tokens, x), dim=1) + self.pos_embed  # (B, tokens, D)
        for block in self.blocks:
            x = block(x)
        if self.config.global_pool == "avg":
            return self.head(self.fc_norm(x[:, self.config.num_prefix_tokens:].mean(dim=1)))
        x = self.norm(x)
        if self.config.dist_token:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])
