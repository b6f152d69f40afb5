"""The float reference ViT: timm parameter names, shapes, hooks and attention arithmetic."""

import dataclasses

import pytest
import torch
from torch import nn

from intvit.quant.config import ViTConfig, get_config
from intvit.quant.model import ViT

TINY = ViTConfig("tiny", img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2,
                 num_heads=2, mlp_ratio=2.0, mean=(0.5,), std=(0.25,))

# The state dict of timm's VisionTransformer (no distillation token, no layer scale).
TIMM_TOP_KEYS = {
    "cls_token": (1, 1, 8), "pos_embed": (1, 5, 8),
    "patch_embed.proj.weight": (8, 1, 4, 4), "patch_embed.proj.bias": (8,),
    "norm.weight": (8,), "norm.bias": (8,), "head.weight": (3, 8), "head.bias": (3,),
}
TIMM_BLOCK_KEYS = {
    "norm1.weight": (8,), "norm1.bias": (8,), "attn.qkv.weight": (24, 8), "attn.qkv.bias": (24,),
    "attn.proj.weight": (8, 8), "attn.proj.bias": (8,), "norm2.weight": (8,), "norm2.bias": (8,),
    "mlp.fc1.weight": (16, 8), "mlp.fc1.bias": (16,), "mlp.fc2.weight": (8, 16), "mlp.fc2.bias": (8,),
}


def test_state_dict_has_exactly_timm_names_and_shapes():
    expected = dict(TIMM_TOP_KEYS)
    for n in range(TINY.depth):
        expected.update({f"blocks.{n}.{k}": v for k, v in TIMM_BLOCK_KEYS.items()})
    found = {k: tuple(v.shape) for k, v in ViT(TINY).state_dict().items()}
    assert found == expected


@pytest.mark.parametrize("name", ["mnist", "deit-tiny"])
def test_forward_gives_logits(name):
    config = get_config(name)
    torch.manual_seed(0)
    x = torch.randn(2, config.in_chans, config.img_size, config.img_size)
    assert ViT(config)(x).shape == (2, config.num_classes)


def reference_forward(model: ViT, x: torch.Tensor) -> torch.Tensor:
    """Independent re-derivation with torch's fused attention and functional ops."""
    c = model.config
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1) + model.pos_embed
    for blk in model.blocks:
        h = nn.functional.layer_norm(x, (c.embed_dim,), blk.norm1.weight, blk.norm1.bias, c.eps)
        q, k, v = nn.functional.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (c.num_heads, c.head_dim)).transpose(1, 2) for t in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + blk.attn.proj(a)
        h = nn.functional.layer_norm(x, (c.embed_dim,), blk.norm2.weight, blk.norm2.bias, c.eps)
        x = x + blk.mlp.fc2(nn.functional.gelu(blk.mlp.fc1(h), approximate="none"))
    x = nn.functional.layer_norm(x, (c.embed_dim,), model.norm.weight, model.norm.bias, c.eps)
    return model.head(x[:, 0])


def test_matches_fused_attention_reference():
    torch.manual_seed(1)
    model = ViT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        x = torch.randn(4, 1, 8, 8)
        torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_config_eps_and_exact_gelu():
    model = ViT(dataclasses.replace(TINY, eps=1e-3))
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert model.blocks[0].mlp.act.approximate == "none"


def test_hooks_expose_every_intermediate():
    model = ViT(TINY).eval()
    seen = {}
    names = ["blocks.1.norm1", "blocks.1.attn.qkv", "blocks.1.attn.softmax", "blocks.1.attn.proj",
             "blocks.1.norm2", "blocks.1.mlp.fc1", "blocks.1.mlp.act", "blocks.1.mlp.fc2", "blocks.1",
             "norm", "head"]
    modules = dict(model.named_modules())

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0], output)
        return hook

    for name in names:
        modules[name].register_forward_hook(record(name))
    with torch.no_grad():
        logits = model(torch.randn(3, 1, 8, 8))
    assert seen["blocks.1.attn.qkv"][1].shape == (3, 5, 24)
    probs = seen["blocks.1.attn.softmax"][1]
    assert probs.shape == (3, 2, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 5))
    assert seen["blocks.1.mlp.act"][1].shape == (3, 5, 16)
    assert seen["blocks.1.attn.proj"][0].shape == (3, 5, 8)
    torch.testing.assert_close(seen["head"][1], logits)
    torch.testing.assert_close(seen["head"][0], seen["norm"][1][:, 0])
    torch.testing.assert_close(seen["norm"][0], seen["blocks.1"][1])
