"""IntProgram: PTQ of a small random ViT, bit-exact save/load round trip, file-format errors,
calibration options and input checks."""

import json
import re

import numpy as np
import pytest
import torch

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.program import FORMAT_VERSION, IntProgram, Op, load_program
from intvit.quant.ptq import quantize_model

SMALL = ViTConfig("small", img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                  num_heads=2, mlp_ratio=2.0)
# timm's 0.02 init leaves near-constant activations; this spread gives a model with real signal.
WEIGHT_NOISE = 0.2
MANIFEST_KEY = "__manifest__"


def small_model(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    model = ViT(SMALL).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * WEIGHT_NOISE)
    return model


def images(count: int, seed: int = 0, shape=(3, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def program(model):
    return quantize_model(model, images(16), batch_size=8)


@pytest.fixture
def saved(program, tmp_path):
    return program.save(tmp_path / "small.intvit")


def read_archive(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(arrays.pop(MANIFEST_KEY).tobytes().decode()), arrays


def write_archive(path, manifest, arrays):
    text = json.dumps(manifest).encode()
    with open(path, "wb") as handle:
        np.savez(handle, **{MANIFEST_KEY: np.frombuffer(text, dtype=np.uint8)}, **arrays)


def error_for(path, message):
    return pytest.raises(IntVitError, match="^" + re.escape(str(path)) + message)


# ------------------------------------------------------------------------------------ round trip
def test_program_shape(program):
    kinds = [op.kind for op in program.ops]
    assert kinds.count("matmul") == 1 + SMALL.depth * 6 + 1
    assert kinds.count("softmax") == kinds.count("gelu") == SMALL.depth
    assert kinds.count("layernorm") == 2 * SMALL.depth + 1
    assert program.output == "logits" and program.calibration == {"method": "minmax", "images": 16}
    outputs = [name for op in program.ops for name in op.outputs]
    assert len(outputs) == len(set(outputs)), "every tensor is written once"
    assert set(outputs) | {"input"} == set(program.tensors)
    assert program.matmuls() == [op for op in program.ops if op.kind == "matmul"]


def test_save_load_round_trip_is_bit_exact(program, saved):
    loaded = load_program(saved)
    assert loaded.config == program.config
    assert loaded.ops == program.ops
    assert loaded.tensors == program.tensors
    assert loaded.input_scale == program.input_scale
    assert loaded.output == program.output and loaded.calibration == program.calibration
    assert loaded.constants.keys() == program.constants.keys()
    for name, value in program.constants.items():
        assert loaded.constants[name].dtype == value.dtype, name
        assert np.array_equal(loaded.constants[name], value), name
    x = program.quantize_input(images(6, seed=1))
    assert np.array_equal(run_program(loaded, x), run_program(program, x))
    # Saving the loaded program again writes the same manifest and constants.
    again = read_archive(loaded.save(saved.with_name("again.intvit")))
    first = read_archive(saved)
    assert again[0] == first[0]
    assert all(np.array_equal(again[1][k], v) for k, v in first[1].items())


def test_save_keeps_any_suffix(program, tmp_path):
    path = program.save(tmp_path / "model.bin")
    assert path == tmp_path / "model.bin" and path.is_file()
    assert not (tmp_path / "model.bin.npz").exists()


# ------------------------------------------------------------------------------------ file errors
def test_missing_file(tmp_path):
    path = tmp_path / "absent.intvit"
    with error_for(path, r": no such program file$"):
        load_program(path)
    with error_for(tmp_path, r": no such program file$"):
        load_program(tmp_path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with error_for(saved, r": not a readable intvit program \(truncated or corrupt: .+\)$"):
        load_program(saved)


@pytest.mark.parametrize("content", [b"", b"hello, not a program\n", b"PK\x03\x04garbage"])
def test_non_program_bytes(tmp_path, content):
    path = tmp_path / "junk.intvit"
    path.write_bytes(content)
    with error_for(path, r": not a readable intvit program \(truncated or corrupt: .+\)$"):
        load_program(path)


def test_npz_without_manifest(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, weights=np.zeros(3, dtype=np.int8))
    with error_for(path, r": not an intvit program \(no manifest\)$"):
        load_program(path)


def test_manifest_of_another_format(saved):
    manifest, arrays = read_archive(saved)
    manifest["format"] = "something-else"
    write_archive(saved, manifest, arrays)
    with error_for(saved, r": not an intvit program$"):
        load_program(saved)


def test_corrupt_manifest(saved):
    _, arrays = read_archive(saved)
    with open(saved, "wb") as handle:
        np.savez(handle, **{MANIFEST_KEY: np.frombuffer(b"{not json", dtype=np.uint8)}, **arrays)
    with error_for(saved, r": corrupt manifest \(.+\)$"):
        load_program(saved)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None])
def test_file_of_another_version(saved, version):
    manifest, arrays = read_archive(saved)
    manifest["version"] = version
    write_archive(saved, manifest, arrays)
    with error_for(saved, rf": program format version {version} is not supported "
                          rf"\(this intvit reads version {FORMAT_VERSION}\)$"):
        load_program(saved)


def test_missing_constant(saved):
    manifest, arrays = read_archive(saved)
    del arrays["blocks.1.mlp.fc1.weight"]
    write_archive(saved, manifest, arrays)
    with error_for(saved, r": constant 'blocks\.1\.mlp\.fc1\.weight' is missing$"):
        load_program(saved)


def test_constant_of_the_wrong_dtype_or_shape(saved):
    manifest, arrays = read_archive(saved)
    arrays["head.bias"] = arrays["head.bias"].astype(np.int64)
    write_archive(saved, manifest, arrays)
    with error_for(saved, r": constant 'head\.bias' is int64\[5\], manifest says int32\[5\]$"):
        load_program(saved)
    arrays["head.bias"] = np.zeros(4, dtype=np.int32)
    write_archive(saved, manifest, arrays)
    with error_for(saved, r": constant 'head\.bias' is int32\[4\], manifest says int32\[5\]$"):
        load_program(saved)


# --------------------------------------------------------------------------- records and builders
def test_program_holds_integers_only(program):
    with pytest.raises(IntVitError, match=r"^constant 'w' has dtype float32; the program holds integers only$"):
        IntProgram(SMALL, [], {"w": np.zeros(2, dtype=np.float32)}, {}, input_scale=1.0)


def test_op_validation():
    with pytest.raises(IntVitError, match=r"^op 'x': unknown kind 'conv'$"):
        Op("conv", "x", ("a",), ("b",))
    with pytest.raises(IntVitError, match=r"^op 'x': attribute bits must be an integer, not 8\.0$"):
        Op("requant", "x", ("a", "m", "s"), ("b",), {"bits": 8.0})
    with pytest.raises(IntVitError, match=r"^op 'x': attribute transpose_b must be an integer, not True$"):
        Op("matmul", "x", ("a", "b"), ("c",), {"transpose_b": True})


def test_empty_calibration_set(model):
    with pytest.raises(IntVitError, match=r"^the calibration set is empty$"):
        quantize_model(model, np.zeros((0, 3, 16, 16), dtype=np.float32))


def test_calibration_images_need_four_dimensions(model):
    with pytest.raises(IntVitError, match=r"^calibration images must be \(N, C, H, W\)$"):
        quantize_model(model, np.zeros((3, 16, 16), dtype=np.float32))


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 8, 8), (3, 16, 17)])
def test_calibration_images_of_the_wrong_size_or_channels(model, shape):
    with pytest.raises(IntVitError, match=rf"^calibration images are {re.escape(str(shape))}, model 'small' "
                                          r"takes \(3, 16, 16\)$"):
        quantize_model(model, images(2, shape=shape))


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 8, 8), (3, 16, 16), (2, 3, 16, 16, 1)])
def test_quantize_input_checks_the_image_shape(program, shape):
    with pytest.raises(IntVitError, match=r"^images must be \(batch, 3, 16, 16\) for model 'small', "
                                          rf"got {re.escape(str(shape))}$"):
        program.quantize_input(np.zeros(shape, dtype=np.float32))


