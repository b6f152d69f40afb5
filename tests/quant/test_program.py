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
from intvit.quant.program import FORMAT_VERSION, OP_KINDS, OP_SPECS, IntProgram, Op, check_program, load_program
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


@pytest.mark.parametrize("version", [FORMAT_VERSION - 1, FORMAT_VERSION + 1, 0, None])
def test_file_of_another_version(saved, version):
    manifest, arrays = read_archive(saved)
    manifest["version"] = version
    write_archive(saved, manifest, arrays)
    with error_for(saved, rf": program format version {version} is not supported "
                          rf"\(this intvit reads version {FORMAT_VERSION}; run `intvit quantize` again to rebuild it\)$"):
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


# ------------------------------------------------------------------- validation on load (issue 11)
# Each case edits a saved program's manifest and arrays as a hostile or broken writer would; the
# loader must refuse it with one line naming the file and the field. The program is SMALL:
# embed_dim 32, 2 heads, patch 4 (patch_dim 48), 17 tokens, mlp_dim 64, 5 classes.
def _set(arrays, name, index, value, dtype=None):
    array = arrays[name].astype(dtype or arrays[name].dtype).copy()
    array.flat[index] = value
    arrays[name] = array


def _op(manifest, name):
    return next(op for op in manifest["ops"] if op["name"] == name)


def _widen_qkv(manifest, arrays):
    for suffix in ("weight", "bias", "multiplier", "shift"):
        name = f"blocks.0.attn.qkv.{suffix}"
        arrays[name] = np.concatenate([arrays[name], arrays[name]], axis=-1)
        manifest["constants"][name][1] = list(arrays[name].shape)


def _narrow_qkv(manifest, arrays):
    for suffix in ("weight", "bias", "multiplier", "shift"):     # 64 = mlp_dim: a width the config has
        name = f"blocks.0.attn.qkv.{suffix}"
        arrays[name] = arrays[name][..., :64]
        manifest["constants"][name][1] = list(arrays[name].shape)


def _retype(manifest, arrays, name, value, dtype):
    _set(arrays, name, 0, value, dtype)
    manifest["constants"][name][0] = str(np.dtype(dtype))


def _swap_first_ops(manifest, arrays):
    manifest["ops"][0], manifest["ops"][1] = manifest["ops"][1], manifest["ops"][0]


