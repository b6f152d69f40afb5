"""The shape program: a calibrated program's structure from parameter shapes alone, without torch.

``ViTConfig.parameter_shapes`` names exactly the float model's parameters, and
``quant.ptq.shape_program`` (zero weights, unit ranges) has the ops, constant shapes and dtypes
and tensor bit widths of ``quantize_model``'s program for every model variant. Cycles follow
from these alone (compared on the simulator in tests/cli/test_cache.py).
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from intvit.quant.config import PRESETS, ViTConfig
from intvit.quant.model import ViT
from intvit.quant.program import check_program
from intvit.quant.ptq import quantize_model, shape_program

SMALL = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
VARIANTS = {
    "class token": ViTConfig(**SMALL),
    "distilled": ViTConfig(**SMALL, dist_token=True),
    "average pool": ViTConfig(**SMALL, global_pool="avg"),
    "average pool, no class token, no qkv bias": ViTConfig(**SMALL, global_pool="avg", class_token=False,
                                                           qkv_bias=False),
    "one channel, tanh GELU": ViTConfig(**{**SMALL, "img_size": 12}, in_chans=1, mean=(0.5,), std=(0.5,),
                                        gelu="tanh"),
}


@pytest.mark.parametrize("config", [*PRESETS.values(), *VARIANTS.values()], ids=[*PRESETS, *VARIANTS])
def test_parameter_shapes_are_the_float_models_state_dict(config):
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in ViT(config).state_dict().items()}
    assert config.parameter_shapes() == expected


# Attributes that carry calibrated numbers rather than structure: a residual add's dyadic multipliers.
CALIBRATED_ATTRS = ("m_a", "m_b", "shift")


def structure(program):
    """Everything about a program but the calibrated numbers."""
    attrs = lambda op: {key: value for key, value in op.attrs.items() if key not in CALIBRATED_ATTRS}
    return ([(op.kind, op.name, op.inputs, op.outputs, attrs(op), sorted(op.attrs)) for op in program.ops],
            {name: (value.dtype, value.shape) for name, value in program.constants.items()},
            {name: info.bits for name, info in program.tensors.items()}, program.output)


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS)
def test_the_shape_program_has_the_calibrated_programs_structure(config):
    torch.manual_seed(0)
    model = ViT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    images = np.random.default_rng(0).normal(size=(4, config.in_chans, config.img_size, config.img_size))
    calibrated, shapes = quantize_model(model, images.astype(np.float32)), shape_program(config)
    check_program(shapes)
    assert structure(shapes) == structure(calibrated)
    assert shapes.config == config and shapes.calibration == {"method": "none", "images": 0}
    assert shapes.tensor_shapes(3) == calibrated.tensor_shapes(3)


def test_the_shape_program_needs_no_torch():
    script = ("import sys; from intvit.quant.config import get_config; from intvit.quant.ptq import shape_program; "
              "p = shape_program(get_config('deit-tiny')); print(len(p.ops), 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == [str(len(shape_program(PRESETS["deit-tiny"]).ops)), "False"]
