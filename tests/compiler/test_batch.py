"""``compile_program(program, config, batch)``: one program for a batch of images (issue 13).

The images' token rows are stacked, so each weight tile loads once and streams against the
rows of every image; attention runs per image and head. Each batch stream is proven race-free
(``check_hazards``) and executed bit for bit against the golden executor's logits of the same
images, in program order and in the overlapped order of its cycle schedule (real and jittered
durations). Batch 1 stays the program it was: its stream hashes were recorded before batches
existed (commit 283c93f).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from intvit.cli import main
from intvit.compiler.codegen import compile_program
from intvit.compiler.executor import execute
from intvit.compiler.isa import Memory, Opcode
from intvit.compiler.layout import Place
from intvit.compiler.verify import check_hazards
from intvit.quant.config import ViTConfig, get_config
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model, shape_program
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import schedule

DEFAULT = AcceleratorConfig()
# K in chunks, streamed A and B, column groups, re-loaded parameters (as tests/compiler/test_compiler.py).
SMALL = DEFAULT.with_(buffers__ifmap_bytes=1024, buffers__weight_bytes=1024, buffers__ofmap_bytes=8192,
                      buffers__param_bytes=4096)
NARROW_ARRAY = DEFAULT.with_(matmul__rows=8, matmul__cols=4, requant__lanes=4, softmax__lanes=2, gelu__lanes=4,
                             layernorm__lanes=1)
ODD = ViTConfig("odd", img_size=15, patch_size=5, in_chans=3, num_classes=7, embed_dim=35, depth=2, num_heads=5,
                mlp_ratio=3.0)

# sha256 of compile_program(shape_program(model), config).stream() before batches (commit 283c93f).
BATCH_ONE_STREAMS = {
    ("mnist", "default"): "9756bac3371b29d836e455556195f17f7f95a82db8621fc548a7f97fe8a04b72",
    ("mnist", "small"): "47983123ae992ee93e374b7ee287a5f5025b1b25d6413a82f9cf4638e22e07a6",
    ("deit-tiny", "default"): "519e791fa306ad9b29cf015670cf96485b8e97f88dfd4fca1fddefc4b4ebc4f6",
}


def random_program(config: ViTConfig, seed: int = 0):
    torch.manual_seed(seed)
    x = np.random.default_rng(seed).standard_normal((2, config.in_chans, config.img_size, config.img_size))
    return quantize_model(ViT(config).eval(), x.astype(np.float32))


def images(program, count: int, seed: int) -> np.ndarray:
    c = program.config
    x = np.random.default_rng(seed).standard_normal((count, c.in_chans, c.img_size, c.img_size))
    return program.quantize_input(x.astype(np.float32))


@pytest.fixture(scope="module")
def mnist():
    return random_program(get_config("mnist"))


@pytest.mark.parametrize("model, config", list(BATCH_ONE_STREAMS))
def test_batch_one_is_the_program_of_before(model, config):
    compiled = compile_program(shape_program(get_config(model)), {"default": DEFAULT, "small": SMALL}[config])
    assert hashlib.sha256(compiled.stream()).hexdigest() == BATCH_ONE_STREAMS[(model, config)]
    assert compiled.manifest["batch"] == 1


@pytest.mark.parametrize("model, config, batch", [
    pytest.param("mnist", DEFAULT, 2, marks=pytest.mark.slow),     # the default RTL run is MNIST at batch 2
    ("mnist", DEFAULT, 3), ("odd", SMALL, 3), ("odd", NARROW_ARRAY, 2),
], ids=["mnist-2", "mnist-3", "odd-small-scratchpads-3", "odd-8x4-array-2"])
def test_batch_is_bit_exact_per_image(mnist, model, config, batch):
    program = mnist if model == "mnist" else random_program(ODD)
    x = images(program, batch, seed=batch)
    compiled = compile_program(program, config, batch)
    assert check_hazards(compiled.instructions, compiled.geometry) > 0
    golden = run_program(program, x)
    assert golden.shape[0] == batch and len({row.tobytes() for row in golden}) == batch   # images that differ
    np.testing.assert_array_equal(execute(compiled, x), golden)
    report = schedule(compiled.instructions, config)
    np.testing.assert_array_equal(execute(compiled, x, timing=(report.start, report.end)), golden)
    jittered = schedule(compiled.instructions, config, durations=np.random.default_rng(0).integers(
        1, 300, len(compiled.instructions)))
    np.testing.assert_array_equal(execute(compiled, x, timing=(jittered.start, jittered.end)), golden)


@pytest.mark.slow
def test_deit_shaped_reduced_depth_batch_bit_exact():
    import dataclasses

    program = random_program(dataclasses.replace(get_config("deit-tiny"), depth=1))
    compiled = compile_program(program, DEFAULT, 2)
    assert check_hazards(compiled.instructions, compiled.geometry) > 0
    x = images(program, 2, seed=2)
    np.testing.assert_array_equal(execute(compiled, x), run_program(program, x))


def test_weights_load_once_for_the_whole_batch(mnist):
    """At batch 3 on the default scratchpads every weight byte is loaded exactly once, and a linear
    layer's tiles run over the stacked rows: ceil(3 N / R) row blocks, not 3 ceil(N / R)."""
    batch, r, c = 3, DEFAULT.matmul.rows, DEFAULT.matmul.cols
    compiled = compile_program(mnist, DEFAULT, batch)
    weights = {name: compiled.memory.regions[name] for name in mnist.constants if name.endswith(".weight")}
    loaded = dict.fromkeys(weights, 0)
    for ins in compiled.instructions:
        for name, (addr, size) in weights.items():
            if ins.opcode == Opcode.LOAD and ins.mem == Memory.B and addr <= ins.dram_addr < addr + size:
                loaded[name] += ins.x_count * ins.y_count * ins.z_count
    assert loaded == {name: size for name, (_, size) in weights.items()}
    n, d = mnist.config.num_tokens, mnist.config.embed_dim
    matmuls = sum(ins.opcode == Opcode.MATMUL for ins, origin in zip(compiled.instructions, compiled.origins)
                  if origin == "blocks.0.attn.qkv")
    assert matmuls == -(-batch * n // r) * -(-3 * d // c) < batch * -(-n // r) * -(-3 * d // c)


def test_manifest_and_regions_hold_the_batch(mnist):
    one, three = compile_program(mnist, DEFAULT), compile_program(mnist, DEFAULT, 3)
    assert three.manifest["batch"] == 3 and three.manifest["input"]["shape"] == one.manifest["input"]["shape"]
    assert three.input_region()[1] == 3 * one.input_region()[1]
    assert three.output_place().shape == (3, 10) and three.manifest["output"]["shape"] == [3, 10]
    with pytest.raises(IntVitError, match=r"takes 3 int8 images of 784 values each"):
        execute(three, images(mnist, 1, seed=0))


def test_batch_limits_are_one_line(mnist):
    with pytest.raises(IntVitError, match=r"^compile: batch must be a positive integer, not 0$"):
        compile_program(mnist, DEFAULT, 0)
    with pytest.raises(IntVitError, match=r"^compile: batch 100000: the program's memory map takes [\d,]+ bytes, "
                                          r"beyond the 32-bit address space \(4,294,967,296 bytes\); at most "
                                          r"batch (\d+) fits$") as info:
        compile_program(mnist, DEFAULT, 100000)
    fits = int(info.value.args[0].rsplit("batch ", 1)[1].split()[0])
    assert 1000 < fits < 100000


def test_simulate_compiled_batch(capsys):
    assert main(["simulate", "--compiled", "--no-functional", "--model", "mnist", "--batch", "2", "--json", "-"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert main(["simulate", "--compiled", "--no-functional", "--model", "mnist", "--json", "-"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["batch"] == 2 and two["macs"] == 2 * one["macs"]
    assert two["cycles_per_image"] == two["total_cycles"] / 2 < one["total_cycles"]
    assert two["mac_utilization"] > one["mac_utilization"]
    assert main(["simulate", "--compiled", "--no-functional", "--model", "mnist", "--batch", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch 100000: " in err and "at most batch" in err and "\n" not in err and "Traceback" not in err


def test_compile_batch_check(tmp_path, mnist, capsys):
    path = tmp_path / "mnist.npz"
    mnist.save(path)
    out = tmp_path / "out"
    assert main(["compile", "--program", str(path), "--batch", "2", "--check", "--out", str(out), "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["check"]["bit_exact"] and len(summary["check"]["logits"]) == 2
    assert summary["check"]["logits"][0] != summary["check"]["logits"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["batch"] == 2 and manifest["output"]["shape"] == [2, 10]
    assert main(["simulate", "--compiled", "--program", str(path), "--batch", "2", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["logits"] == summary["check"]["golden_logits"] and len(report["predicted_classes"]) == 2


def test_place_rows_cut_at_image_boundaries():
    """``Place.runs``: the patch rows of 3 images' token rows (5 a image after a class row, 16-byte
    rows) and a constant repeated for each image; a dense token tensor is one matrix."""
    gapped = Place(1016, (3, 5, 16), (96, 16, 1), 1).matrix()
    assert gapped.shape == (15, 16) and (gapped.period, gapped.image_stride) == (5, 96)
    assert gapped.runs(3, 8) == [(1016 + 3 * 16, 0, 2), (1016 + 96, 2, 5), (1016 + 192, 7, 1)]
    assert gapped.runs(5, 5) == [(1016 + 96, 0, 5)]
    repeated = Place(64, (5, 16), (16, 1), 1).repeat(3)
    assert repeated.runs(4, 3) == [(64 + 64, 0, 1), (64, 1, 2)]
    dense = Place(0, (3, 6, 16), (96, 16, 1), 1).matrix()
    assert dense.period == 0 and dense.runs(4, 10) == [(64, 0, 10)]
    heads = Place(0, (2, 3, 6, 4), (288, 4, 48, 1), 1)
    assert heads.count == 6 and heads.matrix(4) == Place(288 + 4, (6, 4), (48, 1), 1)
