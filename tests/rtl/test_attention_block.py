"""One attention block of the ViT through the RTL units in sequence, bit for bit against the golden executor.

The embedded MNIST model is used when its weights exist, else a seeded random ViT of the same
shape quantised on a few MNIST images. Block 0's input ``embed`` for one image goes through
the accelerator's units (``bench_attention``); every intermediate tensor and the block's output
``blocks.0.residual`` must equal the golden run's, and each op's RTL cycles must equal the
simulator's cycle model for a config of the same array size and lanes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intvit.quant.checkpoint import EMBEDDED_WEIGHTS, load_embedded
from intvit.quant.config import get_config
from intvit.quant.data import load_dataset, normalize
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.program import IntProgram
from intvit.quant.ptq import quantize_model
from intvit.rtl.top import Accelerator, TopParams
from intvit.sim.config import AcceleratorConfig
from intvit.sim.simulator import simulate

MODEL = "mnist"
BLOCK = "blocks.0"
SEED = 0
CALIBRATION_IMAGES = 32
IMAGE = 0
UNBOUNDED_BYTES_PER_CYCLE = 1 << 30
REPORT = "rtl_report"            # printed by conftest.pytest_terminal_summary
# Tensors in program order: each one is the RTL's output of one step (or a pure layout of one).
CHECKED = ("norm1", "attn.qkv.acc", "attn.qkv", "attn.q", "attn.k", "attn.v", "attn.qk.acc", "attn.scores",
           "attn.probs", "attn.av.acc", "attn.av", "attn.context", "attn.proj.acc", "attn.proj", "residual")
CONSTANTS = ("norm1.gamma", "norm1.beta", "norm1.multiplier", "norm1.shift",
             "attn.qkv.weight", "attn.qkv.bias", "attn.qkv.multiplier", "attn.qkv.shift",
             "attn.qk.multiplier", "attn.qk.shift", "attn.av.multiplier", "attn.av.shift",
             "attn.proj.weight", "attn.proj.bias", "attn.proj.multiplier", "attn.proj.shift")
# Ops of the attention half of block 0 that occupy a unit (the layout ops split/merge cost 0).
TIMED_OPS = ("norm1", "attn.qkv", "attn.qkv.requant", "attn.qk", "attn.qk.requant", "attn.softmax", "attn.av",
             "attn.av.requant", "attn.proj", "attn.proj.requant", "residual")


@pytest.fixture(scope="module")
def golden() -> tuple[IntProgram, np.ndarray, dict[str, np.ndarray]]:
    """The program, one INT8 image and every tensor of the golden run on it."""
    config = get_config(MODEL)
    if EMBEDDED_WEIGHTS.exists():
        model = load_embedded().eval()
    else:
        torch.manual_seed(SEED)
        model = ViT(config).eval()
    images, _, _ = load_dataset(MODEL, config, "train", limit=CALIBRATION_IMAGES)
    images = normalize(images, config)
    program = quantize_model(model, images)
    x = program.quantize_input(images[IMAGE:IMAGE + 1])
    _, tensors = run_program(program, x, collect=True)
    return program, x, tensors


def block_cycles_model(program: IntProgram, rows: int, cols: int, lanes: int) -> tuple[dict[str, int], int]:
    """The simulator's busy cycles per op of the block, and the block's exposed cycles under its
    schedule, for an accelerator of the same array shape and lanes.

    The bench offers every operand beat at once, so the model gets memory that never binds
    (else small per-head products on a big array come out DRAM-bound) and counts compute only.
    """
    config = AcceleratorConfig().with_(matmul__rows=rows, matmul__cols=cols, requant__lanes=lanes,
                                       softmax__lanes=lanes, gelu__lanes=lanes, layernorm__lanes=lanes,
                                       memory__bandwidth_bytes_per_cycle=UNBOUNDED_BYTES_PER_CYCLE)
    timed = {f"{BLOCK}.{name}" for name in TIMED_OPS}
    ops = [op for op in simulate(program, config, batch=1, functional=False).ops if op.name in timed]
    return {op.name: op.cycles for op in ops}, sum(op.exposed_cycles for op in ops)


@pytest.mark.parametrize("rows, cols, lanes", [
    (16, 16, 8),                                              # the default accelerator config
    pytest.param(8, 8, 8, marks=pytest.mark.slow),
    pytest.param(4, 4, 4, marks=pytest.mark.slow),
])
def test_attention_block_matches_golden(bench, golden, tmp_path, record_property, rows, cols, lanes):
    program, x, tensors = golden
    c = program.config
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, embed=tensors["embed"][0], **{f"{BLOCK}.{name}": program.constants[f"{BLOCK}.{name}"]
                                                 for name in CONSTANTS})
    residual = next(op for op in program.ops if op.name == f"{BLOCK}.residual").attrs
    params = TopParams(rows=rows, cols=cols, requant_lanes=lanes, softmax_lanes=lanes, gelu_lanes=lanes,
                       layernorm_lanes=lanes, max_length=c.num_tokens, width=c.embed_dim)
    outputs = tmp_path / "outputs.npz"
    run = bench(Accelerator(params), toplevel="intvit_top", test_module="bench_attention",
                params={"block": BLOCK, "rows": rows, "cols": cols, "lanes": lanes, "heads": c.num_heads,
                        "inputs": str(inputs), "outputs": str(outputs), "residual": residual})
    rtl = dict(np.load(outputs))
    for name in CHECKED:
        want, got = tensors[f"{BLOCK}.{name}"][0], rtl[f"{BLOCK}.{name}"]
        assert got.shape == want.shape, f"{BLOCK}.{name}: RTL shape {got.shape}, golden {want.shape}"
        assert np.unique(want).size > 1, f"{BLOCK}.{name}: golden tensor is constant, the check would be vacuous"
        bad = np.argwhere(got != want)
        assert bad.size == 0, (f"{BLOCK}.{name}: {len(bad)} of {want.size} differ, first at {bad[0].tolist()}: "
                               f"RTL {got[tuple(bad[0])]}, golden {want[tuple(bad[0])]}")

    model, exposed = block_cycles_model(program, rows, cols, lanes)
    measured = run["cycles"]
    lines = [f"attention block {BLOCK} on a {rows}x{cols} array, {lanes} lanes "
             f"({'embedded' if EMBEDDED_WEIGHTS.exists() else 'random'} weights): RTL {sum(measured.values())} "
             f"cycles, model {sum(model.values())} (busy) / {exposed} (exposed, requant overlapped)"]
    lines += [f"  {name:<28} RTL {measured[name]:>7}  model {model[name]:>7}" for name in model]
    print("\n".join(lines))
    record_property(REPORT, "\n".join(lines))
    assert measured == model

