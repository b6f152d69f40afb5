"""Digits grow to a 224-pixel model's size without torch, bit for bit as torch grows them.

``quant.data.upsample_bilinear`` reproduces ``F.interpolate(mode="bilinear", antialias=True)``
of the pinned torch exactly (its taps, its float32/double steps and its fused multiply-adds),
so loading MNIST or digits for DeiT needs no torch and gives the same images, hence the same
calibration and the same programs.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intvit.quant.data import _mnist_pixels, upsample_bilinear
from intvit.quant.errors import IntVitError


def torch_upsample(images: np.ndarray, size: int) -> np.ndarray:
    return F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).numpy()


def mnist(count: int) -> np.ndarray:
    pixels, _ = _mnist_pixels()
    return (pixels[:count].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:, None] / 16.0).astype(np.float32)


@pytest.mark.parametrize("count, size", [(1000, 160), (200, 29), (200, 33), (50, 224)])
def test_mnist_digits_grow_exactly_as_torch_grows_them(count, size):
    images = mnist(count)
    assert np.array_equal(upsample_bilinear(images, size), torch_upsample(images, size))


@pytest.mark.parametrize("size", [9, 160])
def test_sklearn_digits_grow_exactly_as_torch_grows_them(digits, size):
    images = digits
    assert np.array_equal(upsample_bilinear(images, size), torch_upsample(images, size))


@pytest.mark.slow
def test_every_mnist_digit_grows_exactly_to_the_deit_frame():
    images = mnist(5000)
    for start in range(0, len(images), 500):
        chunk = images[start:start + 500]
        assert np.array_equal(upsample_bilinear(chunk, 160), torch_upsample(chunk, 160)), start


def test_random_images_and_several_channels_too():
    images = np.random.default_rng(0).random((4, 3, 17, 17), dtype=np.float32)
    for size in (18, 51, 97):
        assert np.array_equal(upsample_bilinear(images, size), torch_upsample(images, size))


def test_only_enlarging_square_images():
    with pytest.raises(IntVitError, match="enlarges square images"):
        upsample_bilinear(np.zeros((1, 1, 28, 28), np.float32), 20)
    with pytest.raises(IntVitError, match="enlarges square images"):
        upsample_bilinear(np.zeros((1, 1, 28, 27), np.float32), 40)


def test_loading_mnist_for_deit_imports_no_torch():
    script = ("import sys; from intvit.quant.config import get_config; from intvit.quant.data import load_dataset; "
              "x, _, _ = load_dataset('mnist', get_config('deit-tiny'), limit=2); print(x.shape, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split()[-1] == "False" and "224, 224)" in run.stdout


def test_a_pixel_outside_an_outputs_taps_does_not_reach_it():
    """Border outputs have one tap: the NaN or infinity next to it (column or row 1) must not reach them."""
    images = np.random.default_rng(1).random((3, 2, 11, 11), dtype=np.float32)
    images[0, 0, 5, 1], images[1, 1, 1, 6], images[2, 0, 9, 9] = np.nan, np.inf, -np.inf
    images[2, 1] = -0.0
    for size in (12, 37, 160):
        ours, theirs = upsample_bilinear(images, size), torch_upsample(images, size)
        assert np.array_equal(ours, theirs, equal_nan=True), size
        assert np.array_equal(np.signbit(ours), np.signbit(theirs)), size
        assert np.isfinite(ours[0, 0, :, 0]).all() and not np.isfinite(ours[0, 0]).all()
