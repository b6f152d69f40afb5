"""Calibration reduces activations where they lie (numpy views of the torch tensors) to exactly numpy's statistics."""

import threading

import numpy as np
import pytest
import torch

from intvit.quant.calibrate import ActivationRanges, calibration_ranges, record_activations
from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.ptq import UNSCALED_ACTIVATIONS

SMALL = ViTConfig("small", img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                  num_heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_ranges_equal_numpy_statistics_of_the_recorded_arrays(method):
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    images = np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32)
    arrays: dict[str, list[np.ndarray]] = {}
    record_activations(model, images, lambda name, value: arrays.setdefault(name, []).append(value.copy()))
    ranges = ActivationRanges(method, percentile=99.0)
    for chunk in (images[:4], images[4:]):                     # two batches, as calibration runs them
        record_activations(model, chunk, ranges)
    assert len(arrays) > 30
    for name, values in arrays.items():
        magnitude = np.abs(np.concatenate([v.ravel() for v in values]))
        if method == "minmax":
            assert ranges.range(name) == float(magnitude.max()) or magnitude.max() == 0, name
        else:                                                      # small tensors: every value is kept
            expected = float(np.percentile(magnitude, 99.0))
            assert ranges.range(name) == pytest.approx(expected, rel=1e-6) or expected == 0, name


def test_activations_that_set_no_scale_are_not_recorded_and_the_program_is_unchanged(monkeypatch):
    import intvit.quant.ptq as ptq

    torch.manual_seed(1)
    model = ViT(SMALL).eval()
    images = np.random.default_rng(1).normal(size=(8, 3, 16, 16)).astype(np.float32)
    ranges = ActivationRanges(skip=ptq.UNSCALED_ACTIVATIONS)
    record_activations(model, images, ranges)
    assert not ranges.records("blocks.1.attn.scores") and ranges.records("blocks.1.attn.q")
    assert ActivationRanges("percentile", skip=ptq.UNSCALED_ACTIVATIONS).records("blocks.1.attn.scores")
    skipped = ptq.quantize_model(model, images)
    monkeypatch.setattr(ptq, "UNSCALED_ACTIVATIONS", ())
    every = ptq.quantize_model(model, images)
    assert skipped.constants.keys() == every.constants.keys()
    assert all(np.array_equal(skipped.constants[k], every.constants[k]) for k in every.constants)
    assert skipped.tensors == every.tensors and [op.attrs for op in skipped.ops] == [op.attrs for op in every.ops]


def _ranges_of_one_batch(model, images):
    ranges = ActivationRanges(skip=UNSCALED_ACTIVATIONS)
    record_activations(model, images, ranges)
    return ranges


@pytest.mark.parametrize("workers, batch_size", [(1, 64), (2, 64), (3, 5)])
def test_threaded_minmax_calibration_equals_one_batch_bit_for_bit(workers, batch_size):
    torch.manual_seed(2)
    model = ViT(SMALL).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    images = np.random.default_rng(2).normal(size=(37, 3, 16, 16)).astype(np.float32)
    expected = _ranges_of_one_batch(model, images)
    threads, ticks = torch.get_num_threads(), []
    ranges = calibration_ranges(model, images, ActivationRanges(skip=UNSCALED_ACTIVATIONS), batch_size,
                                progress=lambda it: (ticks.append(1) or batch for batch in it), workers=workers)
    assert ranges._max == expected._max and len(ranges._max) > 20
    assert len(ticks) == -(-len(images) // batch_size)             # progress ticks once per batch
    # The workers' one torch thread does not stay behind, here or for threads started later.
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == later[0] == threads
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_deit_tiny_calibration_on_threads_equals_one_batch_on_torch_threads():
    """The default model's ranges (so its program) are those of the 64-image batches run one after another."""
    from intvit.quant.architecture import load_model_spec

    model = load_model_spec(None, "deit-tiny", {}).build(0)
    images = np.random.default_rng(3).normal(size=(20, 3, 224, 224)).astype(np.float32)
    expected = _ranges_of_one_batch(model, images)
    ranges = calibration_ranges(model, images, ActivationRanges(skip=UNSCALED_ACTIVATIONS), 64, workers=2)
    assert ranges._max == expected._max


def test_only_minmax_statistics_merge():
    with pytest.raises(IntVitError, match=r"^only minmax calibration statistics merge$"):
        ActivationRanges("percentile").update(ActivationRanges())
