"""A small ViT with lively random weights and its quantised program, shared by the quant tests."""

import numpy as np
import pytest
import torch

from intvit.quant.config import ViTConfig
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model

SMALL = ViTConfig("small", img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                  num_heads=2, mlp_ratio=2.0)
WEIGHT_NOISE = 0.2          # timm's 0.02 init leaves near-constant activations


def small_vit() -> ViT:
    """A float ``SMALL`` ViT, seeded: every call gives the same weights."""
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * WEIGHT_NOISE)
    return model


def small_program():
    """A freshly quantised program of ``small_vit`` (seeded: every call gives the same integers)."""
    calibration = np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32)
    return quantize_model(small_vit(), calibration)


@pytest.fixture(scope="session")
def build_small_vit():
    """``small_vit``, the builder."""
    return small_vit


@pytest.fixture(scope="session")
def build_small_program():
    """``small_program``, the builder: tests that change a program build their own."""
    return small_program