QKV_REQUANT = "op 'blocks.0.attn.qkv.requant'"
BAD_PROGRAMS = {
    # requantisation (shift range, multiplier width and sign)
    "shift 0": (lambda m, a: _set(a, "blocks.0.attn.qkv.shift", 3, 0), rf"{QKV_REQUANT}: shift must be in \[1, 62\], not 0"),
    "shift -5": (lambda m, a: _set(a, "blocks.0.attn.qkv.shift", 0, -5), rf"{QKV_REQUANT}: shift must be in \[1, 62\], not -5"),
    "shift 100": (lambda m, a: _set(a, "blocks.0.attn.qkv.shift", 0, 100), rf"{QKV_REQUANT}: shift must be in \[1, 62\], not 100"),
    "negative multiplier": (lambda m, a: _set(a, "blocks.0.attn.qkv.multiplier", 0, -7),
                            rf"{QKV_REQUANT}: multiplier must be in \[0, 2\*\*31\), not -7"),
    "multiplier 2**50": (lambda m, a: _retype(m, a, "blocks.0.attn.qkv.multiplier", 2**50, np.int64),
                         rf"{QKV_REQUANT}: constant 'blocks.0.attn.qkv.multiplier' must be int32, not int64"),
    "multiplier of 29 bits": (lambda m, a: _set(a, "blocks.0.attn.qkv.multiplier", 0, 2**29),
                              rf"{QKV_REQUANT}: multiplier 536870912 has fewer than 31 significant bits at shift \d+ "
                              r"\(only shift 62 allows it\)"),
    "requant to 16 bits": (lambda m, a: _op(m, "blocks.0.attn.qkv.requant")["attrs"].update(bits=16),
                           rf"{QKV_REQUANT}: bits must be one of 8, 17, 32, not 16"),
    "layernorm shift 0": (lambda m, a: _set(a, "norm.shift", 0, 0), r"op 'norm': shift must be in \[1, 62\], not 0"),
    "layernorm divisor": (lambda m, a: _op(m, "norm")["attrs"].update(mean_shift=30),
                          r"op 'norm': mean_shift must be 29 for rows of 32, not 30"),
    # residual add
    "add shift 0": (lambda m, a: _op(m, "blocks.0.residual")["attrs"].update(shift=0),
                    r"op 'blocks\.0\.residual': shift must be in \[1, 62\], not 0"),
    "add multiplier 2**50": (lambda m, a: _op(m, "blocks.0.residual")["attrs"].update(m_a=2**50),
                             r"op 'blocks\.0\.residual': m_a must be in \[0, 2\*\*22\), not 1125899906842624"),
    "negative add multiplier": (lambda m, a: _op(m, "pos_embed")["attrs"].update(m_b=-3),
                                r"op 'pos_embed': m_b must be in \[0, 2\*\*22\), not -3"),
    "add multipliers too small": (lambda m, a: _op(m, "blocks.0")["attrs"].update(m_a=1000, m_b=1000),
                                  r"op 'blocks\.0': the larger multiplier 1000 is below 2\*\*20 at shift 21 "
                                  r"\(only shift 62 allows it\)"),
    # scales
    "input_scale 0": (lambda m, a: m.update(input_scale=0.0), r"input_scale must be a finite positive number, not 0\.0"),
    "input_scale NaN": (lambda m, a: m.update(input_scale=float("nan")),
                        r"input_scale must be a finite positive number, not nan"),
    "input_scale negative": (lambda m, a: m.update(input_scale=-0.5),
                             r"input_scale must be a finite positive number, not -0\.5"),
    "input_scale true": (lambda m, a: m.update(input_scale=True), r"manifest: input_scale must be int or float, not True"),
    "tensor scale inf": (lambda m, a: m["tensors"]["embed"].update(scale=float("inf")),
                         r"tensors\['embed'\]\.scale must be a finite positive number, not inf"),
    "logit scale missing": (lambda m, a: m["tensors"]["logits"].update(scale=None),
                            r"tensors\['logits'\]\.scale must be a number: the logits' real scale"),
    # shapes against the config
    "qkv weight twice too wide": (_widen_qkv, r"op 'blocks\.0\.attn\.qkv': weight \(32, 192\) does not fit the config "
                                              r"\(its widths are 5, 32, 48, 64, 96\)"),
    "qkv weight of the mlp width": (_narrow_qkv, r"op 'blocks\.0\.attn\.split': input must be 3 x embed_dim = 96 "
                                                 r"wide, not 64"),
    "heads 3 in the config": (lambda m, a: m["config"].update(num_heads=3),
                              r"config: embed_dim 32 is not a multiple of num_heads 3"),
    "heads 4 in the config only": (lambda m, a: m["config"].update(num_heads=4),
                                   r"op 'blocks\.0\.attn\.split': heads must be the config's num_heads 4, not 2"),
    "heads 3 in an op": (lambda m, a: _op(m, "blocks.1.attn.split")["attrs"].update(heads=3),
                         r"op 'blocks\.1\.attn\.split': heads must be the config's num_heads 2, not 3"),
    "patch 7": (lambda m, a: _op(m, "patch_embed.patchify")["attrs"].update(patch=7),
                r"op 'patch_embed\.patchify': patch must be the config's patch_size 4, not 7"),
    "patch 7 in the config": (lambda m, a: m["config"].update(patch_size=7),
                              r"config: img_size 16 is not a multiple of patch_size 7"),
    "patch 8 everywhere": (lambda m, a: (m["config"].update(patch_size=8),
                                         _op(m, "patch_embed.patchify")["attrs"].update(patch=8)),
                           r"op 'patch_embed\.proj': inner dimensions differ \(\(1, 4, 192\) @ \(48, 32\)\)"),
    "bias of the wrong length": (lambda m, a: (a.update({"head.bias": a["head.bias"][:4]}),
                                               m["constants"]["head.bias"][1].__setitem__(0, 4)),
                                 r"op 'head': bias must have shape \(5,\), not \(4,\)"),
    "bias that overflows INT32": (lambda m, a: _set(a, "head.bias", 0, 2**31 - 1),
                                  r"op 'head': INT32 accumulator can overflow \(K=32, worst-case \|sum\| \d+ > 2147483647\)"),
    "select past the tokens": (lambda m, a: _op(m, "cls")["attrs"].update(index=17),
                               r"op 'cls': index must be in \[0, 17\), not 17"),
    "transpose 2": (lambda m, a: _op(m, "blocks.0.attn.qk")["attrs"].update(transpose_b=2),
                    r"op 'blocks\.0\.attn\.qk': transpose_b must be 0 or 1, not 2"),
    "weight as int16": (lambda m, a: _retype(m, a, "head.weight", 1, np.int16),
                        r"op 'head': constant 'head\.weight' must be int8, not int16"),
    # structure: keys, attributes, order
    "missing ops": (lambda m, a: m.pop("ops"), r"manifest: missing key 'ops'"),
    "missing input_scale": (lambda m, a: m.pop("input_scale"), r"manifest: missing key 'input_scale'"),
    "missing config key": (lambda m, a: m["config"].pop("depth"), r"config: missing key 'depth'"),
    "config mlp_ratio string": (lambda m, a: m["config"].update(mlp_ratio="2"),
                                r"config\.mlp_ratio must be a finite number, not '2'"),
    "unknown manifest key": (lambda m, a: m.update(extra=1), r"manifest: unexpected key 'extra'"),
    "missing op attribute": (lambda m, a: _op(m, "patch_embed.patchify")["attrs"].pop("patch"),
                             r"op 'patch_embed\.patchify': missing attribute patch"),
    "unknown op attribute": (lambda m, a: _op(m, "blocks.0.attn.softmax")["attrs"].update(temperature=2),
                             r"op 'blocks\.0\.attn\.softmax': unexpected attribute temperature"),
    "missing op key": (lambda m, a: m["ops"][3].pop("inputs"), r"op 'cls_token': missing key 'inputs'"),
    "op of an unknown kind": (lambda m, a: m["ops"][3].update(kind="conv"), r"op 'cls_token': unknown kind 'conv'"),
    "operand used before it is written": (_swap_first_ops,
                                          r"op 'patch_embed\.proj': operand 'patch_embed\.patches' is not written by "
                                          r"an earlier op"),
    "requant operand count": (lambda m, a: _op(m, "head")["inputs"].append("head.bias"),
                              r"op 'head': matmul takes 2 or 3 operands and writes 1, not 4 and 1"),
    "tensor bits disagree": (lambda m, a: m["tensors"]["embed"].update(bits=32),
                             r"tensors\['embed'\]\.bits is 32, but its op writes 8 bits"),
    "output that no op writes": (lambda m, a: m.update(output="nothing"),
                                 r"output 'nothing' is not a tensor of the program"),
    "output that is not the logits": (lambda m, a: m.update(output="norm"),
                                      r"output 'norm' is 8-bit \(1, 32\), not INT32 logits of shape \(batch, 5\)"),
    "array not in the manifest": (lambda m, a: a.update(extra=np.zeros(2, np.int8)),
                                  r"array 'extra' is not in the manifest"),
}


