"""compiler.compile_program and the instruction-level executor: bit for bit the golden executor.

Every compiled stream is also executed in the overlapped order of its cycle schedule
(``Machine.run_timed``), with the real durations and with random ones, so the dependency
tokens, not program order, are what keeps the data right.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from intvit.compiler.codegen import compile_program
from intvit.compiler.executor import execute
from intvit.compiler.isa import Instruction, Opcode, decode_program
from intvit.compiler.verify import check_hazards
from intvit.quant.checkpoint import load_embedded
from intvit.quant.config import ViTConfig, get_config
from intvit.quant.data import load_dataset, normalize
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import schedule

# Small scratchpads: K in chunks, streamed A and B, column groups, re-loaded parameters.
SMALL = AcceleratorConfig().with_(buffers__ifmap_bytes=1024, buffers__weight_bytes=1024, buffers__ofmap_bytes=8192,
                                  buffers__param_bytes=4096)
ODD = ViTConfig("odd", img_size=15, patch_size=5, in_chans=3, num_classes=7, embed_dim=35, depth=2, num_heads=5,
                mlp_ratio=3.0)


def random_program(config: ViTConfig, seed: int = 0):
    torch.manual_seed(seed)
    x = np.random.default_rng(seed).standard_normal((2, config.in_chans, config.img_size, config.img_size))
    return quantize_model(ViT(config).eval(), x.astype(np.float32))


def random_image(program, seed: int = 1) -> np.ndarray:
    c = program.config
    x = np.random.default_rng(seed).standard_normal((1, c.in_chans, c.img_size, c.img_size))
    return program.quantize_input(x.astype(np.float32))


def assert_compiled_exact(program, x: np.ndarray, config: AcceleratorConfig, jitters: int = 1):
    compiled = compile_program(program, config)
    assert check_hazards(compiled.instructions, compiled.geometry) > 0
    golden = run_program(program, x)
    np.testing.assert_array_equal(execute(compiled, x), golden)
    report = schedule(compiled.instructions, config)
    np.testing.assert_array_equal(execute(compiled, x, timing=(report.start, report.end)), golden)
    rng = np.random.default_rng(0)
    for _ in range(jitters):
        durations = rng.integers(1, 300, len(compiled.instructions))
        jittered = schedule(compiled.instructions, config, durations=durations)
        np.testing.assert_array_equal(execute(compiled, x, timing=(jittered.start, jittered.end)), golden)
    return compiled, report


@pytest.fixture(scope="module")
def mnist_embedded():
    model = load_embedded()
    train, _, _ = load_dataset("mnist", model.config, "train", 32)
    program = quantize_model(model, normalize(train, model.config))
    test, _, _ = load_dataset("mnist", model.config, "test", 2)
    return program, program.quantize_input(normalize(test, model.config))


def test_mnist_embedded_bit_exact(mnist_embedded):
    program, images = mnist_embedded
    compiled, report = assert_compiled_exact(program, images[:1], AcceleratorConfig(), jitters=1)
    assert decode_program(compiled.stream()) == compiled.instructions
    assert compiled.instructions[-1].opcode == Opcode.END
    assert report.total_cycles > 0
    # On the default scratchpads every weight fits on chip: each byte is loaded exactly once.
    weights = {name: compiled.memory.regions[name] for name in program.constants if name.endswith(".weight")}
    loaded = dict.fromkeys(weights, 0)
    for ins in compiled.instructions:
        for name, (addr, size) in weights.items():
            if ins.opcode == Opcode.LOAD and addr <= ins.dram_addr < addr + size:
                loaded[name] += ins.x_count * ins.y_count * ins.z_count
    assert loaded == {name: size for name, (_, size) in weights.items()}
    np.testing.assert_array_equal(execute(compiled, images[1:2]), run_program(program, images[1:2]))


NARROW_ARRAY = AcceleratorConfig().with_(matmul__rows=8, matmul__cols=4, requant__lanes=4, softmax__lanes=2,
                                         gelu__lanes=4, layernorm__lanes=1)


@pytest.fixture(scope="module")
def mnist_shaped():
    return random_program(get_config("mnist"))


@pytest.mark.parametrize(("model", "config"), [("mnist", SMALL), ("odd", SMALL), ("odd", NARROW_ARRAY)],
                         ids=["mnist-small-scratchpads", "odd-small-scratchpads", "odd-8x4-array"])
def test_tiling_bit_exact(model, config, mnist_shaped):
    program = mnist_shaped if model == "mnist" else random_program(ODD)
    assert_compiled_exact(program, random_image(program), config, jitters=0)


@pytest.mark.slow
def test_mnist_8x4_array_bit_exact(mnist_shaped):
    assert_compiled_exact(mnist_shaped, random_image(mnist_shaped), NARROW_ARRAY, jitters=2)


def test_deit_shaped_reduced_depth_bit_exact():
    program = random_program(dataclasses.replace(get_config("deit-tiny"), depth=1))
    assert_compiled_exact(program, random_image(program), AcceleratorConfig(), jitters=0)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deit-tiny", "deit-small", "deit-base"])
def test_deit_bit_exact(model):
    program = random_program(get_config(model))
    compiled = compile_program(program, AcceleratorConfig())
    x = random_image(program)
    np.testing.assert_array_equal(execute(compiled, x), run_program(program, x))


def test_manifest_and_image(mnist_embedded):
    program, _ = mnist_embedded
    compiled = compile_program(program, AcceleratorConfig())
    m = compiled.manifest
    assert m["format"] == "intvit-compiled" and m["instructions"] == len(compiled.instructions)
    assert m["output"]["shape"] == [1, 10] and m["output"]["dtype"] == "int32"
    assert m["input"]["image_shape"] == [1, 28, 28] and compiled.image.size == m["image_bytes"]
    # The host writes the image as patch rows (49 patches of 4 x 4 pixels), a permutation of its values.
    assert m["input"]["shape"] == [49, 16] and m["input"]["patch"] == 4
    x = np.arange(784, dtype=np.int16).astype(np.int8).reshape(1, 1, 28, 28)
    rows = compiled.memory.input_bytes(x).view(np.int8).reshape(49, 16)
    np.testing.assert_array_equal(rows[8], x[0, 0, 4:8, 4:8].reshape(-1))        # grid row 1, column 1
    addr, size = compiled.memory.regions["blocks.0.attn.qkv.weight"]
    np.testing.assert_array_equal(compiled.image[addr:addr + size].view(np.int8).reshape(192, 64),
                                  program.constants["blocks.0.attn.qkv.weight"].T)


@pytest.mark.parametrize(("changes", "message"), [
    ({"matmul__dataflow": "ws"}, r"^compile: matmul.dataflow 'ws' is not supported"),
    ({"buffers__ofmap_bytes": 4096},
     r"^compile: softmax 'blocks.0.attn.softmax': 16 rows of 50 scores need 64 ACC words, half of ACC holds 32$"),
    ({"buffers__param_bytes": 1024},
     r"^compile: add 'pos_embed': 64 parameter records do not fit half of PARAM \(32 records\)$"),
    ({"gelu__lanes": 3}, r"^gelu.lanes must be a positive divisor of matmul.cols \(16\), not 3$"),
])
def test_refuses_what_does_not_fit(changes, message, mnist_shaped):
    with pytest.raises(IntVitError, match=message):
        compile_program(mnist_shaped, AcceleratorConfig().with_(**changes))


def test_executor_flags_bad_instructions(mnist_embedded):
    program, images = mnist_embedded
    compiled = copy.copy(compile_program(program, AcceleratorConfig()))
    compiled.instructions = [Instruction(Opcode.MATMUL, k=5000), Instruction(Opcode.END)]
    with pytest.raises(IntVitError, match=r"^instruction 0 \(MATMUL\): operands 0\+5000 / 0\+5000 outside banks"):
        execute(compiled, images[:1])
    compiled.instructions = [Instruction(Opcode.STORE, mem=0, x_count=1, y_count=1, z_count=1)]
    with pytest.raises(IntVitError, match=r"^instruction 0 \(STORE\): STORE reads ACC only$"):
        execute(compiled, images[:1])


def test_hazard_check_catches_a_missing_dependency(mnist_shaped):
    """Planted fault: the first MATMUL no longer waits for the LOAD of its operands (push and pop removed)."""
    compiled = compile_program(mnist_shaped, AcceleratorConfig())
    stream = list(compiled.instructions)
    first = next(i for i, ins in enumerate(stream) if ins.opcode == Opcode.MATMUL)
    load = max(i for i in range(first) if stream[i].opcode == Opcode.LOAD and stream[i].push_next)
    assert stream[first].pop_prev
    stream[first] = stream[first].replace(pop_prev=0)
    stream[load] = stream[load].replace(push_next=0)
    with pytest.raises(IntVitError, match=rf"^instruction {first} \(MATMUL\) may overtake instruction \d+ "
                                          r"\(LOAD\): both touch (A|B|PARAM) and no token orders them$"):
        check_hazards(stream, compiled.geometry)


def test_a_missing_token_is_caught(mnist_embedded):
    """Planted fault: one LOAD no longer waits for the compute it depends on."""
    program, images = mnist_embedded
    config = AcceleratorConfig()
    compiled = copy.copy(compile_program(program, config))
    index = next(i for i, ins in enumerate(compiled.instructions)
                 if ins.opcode == Opcode.LOAD and ins.pop_next and i > len(compiled.instructions) // 2)
    compiled.instructions = list(compiled.instructions)
    compiled.instructions[index] = compiled.instructions[index].replace(pop_next=0)
    report = schedule(compiled.instructions, config)
    timed = execute(compiled, images[:1], timing=(report.start, report.end))
    assert not np.array_equal(timed, run_program(program, images[:1]))
