"""Checkpoint import (timm .pth/.safetensors, DeiT wrapper, Hugging Face), saving, errors."""

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from intvit.quant.checkpoint import (
    infer_config, load_checkpoint, load_embedded, load_weights, read_state_dict, save_weights,
)
from intvit.quant.config import ViTConfig, get_config
from intvit.quant.data import load_dataset, normalize
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT

SMALL = ViTConfig("small", img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=12, depth=2,
                  num_heads=3, mlp_ratio=2.0)
EMBEDDED_TARGET_TOP1 = 0.97


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = ViT(SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)  # non-trivial biases and norms, so every mapped key matters
    return m


def logits(m):
    torch.manual_seed(1)
    with torch.no_grad():
        return m(torch.randn(3, 3, 16, 16))


def hf_state_dict(m):
    """The key layout of transformers' ViTForImageClassification, written out by hand."""
    sd = m.state_dict()
    out = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": sd["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
        "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"],
    }
    names = {"attention.output.dense": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    for n in range(SMALL.depth):
        for kind in ("weight", "bias"):
            q, k, v = sd[f"blocks.{n}.attn.qkv.{kind}"].chunk(3, dim=0)
            for name, part in zip(("query", "key", "value"), (q, k, v)):
                out[f"vit.encoder.layer.{n}.attention.attention.{name}.{kind}"] = part.clone()
            for hf, timm in names.items():
                out[f"vit.encoder.layer.{n}.{hf}.{kind}"] = sd[f"blocks.{n}.{timm}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["timm.pth", "deit_wrapped.pth", "state_dict_wrapped.pt", "timm.safetensors",
                                    "hf.safetensors", "hf.bin"])
def test_import_gives_same_logits(tmp_path, model, layout):
    path = tmp_path / layout
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if layout.startswith("hf"):
        sd = hf_state_dict(model)
    if layout.endswith(".safetensors"):
        save_file(sd, path)
    elif layout.startswith("deit"):
        torch.save({"model": sd, "epoch": 300}, path)
    elif layout.startswith("state_dict"):
        torch.save({"state_dict": sd}, path)
    else:
        torch.save(sd, path)
    imported = load_checkpoint(path, SMALL)
    assert torch.allclose(logits(imported), logits(model), rtol=0, atol=1e-6)
    assert infer_config(path, dataclasses.replace(SMALL, img_size=8, depth=7, num_classes=2)) == SMALL


def test_save_and_load_weights_round_trip(tmp_path, model):
    path = tmp_path / "sub" / "w.safetensors"
    save_weights(model, path)
    fields = json.loads(path.with_suffix(".json").read_text())
    assert fields["embed_dim"] == 12 and fields["mean"] == list(SMALL.mean)
    again = load_weights(path)
    assert again.config == SMALL
    assert torch.equal(logits(again), logits(model))


def save(tmp_path, sd, name="c.pth"):
    torch.save(sd, tmp_path / name)
    return tmp_path / name


def test_architecture_and_shape_errors(tmp_path, model):
    sd = model.state_dict()
    with pytest.raises(IntVitError, match=r"c\.pth: missing key 'norm\.weight' \(1 missing in all\); "
                                          r"not a checkpoint of a small ViT"):
        load_checkpoint(save(tmp_path, {k: v for k, v in sd.items() if k != "norm.weight"}), SMALL)
    with pytest.raises(IntVitError, match=r"unexpected key 'dist_token' \(1 unexpected in all\); "
                                          r"checkpoint is for another architecture"):
        load_checkpoint(save(tmp_path, {**sd, "dist_token": torch.zeros(1, 1, 12)}), SMALL)
    with pytest.raises(IntVitError, match=r"checkpoint has 2 blocks but small has depth 3"):
        load_checkpoint(save(tmp_path, sd), dataclasses.replace(SMALL, depth=3))
    with pytest.raises(IntVitError, match=r"head\.weight has 5 classes but small has num_classes 10"):
        load_checkpoint(save(tmp_path, sd), dataclasses.replace(SMALL, num_classes=10))
    with pytest.raises(IntVitError, match=r"key 'pos_embed' has shape \(1, 17, 12\), "
                                          r"expected \(1, 65, 12\) for small"):
        load_checkpoint(save(tmp_path, sd), dataclasses.replace(SMALL, img_size=32))
    with pytest.raises(IntVitError, match=r"key 'cls_token' has shape \(1, 1, 12\), expected \(1, 1, 24\)"):
        load_checkpoint(save(tmp_path, sd), dataclasses.replace(SMALL, embed_dim=24))


def test_hf_missing_value_projection(tmp_path, model):
    sd = hf_state_dict(model)
    del sd["vit.encoder.layer.1.attention.attention.value.bias"]
    save_file(sd, tmp_path / "hf.safetensors")
    with pytest.raises(IntVitError, match=r"missing key 'vit\.encoder\.layer\.1\.attention\.attention\.value\.bias'"):
        read_state_dict(tmp_path / "hf.safetensors")


@pytest.mark.parametrize("name", ["t.pth", "t.safetensors"])
def test_truncated_and_foreign_files(tmp_path, model, name):
    whole = tmp_path / ("whole" + name[1:])
    if name.endswith(".pth"):
        torch.save(model.state_dict(), whole)
    else:
        save_file(model.state_dict(), whole)
    data = whole.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(IntVitError, match=rf"{name}: unreadable or truncated checkpoint \("):
        load_checkpoint(tmp_path / name, SMALL)
    (tmp_path / name).write_bytes(b"hello, not a checkpoint")
    with pytest.raises(IntVitError, match=rf"{name}: unreadable or truncated checkpoint \("):
        load_checkpoint(tmp_path / name, SMALL)


def test_file_errors(tmp_path):
    with pytest.raises(IntVitError, match=r"nope\.pth: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pth", SMALL)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(IntVitError, match=r"w\.ckpt: unknown checkpoint extension '\.ckpt'"):
        load_checkpoint(tmp_path / "w.ckpt", SMALL)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(IntVitError, match=r"list\.pth: not a state dict"):
        load_checkpoint(tmp_path / "list.pth", SMALL)
    torch.save({"model": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)},
               tmp_path / "args.pth")
    with pytest.raises(IntVitError, match=r"args\.pth: holds Python objects besides tensors"):
        load_checkpoint(tmp_path / "args.pth", SMALL)
    with pytest.raises(IntVitError, match=r"w\.json: config sidecar missing for w\.safetensors"):
        load_weights(tmp_path / "w.safetensors")


def test_embedded_weights_reach_target():
    model = load_embedded()
    assert model.config == get_config("mnist")
    images, labels, _ = load_dataset("mnist", model.config, split="test")
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(images), model.config)).argmax(1)
    assert (predicted == torch.from_numpy(labels)).float().mean().item() >= EMBEDDED_TARGET_TOP1