def test_quantize_input_rounds_and_saturates(program):
    s = program.input_scale
    x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    x[0, 0, 0, :6] = [0.49 * s, 0.51 * s, -1.49 * s, 1000 * s, -1000 * s, 127 * s]
    q = program.quantize_input(x)
    assert q.dtype == np.int8 and q[0, 0, 0, :6].tolist() == [0, 1, -1, 127, -128, 127]


def test_both_calibration_methods(model):
    calibration = images(16)
    minmax = quantize_model(model, calibration)
    percentile = quantize_model(model, calibration, method="percentile", percentile=99.0)
    assert percentile.calibration == {"method": "percentile", "images": 16, "percentile": 99.0}
    # A percentile range is never wider than the maximum, and clips some of these activations.
    pairs = [(minmax.tensors[n].scale, percentile.tensors[n].scale) for n in minmax.tensors
             if minmax.tensors[n].scale is not None and n.endswith(("norm1", "fc1", "proj"))]
    assert all(p <= m for m, p in pairs) and any(p < m for m, p in pairs)
    assert percentile.input_scale < minmax.input_scale
    x = minmax.quantize_input(images(4, seed=2))
    assert run_program(percentile, x).shape == run_program(minmax, x).shape == (4, SMALL.num_classes)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "kl"}, r"^calibration method must be one of minmax, percentile, not 'kl'$"),
    ({"method": "percentile", "percentile": 0}, r"^percentile must be in \(0, 100\], not 0$"),
    ({"method": "percentile", "percentile": 100.5}, r"^percentile must be in \(0, 100\], not 100\.5$"),
])
def test_calibration_option_errors(model, kwargs, message):
    with pytest.raises(IntVitError, match=message):
        quantize_model(model, images(2), **kwargs)


def test_calibration_batch_size_does_not_change_the_program(model, program):
    other = quantize_model(model, images(16), batch_size=5)
    assert other.ops == program.ops
    assert all(np.array_equal(other.constants[k], v) for k, v in program.constants.items())
