"""Integer against float: accuracy, agreement, per-layer SQNR and logit error on a data set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from intvit.quant.calibrate import batches, record_activations
from intvit.quant.executor import run_program, saturation_counts
from intvit.quant.model import ViT
from intvit.quant.program import IntProgram

__all__ = ["BatchComparison", "Comparison", "combine", "compare", "compare_batch", "energies", "sqnr_db",
           "topk_correct"]


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


@dataclass(frozen=True)
class BatchComparison:
    """What one batch contributes to a :class:`Comparison`; :func:`combine` adds these in batch order.

    Attributes
    ----------
    float_logits, int_logits : numpy.ndarray
        ``(batch, classes)``: float logits and dequantised integer logits (float64).
    signal, noise : dict of str -> float
        Per compared tensor, sum of squared float values and of squared integer-minus-float errors.
    saturation : dict of str -> tuple of int
        Per requantised tensor, ``(elements at a bound, elements)``.
    """

    float_logits: np.ndarray
    int_logits: np.ndarray
    signal: dict
    noise: dict
    saturation: dict


@njit(cache=True)
def _energies(reference, values, scale):
    # One pass over a float activation and its integer counterpart (both flat): the sums of
    # squared float values and of squared errors, in float64, in element order (the same bits
    # wherever a batch runs), with no temporary the size of the tensor.
    signal = 0.0
    noise = 0.0
    for i in range(reference.size):
        r = np.float64(reference[i])
        e = r - values[i] * scale
        signal += r * r
        noise += e * e
    return signal, noise


def energies(reference: np.ndarray, values: np.ndarray, scale: float) -> tuple[float, float]:
    """``(sum(reference**2), sum((reference - values * scale)**2))`` in float64, for the SQNR.

    Parameters
    ----------
    reference : float array (the float model's activation)
    values : integer array of the same shape (the integer tensor)
    scale : float
        Real value of one integer step.
    """
    if np.shape(reference) != np.shape(values):
        raise ValueError(f"float activation {np.shape(reference)} and integer tensor {np.shape(values)} differ")
    return _energies(np.ravel(reference), np.ravel(values), float(scale))


def _compared(program: IntProgram) -> list:
    return [(name, info) for name, info in program.tensors.items() if info.float_name and info.scale]


def compare_batch(model: ViT, program: IntProgram, threads: int | None, chunk: np.ndarray) -> BatchComparison:
    """Float and integer inference on one batch of normalised images, reduced to its sums.

    A pure function of its arguments, so batches can run anywhere (another process, another
    machine of the same kind) and :func:`combine` still gives the single-process numbers bit
    for bit. ``threads`` sets torch's thread count first: the float head's GEMM splits its
    reduction by thread, so its last bits depend on the count (the integer side does not).
    """
    import torch

    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    floats = {}
    float_logits = record_activations(model, chunk, floats.__setitem__)
    logits, tensors = run_program(program, program.quantize_input(chunk), collect=True)
    signal, noise = {}, {}
    for name, info in _compared(program):
        signal[name], noise[name] = energies(floats[info.float_name], tensors[name], info.scale)
    return BatchComparison(
        float_logits=float_logits,
        int_logits=logits.astype(np.float64) * program.tensors[program.output].scale,
        signal=signal, noise=noise,
        saturation=saturation_counts(program, tensors))


def combine(program: IntProgram, parts: Sequence[BatchComparison], labels: np.ndarray) -> Comparison:
    """Reduce per-batch results, in the order given (batch order), to one :class:`Comparison`.

    Float sums are accumulated in exactly this order, so the same batches give the same bits
    wherever they were computed.
    """
    compared = _compared(program)
    signal = {name: 0.0 for name, _ in compared}
    noise = {name: 0.0 for name, _ in compared}
    saturated: dict[str, list[int]] = {}
    for part in parts:
        for name, (hits, size) in part.saturation.items():
            counts = saturated.setdefault(name, [0, 0])
            counts[0] += hits
            counts[1] += size
        for name, _ in compared:
            signal[name] += part.signal[name]
            noise[name] += part.noise[name]
    f = np.concatenate([part.float_logits for part in parts])
    q = np.concatenate([part.int_logits for part in parts])
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


def compare(model: ViT, program: IntProgram, images: np.ndarray, labels: np.ndarray, *,
            batch_size: int = 64, progress=None, map_batches=None) -> Comparison:
    """Run float and integer inference on normalised ``images`` and compare them.

    Parameters
    ----------
    model, program : ViT, IntProgram
    images, labels : numpy.ndarray
    batch_size : int
        Images per batch; the float model's results depend on the batching, so every way of
        running keeps these batches.
    progress : callable, optional
        Wraps the batch iterable of the in-process run (a progress bar).
    map_batches : callable, optional
        ``map_batches(compare_batch, shared, chunks)`` returning ``[compare_batch(*shared, chunk)
        for chunk in chunks]``, e.g. on a cluster's workers (``intvit.cluster``); default: in this
        process. The workers run the float model with this process's torch thread count.
    """
    import torch

    chunks = batches(images, batch_size)
    shared = (model, program, torch.get_num_threads())
    if map_batches is not None:
        parts = map_batches(compare_batch, shared, chunks)
    else:
        parts = [compare_batch(*shared, chunk) for chunk in (progress(chunks) if progress else chunks)]
    return combine(program, parts, labels)
