"""Data sets: fixed splits, shapes, preprocessing, normalisation and error messages."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from intvit.quant.config import get_config
from intvit.quant.data import folder_files, load_dataset, load_image, normalize, split_indices
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
    images, labels, names = load_dataset(str(tmp_path), DEIT, split="all")
    assert names == ["ant", "zebra"]
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(images[0, :, 100, 100], np.array([10, 200, 10]) / 255, atol=1e-6)
    gray, _, _ = load_dataset(str(tmp_path), MNIST, split="all", limit=3)
    assert gray.shape == (3, 1, 28, 28)


def test_image_folder_crop_is_centred(tmp_path):
    (tmp_path / "c").mkdir()
    # Left third black, middle white, right third black: the centre crop keeps only white.
    pixels = np.zeros((64, 96), np.uint8)
    pixels[:, 32:64] = 255
    Image.fromarray(pixels).save(tmp_path / "c" / "bar.png")
    config = get_config("mnist")
    images, _, _ = load_dataset(str(tmp_path), config, split="all")
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
    Image.new("L", (28, 28)).save(tmp_path / "empty_class" / "only.png")
    with pytest.raises(IntVitError, match=r": the evaluation part is empty \(1 images in all\); add images or give "
                                          r"--calib-data"):
        load_dataset(str(tmp_path), MNIST, split="test")
    (tmp_path / "empty_class" / "only.png").unlink()
    write_folder(tmp_path, [(40, 40)])
    good = (tmp_path / "ant" / "0.png").read_bytes()
    (tmp_path / "ant" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(IntVitError, match=r"ant/0\.png: cannot read image"):
        load_dataset(str(tmp_path), MNIST, split="all")
    (tmp_path / "ant" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(IntVitError, match=r"ant/0\.png: cannot read image"):
        load_dataset(str(tmp_path), MNIST, split="all")


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


def test_folder_calibration_part_is_held_apart(tmp_path):
    """A directory's "train" part (calibration) is a fifth of each class, disjoint from "test"."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("L", (28, 28), 10 * i).save(tmp_path / name / f"{i}.png")
    calib, calib_labels, _ = folder_files(tmp_path, None, "train")
    evaluated, labels, _ = folder_files(tmp_path, None, "test")
    assert len(calib) == 4 and len(evaluated) == 16
    assert not set(calib) & set(evaluated) and sorted(calib + evaluated) == sorted(folder_files(tmp_path)[0])
    assert np.bincount(calib_labels).tolist() == [2, 2]
    assert evaluated == sorted(evaluated)                     # file order
    assert folder_files(tmp_path, None, "test", limit=5)[0] == folder_files(tmp_path, None, "test", limit=5)[0]


def test_folder_labels_follow_the_checkpoint_names(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("L", (28, 28)).save(tmp_path / name / "0.png")
    config = dataclasses.replace(MNIST, num_classes=3, labels=("dog", "bird", "cat"))
    _, labels, names = folder_files(tmp_path, config)
    assert names == ["dog", "bird", "cat"] and labels.tolist() == [2, 0]
    _, labels, names = folder_files(tmp_path, dataclasses.replace(config, labels=()))
    assert names == ["cat", "dog"] and labels.tolist() == [0, 1]


def test_sixteen_bit_images_are_scaled_and_wider_ones_refused(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (28, 28), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    np.testing.assert_allclose(load_image(tmp_path / "deep.png", MNIST)[0], pixels / 65535, atol=1e-6)
    rgb = load_image(tmp_path / "deep.png", dataclasses.replace(DEIT, img_size=28, patch_size=4))
    np.testing.assert_allclose(rgb[2], pixels / 65535, atol=1e-6)
    # Resized in float: a 16-bit ramp keeps its fine steps instead of becoming 8-bit.
    Image.fromarray(np.tile(np.arange(0, 56 * 1000, 1000, dtype=np.uint16), (56, 1))).save(tmp_path / "ramp.png")
    ramp = load_image(tmp_path / "ramp.png", dataclasses.replace(MNIST, resize=(28, 28)))
    assert ramp.max() < 0.9 and len(np.unique(ramp)) > 20
    Image.fromarray(pixels.astype(np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(IntVitError, match=r"wide\.tif: 32-bit integer pixels are not supported; save 8- or 16-bit"):
        load_image(tmp_path / "wide.tif", MNIST)
    Image.fromarray(pixels.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(IntVitError, match=r"float\.tif: floating-point pixels are not supported"):
        load_image(tmp_path / "float.tif", MNIST)


@pytest.mark.parametrize("resize, first_column", [((30,), 1), ((28, 28), 0), ((), 0)])
def test_resize_rules(tmp_path, resize, first_column):
    """(n,) resizes the shorter side then crops with transformers' floored offsets; (h, w) resizes
    exactly; () keeps an image already at the input size."""
    pixels = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))
    Image.fromarray(pixels).save(tmp_path / "ramp.png")
    config = dataclasses.replace(MNIST, resize=resize, interpolation="nearest")
    image = load_image(tmp_path / "ramp.png", config)[0]
    assert image.shape == (28, 28)
    expected = np.asarray(Image.fromarray(pixels).resize(
        (resize[0], resize[0]) if len(resize) == 1 else (28, 28), Image.Resampling.NEAREST), np.float32) / 255
    np.testing.assert_array_equal(image, expected[first_column:first_column + 28, first_column:first_column + 28])
