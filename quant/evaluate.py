"""Integer against float: accuracy, agreement, per-layer SQNR and logit error on a data set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from intvit.quant.calibrate import batches, record_activations
from intvit.quant.executor import run_program, saturation_counts
from intvit.quant.model import ViT
from intvit.quant.program import IntProgram

__all__ = ["Comparison", "compare", "sqnr_db", "topk_correct"]


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """Signal-to-quantisation-noise ratio in dB (inf for a perfect match)."""
    if noise_energy == 0:
        return float("inf")
    return float(10 * np.log10(max(signal_energy, 1e-300) / noise_energy))


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-image bool: is the label among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass
class Comparison:
    """Float and integer results of one model on one labelled set.

    Attributes
    ----------
    images : int
    float_top1, float_top5, int_top1, int_top5 : float
        Accuracies in percent.
    agreement : float
        Percent of images on which both pick the same class.
    logit_sqnr_db, logit_max_abs_error, logit_mean_abs_error : float
        Integer logits (dequantised) against float logits.
    layer_sqnr_db : dict of str -> float
        Per integer tensor with a float counterpart, in program order.
    saturation : dict of str -> float
        Percent of elements at a saturation bound, for the tensors where any are.
    """

    images: int = 0
    float_top1: float = 0.0
    float_top5: float = 0.0
    int_top1: float = 0.0
    int_top5: float = 0.0
    agreement: float = 0.0
    logit_sqnr_db: float = 0.0
    logit_max_abs_error: float = 0.0
    logit_mean_abs_error: float = 0.0
    layer_sqnr_db: dict = field(default_factory=dict)
    saturation: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def compare(model: ViT, program: IntProgram, images: np.ndarray, labels: np.ndarray, *,
            batch_size: int = 64, progress=None) -> Comparison:
    """Run float and integer inference on normalised ``images`` and compare them."""
    compared = [(name, info) for name, info in program.tensors.items() if info.float_name and info.scale]
    signal = {name: 0.0 for name, _ in compared}
    noise = {name: 0.0 for name, _ in compared}
    float_logits, int_logits = [], []
    saturated: dict[str, list[int]] = {}
    chunks = batches(images, batch_size)
    for chunk in progress(chunks) if progress else chunks:
        floats = {}
        float_logits.append(record_activations(model, chunk, floats.__setitem__))
        logits, tensors = run_program(program, program.quantize_input(chunk), collect=True)
        int_logits.append(logits.astype(np.float64) * program.tensors[program.output].scale)
        for name, (hits, size) in saturation_counts(program, tensors).items():
            counts = saturated.setdefault(name, [0, 0])
            counts[0] += hits
            counts[1] += size
        for name, info in compared:
            reference = floats[info.float_name].astype(np.float64)
            signal[name] += float(np.square(reference).sum())
            noise[name] += float(np.square(reference - tensors[name] * info.scale).sum())
    f, q = np.concatenate(float_logits), np.concatenate(int_logits)
    error = np.abs(f - q)
    percent = lambda hits: float(100.0 * hits.mean())
    return Comparison(
        images=len(f),
        float_top1=percent(topk_correct(f, labels, 1)), float_top5=percent(topk_correct(f, labels, 5)),
        int_top1=percent(topk_correct(q, labels, 1)), int_top5=percent(topk_correct(q, labels, 5)),
        agreement=percent(f.argmax(1) == q.argmax(1)),
        logit_sqnr_db=sqnr_db(float(np.square(f).sum()), float(np.square(f - q).sum())),
        logit_max_abs_error=float(error.max()), logit_mean_abs_error=float(error.mean()),
        layer_sqnr_db={name: sqnr_db(signal[name], noise[name]) for name, _ in compared},
        saturation={name: 100.0 * hits / size for name, (hits, size) in saturated.items() if hits},
    )
