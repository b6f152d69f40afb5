"""Float activations of the reference ViT, named after the integer tensors that stand for them.

``record_activations`` runs the float model with forward hooks and hands each activation
to a callback under the integer program's tensor name (``blocks.0.norm1``,
``blocks.0.attn.q`` ...). Calibration (``ActivationRanges``) and the per-layer SQNR
report both consume that one stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from typing import TYPE_CHECKING

import numpy as np

from intvit.quant.errors import IntVitError

if TYPE_CHECKING:
    from intvit.quant.model import ViT

__all__ = ["record_activations", "ActivationRanges", "batches", "CALIBRATION_METHODS"]

CALIBRATION_METHODS = ("minmax", "percentile")
PERCENTILE_SAMPLES = 1 << 16        # values kept per activation per batch for percentile calibration


def batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def record_activations(model: ViT, images: np.ndarray, callback: Callable[[str, np.ndarray], None]) -> np.ndarray:
    """Run ``model`` on one batch of normalised images; ``callback(name, array)`` per activation.

    Each array is a numpy view of the torch tensor, not a copy (often strided: q, k and v are
    views of the q|k|v projection). A callback with a ``records(name)`` method is handed only the
    activations it records. The forward runs under ``torch.inference_mode``. Returns the float logits.
    """
    import torch

    handles = []
    records = getattr(callback, "records", lambda name: True)

    def emit(name, transform=lambda t: t):
        def hook(module, args, output=None):
            tensor = output if output is not None else args[0]
            callback(name, transform(tensor).numpy())
        return hook

    def add(module, name, pre=False, transform=lambda t: t):
        if records(name):
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(emit(name, transform)))

    cfg = model.config
    heads = lambda t, i: t.reshape(*t.shape[:2], 3, cfg.num_heads, cfg.head_dim)[:, :, i].transpose(1, 2)
    add(model.patch_embed, "patch_embed")
    add(model.blocks[0], "embed", pre=True)
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        add(block.norm1, f"{p}.norm1")
        for j, part in enumerate("qkv"):
            add(block.attn.qkv, f"{p}.attn.{part}", transform=lambda t, j=j: heads(t, j))
        add(block.attn.softmax, f"{p}.attn.scores", pre=True)
        add(block.attn.softmax, f"{p}.attn.probs")
        add(block.attn.proj, f"{p}.attn.context", pre=True)
        add(block.attn.proj, f"{p}.attn.proj")
        add(block.norm2, f"{p}.residual", pre=True)
        add(block.norm2, f"{p}.norm2")
        add(block.mlp.fc1, f"{p}.mlp.fc1")
        add(block.mlp.fc2, f"{p}.mlp.act", pre=True)
        add(block.mlp.fc2, f"{p}.mlp.fc2")
        add(block, p)
    if cfg.global_pool == "avg":
        add(model.fc_norm, "fc_norm")
    else:
        add(model.norm, "norm", transform=lambda t: t[:, 0])
        if cfg.dist_token:
            add(model.norm, "norm_dist", transform=lambda t: t[:, 1])
    x = np.asarray(images, dtype=np.float32)
    try:
        callback("input", x)
        with torch.inference_mode():
            logits = model(torch.as_tensor(x)).numpy()
    finally:
        for handle in handles:
            handle.remove()
    callback("logits", logits)
    return logits


class ActivationRanges:
    """Running calibration statistic (max |x| or a percentile of |x|) per activation name.

    max |x| is ``max(-x.min(), x.max())`` on the array where it lies: two vectorised passes and no
    copy, even of a strided view, exactly ``abs(x).max()`` (and several times faster than
    ``torch.aminmax`` on the same tensors).
    """

    def __init__(self, method: str = "minmax", percentile: float = 99.99, seed: int = 0, skip: tuple[str, ...] = ()):
        if method not in CALIBRATION_METHODS:
            raise IntVitError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}")
        if not 0 < percentile <= 100:
            raise IntVitError(f"percentile must be in (0, 100], not {percentile}")
        self.method, self.percentile = method, percentile
        self._max: dict[str, float] = {}
        self._samples: dict[str, list[np.ndarray]] = {}
        self._rng = np.random.default_rng(seed)
        # Names ending in ``skip`` are not recorded at all. Percentile calibration records them anyway:
        # its seeded sampling draws for every activation in turn, and skipping one would move the rest.
        self._skip = tuple(skip) if method == "minmax" else ()

    def records(self, name: str) -> bool:
        """Whether ``record_activations`` should hand over activation ``name``."""
        return not name.endswith(self._skip) if self._skip else True

    def __call__(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        bound = max(-float(value.min()), float(value.max())) if value.size else 0.0
        self._max[name] = max(self._max.get(name, 0.0), bound)
        if self.method == "percentile":
            magnitude = np.abs(value).ravel()
            if magnitude.size > PERCENTILE_SAMPLES:
                magnitude = self._rng.choice(magnitude, PERCENTILE_SAMPLES, replace=False)
            self._samples.setdefault(name, []).append(magnitude)

    def range(self, name: str) -> float:
        """The calibrated |x| bound of one activation (never zero)."""
        if name not in self._max:
            raise IntVitError(f"no calibration data for activation {name!r}")
        if self.method == "percentile":
            bound = float(np.percentile(np.concatenate(self._samples[name]), self.percentile))
        else:
            bound = self._max[name]
        return bound if bound > 0 else 1.0
