"""Data sets: fixed splits, shapes, preprocessing, normalisation and error messages."""

import numpy as np
import pytest
import torch
from PIL import Image

from intvit.quant.config import get_config
from intvit.quant.data import load_dataset, load_image, normalize, split_indices
from intvit.quant.errors import IntVitError

MNIST = get_config("mnist")
DEIT = get_config("deit-tiny")


def test_mnist_split_is_fixed_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 500)
    train, test = split_indices(labels, "train"), split_indices(labels, "test")
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [100] * 10
    np.testing.assert_array_equal(test, split_indices(labels, "test"))
    # Shuffled order, so that a limit keeps several classes.
    assert len(set(labels[test[:20]])) > 3


def test_mnist_test_split():
    images, labels, names = load_dataset("mnist", MNIST, split="test")
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [100] * 10
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.99
    assert names == [str(d) for d in range(10)]


def test_limit_and_resize_to_another_config():
    images, labels, _ = load_dataset("mnist", DEIT, split="train", limit=5)
    assert images.shape == (5, 3, 224, 224) and labels.shape == (5,)
    np.testing.assert_array_equal(images[:, 0], images[:, 2])


def test_digits_framed_like_mnist():
    images, labels, _ = load_dataset("digits", MNIST, split="test")
    assert images.shape == (360, 1, 28, 28)
    assert len(load_dataset("digits", MNIST, split="train")[1]) == 1797 - 360
    # The 8x8 digit fills the central 20x20; the 4-pixel border stays black as in MNIST.
    assert images[:, :, :4].max() == 0 and images[:, :, -4:].max() == 0
    assert images.max() <= 1.0


def test_normalize_numpy_and_torch_agree():
    images = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    out = normalize(images, DEIT)
    expected = (images[:, 1] - DEIT.mean[1]) / DEIT.std[1]
    np.testing.assert_allclose(out[:, 1], expected, rtol=1e-6)
    torch.testing.assert_close(normalize(torch.from_numpy(images), DEIT), torch.from_numpy(out))
    with pytest.raises(IntVitError, match=r"images must have shape \(N, 1, H, W\) for mnist"):
        normalize(images, MNIST)


def write_folder(root, sizes):
    """Two classes, written out of name order, with images of the given sizes."""
    for cls, color in (("zebra", (200, 10, 10)), ("ant", (10, 200, 10))):
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, color).save(root / cls / f"{i}.png")


def test_image_folder_classes_sorted_and_imagenet_preprocessed(tmp_path):
    write_folder(tmp_path, [(300, 200), (180, 260)])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    images, labels, names = load_dataset(str(tmp_path), DEIT)
    assert names == ["ant", "zebra"]
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(images[0, :, 100, 100], np.array([10, 200, 10]) / 255, atol=1e-6)
    gray, _, _ = load_dataset(str(tmp_path), MNIST, limit=3)
    assert gray.shape == (3, 1, 28, 28)


def test_image_folder_crop_is_centred(tmp_path):
    (tmp_path / "c").mkdir()
    # Left third black, middle white, right third black: the centre crop keeps only white.
    pixels = np.zeros((64, 96), np.uint8)
    pixels[:, 32:64] = 255
    Image.fromarray(pixels).save(tmp_path / "c" / "bar.png")
    config = get_config("mnist")
    images, _, _ = load_dataset(str(tmp_path), config)
    # Shorter side 64 -> 32, longer 96 -> 48; the 28-wide crop starts at column 10 of 48.
    assert images[0, 0, :, 8:20].min() > 0.9
    assert images[0, 0, :, 0].max() < 0.2


@pytest.mark.parametrize(
    "spec, split, limit, message",
    [
        ("imagenet", "test", None, r"unknown dataset 'imagenet': not mnist, digits or an existing directory"),
        ("mnist", "val", None, r"split must be one of train, test, all, not 'val'"),
        ("mnist", "test", 0, r"limit must be a positive integer, not 0"),
        ("./no/such/dir", "test", None, r"no/such/dir: no such directory"),
    ],
)
def test_spec_errors(spec, split, limit, message):
    with pytest.raises(IntVitError, match=message):
        load_dataset(spec, MNIST, split=split, limit=limit)


def test_folder_errors(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(IntVitError, match=r": no images found in <class>/<image> subdirectories"):
        load_dataset(str(tmp_path), MNIST)
    with pytest.raises(IntVitError, match=r"a directory is an evaluation set and has no train split"):
        load_dataset(str(tmp_path), MNIST, split="train")
    write_folder(tmp_path, [(40, 40)])
    good = (tmp_path / "ant" / "0.png").read_bytes()
    (tmp_path / "ant" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(IntVitError, match=r"ant/0\.png: cannot read image"):
        load_dataset(str(tmp_path), MNIST)
    (tmp_path / "ant" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(IntVitError, match=r"ant/0\.png: cannot read image"):
        load_dataset(str(tmp_path), MNIST)


def test_image_at_model_resolution_is_taken_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    image = load_image(tmp_path / "digit.png", get_config("mnist"))
    assert image.shape == (1, 28, 28)
    np.testing.assert_array_equal(image[0], pixels / np.float32(255))


def test_unreadable_single_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    message = r"broken\.png: cannot read image \(UnidentifiedImageError: cannot identify image file "
    with pytest.raises(IntVitError, match=message):
        load_image(tmp_path / "broken.png", get_config("mnist"))
