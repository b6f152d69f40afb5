"""LayerNorm fused into the residual-add chain (issue 13): the tiles that complete rows of a residual
ADD normalise them in ACC, so the LayerNorm op emits nothing of its own; where its rows or records
do not fit beside the tile the compiler keeps the LayerNorm as its own job. Every stream here is
also proven race-free (``check_hazards``) and executed bit for bit against the golden executor,
in program order and in the overlapped order of its cycle schedule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from intvit.compiler.codegen import compile_program
from intvit.compiler.executor import execute
from intvit.compiler.isa import Memory, Opcode
from intvit.compiler.verify import check_hazards
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import schedule

CONFIG = AcceleratorConfig()


def program_for(config, seed: int = 0):
    torch.manual_seed(seed)
    x = np.random.default_rng(seed).standard_normal((2, config.in_chans, config.img_size, config.img_size))
    return quantize_model(ViT(config).eval(), x.astype(np.float32))


def compiled_exact(program, config, timed: bool = True):
    compiled = compile_program(program, config)
    assert check_hazards(compiled.instructions, compiled.geometry) > 0
    c = program.config
    x = program.quantize_input(np.random.default_rng(1).standard_normal(
        (1, c.in_chans, c.img_size, c.img_size)).astype(np.float32))
    golden = run_program(program, x)
    np.testing.assert_array_equal(execute(compiled, x), golden)
    if timed:
        report = schedule(compiled.instructions, config)
        np.testing.assert_array_equal(execute(compiled, x, timing=(report.start, report.end)), golden)
    return compiled


def by_origin(compiled, opcode: Opcode) -> dict[str, list]:
    out: dict[str, list] = {}
    for ins, name in zip(compiled.instructions, compiled.origins):
        if ins.opcode == opcode:
            out.setdefault(name, []).append(ins)
    return out


def layernorms(program) -> list[str]:
    return [op.name for op in program.ops if op.kind == "layernorm"]


@pytest.fixture(scope="module")
def mnist():
    program = program_for(get_config("mnist"))
    return program, compiled_exact(program, CONFIG)


def test_layernorms_after_residual_adds_run_on_the_tiles(mnist):
    program, compiled = mnist
    depth = program.config.depth
    norms = by_origin(compiled, Opcode.LAYERNORM)
    rows = program.tensor_shapes(1)["embed"][1]
    for block in range(depth):
        for job in (f"blocks.{block}.attn.proj", f"blocks.{block}.mlp.fc2"):
            # every row of the residual once (the last block's fc2: the class token for the final norm)
            expect = 1 if job == f"blocks.{depth - 1}.mlp.fc2" else rows
            assert sum(ins.rows for ins in norms.get(job, [])) == expect, job
    # The fused LayerNorms emit nothing of their own: no LOAD, SYNC or STORE (blocks.0.norm1
    # follows the position embedding's ADD, which is no matmul chain, and stays a job).
    fused = [name for name in layernorms(program) if name != "blocks.0.norm1"]
    assert fused and not set(fused) & set(compiled.origins)
    assert norms["blocks.0.norm1"]
    # Each normalised row is stored once, from the slot the residual was stored from before.
    outputs = {name: compiled.memory.regions[name] for name in fused}
    stored = dict.fromkeys(outputs, 0)
    for ins in compiled.instructions:
        for name, (addr, size) in outputs.items():
            if ins.opcode == Opcode.STORE and addr <= ins.dram_addr < addr + size:
                stored[name] += ins.z_count
    assert stored == {name: 1 if name == "norm" else rows for name in fused}


def test_a_fused_layernorm_waits_for_the_residual_store(mnist):
    """Planted fault: the in-place LayerNorm no longer waits for the STORE of the residual it overwrites."""
    _, compiled = mnist
    stream = list(compiled.instructions)
    index = next(i for i, (ins, name) in enumerate(zip(stream, compiled.origins))
                 if ins.opcode == Opcode.LAYERNORM and name.endswith("attn.proj") and ins.pop_next)
    stream[index] = stream[index].replace(pop_next=0)
    with pytest.raises(IntVitError, match=rf"^instruction \d+ \(\w+\) may overtake instruction \d+ \(\w+\): "
                                          r"both touch ACC and no token orders them$|pops a token"):
        check_hazards(stream, compiled.geometry)


def test_deit_tiny_fuses_both_layernorms_of_a_block():
    # DeiT-Tiny's projection keeps whole rows (B in both halves); fc2 runs in column groups and
    # normalises on the last group's tiles, loading the columns the earlier groups stored.
    program = program_for(dataclasses.replace(get_config("deit-tiny"), depth=2))
    compiled = compiled_exact(program, CONFIG, timed=False)
    norms = by_origin(compiled, Opcode.LAYERNORM)
    assert sum(ins.rows for ins in norms["blocks.0.attn.proj"]) == 197
    assert sum(ins.rows for ins in norms["blocks.0.mlp.fc2"]) == 197
    assert [ins.rows for ins in norms["blocks.1.mlp.fc2"]] == [1]
    assert set(norms) == {"blocks.0.norm1", "blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.attn.proj",
                          "blocks.1.mlp.fc2"}
    loads = by_origin(compiled, Opcode.LOAD)["blocks.0.mlp.fc2"]
    residual = compiled.memory.regions["blocks.0.residual"][0]
    assert any(ins.mem == Memory.ACC and residual <= ins.dram_addr for ins in loads)
    # The slots keep LOADs off words a STORE still reads: one SYNC per job, for its first tiles.
    syncs = by_origin(compiled, Opcode.SYNC)
    assert all(len(syncs.get(f"blocks.{b}.{job}", ())) <= 1 for b in range(2) for job in ("attn.proj", "mlp.fc2"))


@pytest.mark.parametrize("changes", [{"buffers__param_bytes": 2048}, {"buffers__ofmap_bytes": 8192}],
                         ids=["param-records", "acc-slots"])
def test_layernorm_stays_a_job_where_the_tile_has_no_room(changes, mnist):
    program, _ = mnist
    compiled = compiled_exact(program, CONFIG.with_(**changes))
    norms = by_origin(compiled, Opcode.LAYERNORM)
    assert set(norms) == set(layernorms(program))