@pytest.mark.parametrize("case", BAD_PROGRAMS)
def test_bad_program_is_refused_naming_file_and_field(saved, case):
    edit, message = BAD_PROGRAMS[case]
    manifest, arrays = read_archive(saved)
    edit(manifest, arrays)
    write_archive(saved, manifest, arrays)
    with error_for(saved, ": " + message + "$"):
        load_program(saved)


def test_every_op_kind_has_a_check():
    assert set(OP_SPECS) == set(OP_KINDS)


def test_quantised_programs_pass_the_loader_checks(program):
    check_program(program)      # the bounds PTQ guarantees are the ones the loader enforces


def _raw_manifest(path, text: bytes):
    _, arrays = read_archive(path)
    with open(path, "wb") as handle:
        np.savez(handle, **{MANIFEST_KEY: np.frombuffer(text, dtype=np.uint8)}, **arrays)


@pytest.mark.parametrize("text, message", [
    (b'{"format": "intvit-program", "version": 2, "name": "\xff\xfe"}', r"corrupt manifest \('utf-8' codec .+\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"corrupt manifest \(nested too deeply\)"),
    (b"[1, 2]", r"not an intvit program"),
])
def test_manifest_that_is_not_utf8_json_or_an_object(saved, text, message):
    _raw_manifest(saved, text)
    with error_for(saved, ": " + message + "$"):
        load_program(saved)


@pytest.mark.parametrize("deflated", [False, True])
def test_corrupt_member_data(saved, deflated):
    if deflated:                                  # as intvit wrote programs before they were stored
        manifest, arrays = read_archive(saved)
        with open(saved, "wb") as handle:
            np.savez_compressed(handle, **{MANIFEST_KEY: np.frombuffer(json.dumps(manifest).encode(), np.uint8)},
                                **arrays)
    data = bytearray(saved.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(64)          # inside a member's data, headers intact
    saved.write_bytes(bytes(data))
    with error_for(saved, r": not a readable intvit program \(truncated or corrupt: .+\)$"):
        load_program(saved)


def test_a_deflated_program_file_still_loads(program, saved):
    manifest, arrays = read_archive(saved)
    with open(saved, "wb") as handle:
        np.savez_compressed(handle, **{MANIFEST_KEY: np.frombuffer(json.dumps(manifest).encode(), np.uint8)}, **arrays)
    loaded = load_program(saved)
    assert loaded.manifest() == program.manifest()
    assert all(np.array_equal(loaded.constants[k], v) for k, v in program.constants.items())


def test_declared_size_over_the_limit(saved, monkeypatch):
    import intvit.quant.program as program_module

    monkeypatch.setattr(program_module, "MAX_PROGRAM_BYTES", 1000)
    with error_for(saved, r": holds [\d,]+ bytes uncompressed; a program is at most 1,000 bytes$"):
        load_program(saved)


# Fuzz: every number of a real program file replaced by values outside what the quantiser
# writes. Each mutation must be refused on load, or give exactly the original results
# (logits and every tensor shape): never a silent change.
def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def _mutations(path, value):
    outside = [-1, -value, 2**63, 2**70, float("nan"), float("inf"), -float("inf"), 1e-310, None, True, "7", [value]]
    if isinstance(value, int):
        outside.append(value + 0.5)
    if path[-1] not in ("m_a", "m_b"):      # a zero add multiplier is one the quantiser writes (a negligible operand)
        outside.append(0)
    return [v for v in outside if not (v == value and type(v) is type(value))]


def _constant_mutations(arrays):
    for name, value in arrays.items():
        if name.endswith(".shift"):
            values = (0, -1, 63, 127, -128)
        elif name.endswith(".multiplier"):
            values = (-1, -(2**31), 0, 2**30 - 1)
        elif name.endswith(".bias"):
            values = (2**31 - 1, -(2**31))
        else:
            continue
        for v in values:
            yield name, v


def _fuzz_cases(manifest, arrays):
    cases = [("manifest", path, v) for path, value in _leaves(manifest) for v in _mutations(path, value)]
    return cases + [("constant", name, v) for name, v in _constant_mutations(arrays)]


def _apply(manifest, arrays, case):
    manifest, arrays = json.loads(json.dumps(manifest)), dict(arrays)
    where, target, value = case
    if where == "constant":
        _set(arrays, target, 0, value)
        return manifest, arrays
    node = manifest
    for key in target[:-1]:
        node = node[key]
    node[target[-1]] = value
    return manifest, arrays


def _run_fuzz(program, saved, sample: int | None):
    manifest, arrays = read_archive(saved)
    cases = _fuzz_cases(manifest, arrays)
    if sample is not None:
        rng = np.random.default_rng(11)
        cases = [cases[i] for i in sorted(rng.choice(len(cases), size=min(sample, len(cases)), replace=False))]
    x = program.quantize_input(images(3, seed=4))
    expected, shapes = run_program(program, x), program.tensor_shapes(3)
    refused = 0
    for case in cases:
        write_archive(saved, *_apply(manifest, arrays, case))
        try:
            loaded = load_program(saved)
        except IntVitError as exc:
            assert str(exc).startswith(f"{saved}: ") and "\n" not in str(exc), (case, exc)
            refused += 1
            continue
        assert np.array_equal(run_program(loaded, x), expected), f"silent change of the logits: {case}"
        assert loaded.tensor_shapes(3) == shapes, f"silent change of a shape: {case}"
    return refused, len(cases)


def test_fuzzed_numbers_are_refused_or_change_nothing(program, saved):
    refused, total = _run_fuzz(program, saved, sample=100)
    assert refused > 0.9 * total, (refused, total)


@pytest.mark.slow
def test_fuzzed_numbers_every_mutation(program, saved):
    _run_fuzz(program, saved, sample=None)
