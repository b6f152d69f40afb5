"""sim.simulator: bit-exact functional runs, closed-form op costs, golden-report regression.

The golden reports in ``tests/sim/golden/`` pin total cycles, cycles per unit, MAC
utilisation, MACs and DRAM bytes of the MNIST-shaped model on two accelerator configs.
When a cycle model changes on purpose, regenerate them from the repository root with::

    .venv/bin/python tests/sim/test_simulator.py --regenerate

and commit the diff together with the change that explains it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from intvit.quant.checkpoint import load_embedded
from intvit.quant.config import ViTConfig, get_config
from intvit.quant.data import load_dataset, normalize
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.sim.config import AcceleratorConfig, config_from_dict
from intvit.sim.layernorm import layernorm_period
from intvit.sim.matmul import MatMulUnit
from intvit.sim.simulator import simulate
from intvit.sim.softmax import softmax_period

GOLDEN_DIR = Path(__file__).parent / "golden"
# Every dataflow, on arrays whose sides divide none of the models' K dimensions (partial K folds).
ARRAYS = ((16, 16), (7, 5), (4, 9))
DATAFLOWS = ("os", "ws", "is")
CUSTOM = (
    ViTConfig("odd", img_size=15, patch_size=5, in_chans=3, num_classes=7, embed_dim=35, depth=2, num_heads=5,
              mlp_ratio=3.0),
    ViTConfig("narrow", img_size=12, patch_size=3, in_chans=1, num_classes=3, embed_dim=18, depth=1, num_heads=2,
              mlp_ratio=1.5, mean=(0.5,), std=(0.25,)),
)
# Closed-form checks spell out every number they use, so they do not follow the defaults.
FIXED = config_from_dict({
    "clock_mhz": 500,
    "matmul": {"rows": 16, "cols": 16, "dataflow": "os", "latency": 2},
    "requant": {"lanes": 8, "latency": 3}, "softmax": {"lanes": 8, "latency": 8},
    "gelu": {"lanes": 8, "latency": 4}, "layernorm": {"lanes": 8, "latency": 6},
    "buffers": {"ifmap_bytes": 65536, "weight_bytes": 65536, "ofmap_bytes": 65536},
    "memory": {"bandwidth_bytes_per_cycle": 16},
})
GOLDEN_CONFIGS = {
    "mnist_default": (AcceleratorConfig(), "native"),
    # A narrow WS array starved of bandwidth and activation buffer: memory-bound ops and spills.
    "mnist_ws_32x8_4bpc": (AcceleratorConfig().with_(matmul__rows=32, matmul__cols=8, matmul__dataflow="ws",
                                                     memory__bandwidth_bytes_per_cycle=4,
                                                     buffers__ifmap_bytes=16384), "scalesim"),
}


def random_program(config: ViTConfig, seed: int = 0, images: int = 4):
    """A program from seeded random weights, calibrated on random images."""
    torch.manual_seed(seed)
    model = ViT(config).eval()
    x = np.random.default_rng(seed).standard_normal((images, config.in_chans, config.img_size, config.img_size))
    return quantize_model(model, x.astype(np.float32))


def random_input(program, batch: int, seed: int = 1) -> np.ndarray:
    c = program.config
    x = np.random.default_rng(seed).standard_normal((batch, c.in_chans, c.img_size, c.img_size))
    return program.quantize_input(x.astype(np.float32))


def assert_bit_exact(program, x: np.ndarray, rows: int, cols: int, dataflow: str) -> None:
    config = AcceleratorConfig().with_(matmul__rows=rows, matmul__cols=cols, matmul__dataflow=dataflow)
    logits, expected = run_program(program, x, collect=True)
    report = simulate(program, config, x, collect=True)
    assert report.logits.dtype == logits.dtype == np.int32
    np.testing.assert_array_equal(report.logits, logits)
    assert expected.keys() == report.tensors.keys()
    for name, value in expected.items():
        assert report.tensors[name].dtype == value.dtype, name
        np.testing.assert_array_equal(report.tensors[name], value, err_msg=name)


@pytest.fixture(scope="module")
def mnist_embedded():
    model = load_embedded()
    train, _, _ = load_dataset("mnist", model.config, "train", 32)
    program = quantize_model(model, normalize(train, model.config))
    test, _, _ = load_dataset("mnist", model.config, "test", 2)
    return program, program.quantize_input(normalize(test, model.config))


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize(("rows", "cols"), ARRAYS[:2])
def test_mnist_embedded_bit_exact(mnist_embedded, rows, cols, dataflow):
    assert_bit_exact(*mnist_embedded, rows, cols, dataflow)


@pytest.fixture(scope="module", params=CUSTOM, ids=lambda c: c.name)
def custom(request):
    program = random_program(request.param)
    return program, random_input(program, 3)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize(("rows", "cols"), ARRAYS)
def test_custom_vit_bit_exact(custom, rows, cols, dataflow):
    assert_bit_exact(*custom, rows, cols, dataflow)


def test_deit_shaped_bit_exact():
    """DeiT-Tiny's shapes (224 px, 197 tokens, width 192, 3 heads) at reduced depth, every dataflow:
    the default run covers a DeiT-sized token count and width; the full presets are slow."""
    config = dataclasses.replace(get_config("deit-tiny"), name="deit-tiny-depth2", depth=2)
    program = random_program(config, images=2)
    x = random_input(program, 1)
    for dataflow in DATAFLOWS:
        assert_bit_exact(program, x, 16, 16, dataflow)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "dataflows"), [
    ("deit-tiny", DATAFLOWS), ("deit-small", ("ws",)), ("deit-base", ("is",)),
])
def test_deit_bit_exact(model, dataflows):
    program = random_program(get_config(model), images=2)
    x = random_input(program, 1)
    for dataflow in dataflows:
        assert_bit_exact(program, x, 16, 16, dataflow)


# ----------------------------------------------------------------------- closed-form op costs
@pytest.fixture(scope="module")
def mnist_shapes():
    """MNIST-shaped program: cycles depend on shapes and bit widths only, not on weights."""
    return random_program(get_config("mnist"))


def op_reports(program, config: AcceleratorConfig = FIXED, batch: int = 1) -> tuple[dict, object]:
    report = simulate(program, config, batch=batch, functional=False)
    return {op.name: op for op in report.ops}, report


def test_matmul_costs(mnist_shapes):
    ops, _ = op_reports(mnist_shapes)
    # 16x16 OS, latency 2: a fold alone costs K + 16 + 15 + 2 = 33 + K; back to back one fold
    # starts every max(K, 16 + 16 + 2) cycles (sim.matmul). At 16 bytes per cycle the products
    # below are memory-bound: their cycles are their DRAM bytes / 16.
    unit = MatMulUnit(FIXED)
    fc1 = ops["blocks.0.mlp.fc1"]  # M=50 tokens, K=64, N=128: 4 x 8 folds
    assert unit.compute_cycles(50, 64, 128) == 97 + 31 * 64
    assert (fc1.unit, fc1.cycles, fc1.exposed_cycles, fc1.macs, fc1.bound) == ("matmul", 2312, 2312,
                                                                                50 * 64 * 128, "memory")
    assert fc1.cycles == -(-fc1.dram_bytes // 16)
    assert fc1.utilization == 50 * 64 * 128 / (2312 * 256)
    qk = ops["blocks.0.attn.qk"]  # 4 heads of (50 x 16) @ (16 x 50): 4 x 4 folds each
    assert unit.compute_cycles(50, 16, 50) == 49 + 15 * 34
    assert (qk.cycles, qk.macs, qk.bound) == (4 * 725, 4 * 50 * 16 * 50, "memory")
    head = ops["head"]  # class token only: (1 x 64) @ (64 x 10), one fold
    assert (head.cycles, head.macs, head.bound) == (97, 640, "compute")


def test_matmul_stacks_the_batch_into_m(mnist_shapes):
    one, _ = op_reports(mnist_shapes, batch=1)
    three, _ = op_reports(mnist_shapes, batch=3)
    assert MatMulUnit(FIXED).compute_cycles(150, 64, 128) == 97 + 79 * 64    # M = 150: 10 row folds
    assert three["blocks.0.mlp.fc1"].cycles == -(-three["blocks.0.mlp.fc1"].dram_bytes // 16)
    assert three["blocks.0.attn.qk"].cycles == 3 * one["blocks.0.attn.qk"].cycles


def test_elementwise_costs(mnist_shapes):
    ops, _ = op_reports(mnist_shapes)
    # ceil(elements / 8 lanes) + latency; rows: 3 * ceil(width / 8) + latency + (rows - 1) * period.
    assert ops["blocks.0.mlp.gelu"].cycles == 50 * 128 // 8 + 4
    assert ops["blocks.0.mlp.act.requant"].exposed_cycles == 50 * 128 // 8 + 3
    assert ops["blocks.0.attn.softmax"].cycles == 3 * 7 + 8 + (4 * 50 - 1) * softmax_period(7)
    assert ops["blocks.0.norm1"].cycles == 3 * 64 // 8 + 6 + 49 * layernorm_period(8)
    assert ops["norm"].cycles == 1 * (3 * 64 // 8 + 6)
    assert ops["blocks.0.residual"].unit == "requant"
    assert ops["blocks.0.attn.split"].unit == "none" and ops["blocks.0.attn.split"].cycles == 0


def test_requant_overlaps_its_matmul(mnist_shapes):
    ops, report = op_reports(mnist_shapes)
    for name in ("blocks.0.mlp.fc1", "blocks.0.attn.qk", "patch_embed.proj"):
        matmul, requant = ops[name], ops[f"{name}.requant"]
        assert requant.exposed_cycles == max(3, requant.cycles - matmul.cycles)
    assert report.total_cycles == sum(op.exposed_cycles for op in report.ops)
    assert report.total_cycles == sum(report.unit_cycles().values())


def test_spilled_elementwise_op_is_memory_bound(mnist_shapes):
    config = FIXED.with_(buffers__ifmap_bytes=4096, memory__bandwidth_bytes_per_cycle=8)
    ops, _ = op_reports(mnist_shapes, config)
    gelu = ops["blocks.0.mlp.gelu"]  # INT32 in (Q.10) and out (Q.21): 2 * 6400 * 4 bytes off chip
    assert (gelu.dram_bytes, gelu.cycles, gelu.bound) == (51200, 51200 // 8, "memory")


# ----------------------------------------------------------------------- golden reports
def golden_report(name: str) -> dict:
    """The report that ``tests/sim/golden/<name>.json`` pins."""
    config, mode = GOLDEN_CONFIGS[name]
    report = simulate(random_program(get_config("mnist")), config, batch=1, mode=mode, functional=False)
    data = report.as_dict()
    return {
        "model": data["model"], "mode": mode, "accelerator": dataclasses.asdict(config),
        **{key: data[key] for key in ("total_cycles", "unit_cycles", "mac_utilization", "macs", "dram_bytes")},
    }


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_golden_report(name):
    expected = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    actual = json.loads(json.dumps(golden_report(name)))
    assert actual["accelerator"] == expected["accelerator"], "the config changed: regenerate (module docstring)"
    assert actual == expected


def regenerate() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name in sorted(GOLDEN_CONFIGS):
        path = GOLDEN_DIR / f"{name}.json"
        path.write_text(json.dumps(golden_report(name), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rewrite the golden simulation reports.")
    parser.add_argument("--regenerate", action="store_true", required=True)
    parser.parse_args()
    regenerate()
