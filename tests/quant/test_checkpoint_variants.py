"""ViT-family variants: the pooling kernels, their programs, and how checkpoints are resolved or refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from intvit.quant.architecture import load_model_spec
from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.pool import int_average, int_token_mean
from intvit.quant.program import check_program, load_program
from intvit.quant.ptq import quantize_model

BASE = ViTConfig("small", img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                 mlp_ratio=2.0)
VARIANTS = {
    "distilled": dict(dist_token=True),
    "avg_pool": dict(global_pool="avg"),
    "avg_pool_no_class_token": dict(global_pool="avg", class_token=False),
    "no_qkv_bias_tanh": dict(qkv_bias=False, gelu="tanh"),
}
VECTORS = 5000
# Random-weight models of this size reach 17-31 dB (distilled lowest); a broken head or pooling falls far below.
MIN_LOGIT_SQNR_DB = 15


# ----------------------------------------------------------------------------------- kernels
def test_token_mean_rounds_half_up_exactly():
    rng = np.random.default_rng(0)
    for tokens in (1, 2, 3, 7, 65, 197):
        x = rng.integers(-128, 128, size=(VECTORS // tokens + 1, tokens + 1, 3), dtype=np.int8)
        got = int_token_mean(x, start=1)
        total = x[:, 1:].astype(np.int64).sum(axis=1)
        # floor(total / n + 1/2) from exact rationals, independent of the kernel's formula.
        expected = np.array([int(np.floor(t / tokens + 0.5)) if abs(t) < 2**52 else None for t in total.ravel()])
        assert got.dtype == np.int8 and np.array_equal(got.ravel(), expected.astype(np.int64))
    edges = np.array([[[-128], [-128]], [[127], [127]], [[-1], [0]], [[1], [0]], [[-3], [0]]], dtype=np.int8)
    assert int_token_mean(edges).ravel().tolist() == [-128, 127, 0, 1, -1]   # -0.5 -> 0, 0.5 -> 1, -1.5 -> -1
    with pytest.raises(IntVitError, match=r"int_token_mean: start 2 leaves no token of 2"):
        int_token_mean(edges, start=2)


def test_average_of_two_heads_rounds_half_up_without_overflow():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(-2**31, 2**31, size=VECTORS, dtype=np.int64).astype(np.int32) for _ in range(2))
    expected = np.floor((a.astype(np.float64) + b.astype(np.float64)) / 2 + 0.5).astype(np.int64)
    assert np.array_equal(int_average(a, b), expected)
    top, bottom = np.int32(2**31 - 1), np.int32(-2**31)
    edges = int_average(np.array([top, bottom, -1, 1, -3], np.int32), np.array([top, bottom, 0, 0, 0], np.int32))
    assert edges.tolist() == [2**31 - 1, -2**31, 0, 1, -1]


# ----------------------------------------------------------------------------------- programs
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_programs_run_check_and_round_trip(tmp_path, variant):
    from intvit.sim.config import AcceleratorConfig
    from intvit.sim.simulator import simulate

    config = dataclasses.replace(BASE, **VARIANTS[variant])
    torch.manual_seed(0)
    model = ViT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    images = np.random.default_rng(0).normal(size=(12, 3, 16, 16)).astype(np.float32)
    program = quantize_model(model, images[:8])
    check_program(program)
    x = program.quantize_input(images[8:])
    logits = run_program(program, x)
    assert logits.dtype == np.int32 and logits.shape == (4, 5)
    again = load_program(program.save(tmp_path / "p.npz"))
    assert again.config == config and np.array_equal(run_program(again, x), logits)
    report = simulate(program, AcceleratorConfig(), x)
    assert np.array_equal(report.logits, logits)
    kinds = {op.kind: op for op in report.ops}
    for kind in ("token_mean", "average"):
        if kind in {op.kind for op in program.ops}:
            assert kinds[kind].unit == "requant" and kinds[kind].cycles > 0
    with torch.no_grad():
        float_logits = model(torch.from_numpy(images[8:])).numpy()
    scale = program.tensors[program.output].scale
    error = logits * scale - float_logits
    assert 10 * np.log10(np.square(float_logits).sum() / np.square(error).sum()) > MIN_LOGIT_SQNR_DB
    if config.dist_token:
        # The average is exact only on one scale: both heads quantised with one weight scale.
        assert program.tensors["head.logits"].scale == program.tensors["head_dist.logits"].scale == scale


# ----------------------------------------------------------------------------------- resolution and refusals
def timm_state_dict(**changes) -> dict:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in ViT(dataclasses.replace(BASE, **changes)).state_dict().items()}


def save(tmp_path, state_dict, name="w.safetensors"):
    save_file(state_dict, tmp_path / name)
    return tmp_path / name


def test_timm_state_dict_needs_heads_and_names_a_matching_preset(tmp_path):
    path = save(tmp_path, timm_state_dict())
    with pytest.raises(IntVitError, match=r"w\.safetensors \(timm/DeiT state dict\): the head count is not fixed by "
                                          r"the tensor shapes; give --heads N$"):
        load_model_spec(path)
    spec = load_model_spec(path, overrides={"num_heads": 2})
    assert spec.config == dataclasses.replace(BASE, name="w")
    assert "timm's default" in spec.normalization
    deit = ViT(dataclasses.replace(BASE, img_size=224, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                                   num_classes=1000, mlp_ratio=4.0)).state_dict()
    with pytest.raises(IntVitError, match=r"give --heads N$"):
        load_model_spec(save(tmp_path, deit, "deit.safetensors"))


def test_preset_conflict_names_the_field_and_how_to_run(tmp_path):
    path = save(tmp_path, timm_state_dict())
    with pytest.raises(IntVitError, match=r"--model deit-tiny has img_size 224 but the checkpoint has 16 \(tensor "
                                          r"shapes\); run it without --model \(the architecture and preprocessing come "
                                          r"from the checkpoint\)$"):
        load_model_spec(path, "deit-tiny")
    with pytest.raises(IntVitError, match=r"--patch-size 8 contradicts the checkpoint's patch_size 4 \(tensor shapes\)"):
        load_model_spec(path, overrides={"num_heads": 2, "patch_size": 8})


def test_sidecar_fields_are_checked_against_the_weights(tmp_path):
    path = save(tmp_path, timm_state_dict())
    (tmp_path / "w.json").write_text(json.dumps({**dataclasses.asdict(BASE), "depth": 3}))
    with pytest.raises(IntVitError, match=r"w\.json: depth is 3 but the weights have 2"):
        load_model_spec(path)
    (tmp_path / "w.json").write_text(json.dumps({"name": "w", "num_heads": 2, "mean": [0.5] * 3, "std": [0.25] * 3}))
    spec = load_model_spec(path)
    assert spec.config.mean == (0.5,) * 3 and spec.normalization.endswith("w.json")


@pytest.mark.parametrize("key, tensor, message", [
    ("blocks.0.ls1.gamma", torch.ones(32), r"LayerScale \(timm init_values\) is not supported \(key 'blocks\.0\.ls1"),
    ("reg_token", torch.zeros(1, 4, 32), r"register tokens \(timm reg_tokens\) is not supported"),
    ("norm_pre.weight", torch.ones(32), r"a norm before the blocks \(timm pre_norm\) is not supported"),
    ("attn_pool.latent", torch.ones(1, 1, 32), r"attention pooling \(timm global_pool='map'\) is not supported"),
    ("blocks.1.attn.q_norm.weight", torch.ones(16), r"q/k normalisation \(timm qk_norm\) is not supported"),
    ("head_dist.weight", torch.ones(5, 32), r"a distillation head needs a distillation token"),
    ("pos_embed", torch.zeros(1, 16, 32), r"a position embedding without the 1 prefix token\(s\) \(timm no_embed_class\)"),
    ("pos_embed", torch.zeros(1, 13, 32), r"pos_embed has 13 tokens, not a square grid plus 1 prefix token\(s\); "
                                          r"non-square images are not supported"),
    ("blocks.0.attn.qkv.weight", torch.ones(96, 32, dtype=torch.int8), r"tensor 'blocks\.0\.attn\.qkv\.weight' is int8; "
                                                                       r"weights must be floating point"),
    ("norm.bias", torch.tensor([float("nan")] * 31 + [float("inf")]), r"tensor 'norm\.bias' has 32 non-finite values"),
])
def test_unsupported_features_and_bad_tensors_are_refused_in_one_line(tmp_path, key, tensor, message):
    state_dict = timm_state_dict()
    state_dict[key] = tensor
    if key == "head_dist.weight":
        state_dict["head_dist.bias"] = torch.zeros(5)
    with pytest.raises(IntVitError, match=message):
        load_model_spec(save(tmp_path, state_dict), overrides={"num_heads": 2})


def test_hugging_face_config_refusals(tmp_path):
    from intvit.quant.checkpoint import hf_to_timm  # noqa: F401 (the layout under test)
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5, hidden_act="relu")
    folder = tmp_path / "hf"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    with pytest.raises(IntVitError, match=r"config\.json: hidden_act 'relu' is not supported"):
        load_model_spec(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "hidden_act": "gelu", "num_hidden_layers": 3}))
    with pytest.raises(IntVitError, match=r"config\.json: depth is 3 but the weights have 1"):
        load_model_spec(folder)
    (folder / "config.json").write_text(json.dumps({**data, "hidden_act": "gelu"}))
    spec = load_model_spec(folder)
    assert spec.config.eps == 1e-12 and spec.config.num_heads == 2
    assert spec.normalization.startswith("mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225) from unknown: no "
                                         "preprocessor_config.json")
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_rescale": False}))
    with pytest.raises(IntVitError, match=r"preprocessor_config\.json: do_rescale false is not supported"):
        load_model_spec(folder)


def test_preprocessing_overrides_and_their_source(tmp_path):
    path = save(tmp_path, timm_state_dict())
    spec = load_model_spec(path, overrides={"num_heads": 2, "mean": (0.5,) * 3, "std": (0.25,) * 3, "resize": (20,)})
    assert (spec.config.mean, spec.config.std, spec.config.resize) == ((0.5,) * 3, (0.25,) * 3, (20,))
    assert spec.normalization == "mean (0.5, 0.5, 0.5) std (0.25, 0.25, 0.25) from options --mean and --std"
    spec = load_model_spec(path, overrides={"num_heads": 2, "crop_pct": 0.9, "interpolation": "bilinear"})
    assert (spec.config.resize, spec.config.crop_pct, spec.config.interpolation) == ((), 0.9, "bilinear")
    with pytest.raises(IntVitError, match=r"give --resize or --crop, not both"):
        load_model_spec(path, overrides={"num_heads": 2, "crop_pct": 0.9, "resize": (20,)})
    with pytest.raises(IntVitError, match=r"mean/std from options --mean and --std have 1/1 values but the model has 3"):
        load_model_spec(path, overrides={"num_heads": 2, "mean": (0.5,), "std": (0.5,)})
    # A preset alone takes the same overrides: a custom shape with seeded random weights.
    spec = load_model_spec(None, "deit-tiny", {"img_size": 32, "depth": 1})
    assert (spec.config.name, spec.config.img_size, spec.config.depth, spec.weights) == ("deit-tiny-custom", 32, 1, None)
