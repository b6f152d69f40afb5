"""Float activations of the reference ViT, named after the integer tensors that stand for them.

``record_activations`` runs the float model with forward hooks and hands each activation
to a callback under the integer program's tensor name (``blocks.0.norm1``,
``blocks.0.attn.q`` ...). Calibration (``ActivationRanges``) and the per-layer SQNR
report both consume that one stream; ``calibration_ranges`` runs a calibration set through it,
minmax on one thread per core, and ``calibrate`` checks the set and returns the ranges with the
float parameters: all that ``quant.ptq.assemble_program`` needs. Nothing here loads the integer
kernels (numba), so a process that only calibrates stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from intvit.quant.errors import IntVitError

if TYPE_CHECKING:
    from intvit.quant.model import ViT

__all__ = ["record_activations", "calibration_ranges", "calibrate", "Calibration", "ActivationRanges", "batches",
           "CALIBRATION_METHODS", "UNSCALED_ACTIVATIONS"]

CALIBRATION_METHODS = ("minmax", "percentile")
# Activations whose float range sets no scale: Q.12 scores, Q.7 probabilities and the Q.10 GELU input
# are fixed-point formats, the logits stay INT32. Calibration does not record them (the largest tensors).
UNSCALED_ACTIVATIONS = (".attn.scores", ".attn.probs", ".mlp.fc1", "logits")
PERCENTILE_SAMPLES = 1 << 16        # values kept per activation per batch for percentile calibration
# Images one calibration thread runs at once. DeiT-Tiny's largest activation is 9.7 MB for 16 images,
# under glibc's 32 MB mmap threshold, so buffers are reused instead of mapped and faulted in afresh by
# every op: its 256 images took 7.6 s CPU in chunks of 16 (8: 7.6 s, 32: 8.4 s) against 10.0 s and a
# million page faults in chunks of 64, on two threads.
CHUNK_IMAGES = 16


def batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def record_activations(model: ViT, images: np.ndarray, callback: Callable[[str, np.ndarray], None]) -> np.ndarray:
    """Run ``model`` on one batch of normalised images; ``callback(name, array)`` per activation.

    Each array is a numpy view of the torch tensor, not a copy (often strided: q, k and v are
    views of the q|k|v projection). A callback with a ``records(name)`` method is handed only the
    activations it records. The forward runs under ``torch.inference_mode``. Returns the float logits.
    """
    with _hooks(model, callback, getattr(callback, "records", lambda name: True)):
        return _forward(model, images, callback)


def calibration_ranges(model: ViT, images: np.ndarray, ranges: ActivationRanges, batch_size: int,
                       progress: Callable | None = None, workers: int | None = None) -> ActivationRanges:
    """Record every batch of ``images`` into ``ranges``, on ``workers`` threads for minmax.

    The maximum does not depend on how images are grouped or in which order they run, so minmax
    calibration runs chunks of at most ``CHUNK_IMAGES`` images on ``workers`` threads (default:
    torch's thread count), each with one torch thread and its own ``ActivationRanges``, merged at
    the end: each core runs whole forwards instead of every op being split across cores and
    joined, the activations of a chunk stay small, and the ranges are those of one thread on one
    batch after another. Percentile calibration samples with one seeded generator in batch order,
    so it runs its batches in turn. ``progress`` wraps an iterator over the batches of ``batch_size``.
    """
    import torch

    batch_list = list(batches(images, batch_size))
    if ranges.method != "minmax":
        for batch in progress(iter(batch_list)) if progress else batch_list:
            record_activations(model, batch, ranges)
        return ranges
    local, parts, threads = threading.local(), [], torch.get_num_threads()

    def run(chunk: np.ndarray) -> None:
        if not hasattr(local, "ranges"):
            torch.set_num_threads(1)
            local.ranges = ranges.empty_copy()
            parts.append(local.ranges)
        _forward(model, chunk, local.ranges)

    pool = ThreadPoolExecutor(max(1, workers or threads), thread_name_prefix="intvit-calibrate")
    try:
        with _hooks(model, lambda name, value: local.ranges(name, value), ranges.records):
            pending = [[pool.submit(run, chunk) for chunk in batches(batch, CHUNK_IMAGES)] for batch in batch_list]
            for batch in progress(iter(pending)) if progress else pending:
                for future in batch:
                    future.result()
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)
    for part in parts:
        ranges.update(part)
    return ranges


@dataclass(frozen=True)
class Calibration:
    """What a calibration run yields: the activation ranges, the float parameters and the settings.

    ``settings`` is the program's ``calibration`` record (``method``, ``images``, ``percentile``).
    """

    ranges: ActivationRanges
    parameters: dict[str, np.ndarray]
    settings: dict


def calibrate(model: ViT, calibration_images: np.ndarray, *, method: str = "minmax", percentile: float = 99.99,
              batch_size: int = 32, progress=None, workers: int | None = None,
              skip: tuple[str, ...] = UNSCALED_ACTIVATIONS) -> Calibration:
    """Check the calibration set against ``model`` and record its activation ranges.

    Options as ``quant.ptq.quantize_model``; ``skip`` names the activations not recorded.
    """
    cfg = model.config
    images = np.asarray(calibration_images, dtype=np.float32)
    if images.size == 0:
        raise IntVitError("the calibration set is empty")
    if images.ndim != 4:
        raise IntVitError("calibration images must be (N, C, H, W)")
    if images.shape[1:] != (cfg.in_chans, cfg.img_size, cfg.img_size):
        raise IntVitError(f"calibration images are {images.shape[1:]}, model {cfg.name!r} takes "
                          f"{(cfg.in_chans, cfg.img_size, cfg.img_size)}")
    ranges = ActivationRanges(method, percentile, skip=skip)
    model.eval()
    calibration_ranges(model, images, ranges, batch_size, progress, workers)
    parameters = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    return Calibration(ranges, parameters, {"method": method, "images": int(len(images)),
                                            **({"percentile": percentile} if method == "percentile" else {})})


@contextmanager
def _hooks(model: ViT, emit: Callable[[str, np.ndarray], None], records: Callable[[str], bool]) -> Iterator[None]:
    """Forward hooks on ``model`` handing ``emit`` each recorded activation, removed on exit."""
    handles = []

    def hook_of(name, transform):
        def hook(module, args, output=None):
            tensor = output if output is not None else args[0]
            emit(name, transform(tensor).numpy())
        return hook

    def add(module, name, pre=False, transform=lambda t: t):
        if records(name):
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook_of(name, transform)))

    cfg = model.config
    heads = lambda t, i: t.reshape(*t.shape[:2], 3, cfg.num_heads, cfg.head_dim)[:, :, i].transpose(1, 2)
    try:
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
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model: ViT, images: np.ndarray, callback: Callable[[str, np.ndarray], None]) -> np.ndarray:
    """The float logits of one batch under ``torch.inference_mode``; ``callback`` gets the input and logits."""
    import torch

    x = np.asarray(images, dtype=np.float32)
    callback("input", x)
    with torch.inference_mode():
        logits = model(torch.as_tensor(x)).numpy()
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

    def empty_copy(self) -> ActivationRanges:
        """A new statistic of the same method and settings, with nothing recorded."""
        return ActivationRanges(self.method, self.percentile, skip=self._skip)

    def update(self, other: ActivationRanges) -> None:
        """Take in what ``other`` (minmax, the same settings) recorded: the larger bound of each name."""
        if self.method != "minmax" or other.method != "minmax":
            raise IntVitError("only minmax calibration statistics merge")
        for name, bound in other._max.items():
            self._max[name] = max(self._max.get(name, 0.0), bound)

    def range(self, name: str) -> float:
        """The calibrated |x| bound of one activation (never zero)."""
        if name not in self._max:
            raise IntVitError(f"no calibration data for activation {name!r}")
        if self.method == "percentile":
            bound = float(np.percentile(np.concatenate(self._samples[name]), self.percentile))
        else:
            bound = self._max[name]
        return bound if bound > 0 else 1.0
