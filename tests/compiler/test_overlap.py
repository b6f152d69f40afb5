"""How well a compiled stream lets the load module run ahead of compute (issue 13), on MNIST's shapes.

The bit-exactness and the hazard proof of the same streams are ``test_compiler``'s; these check
the schedule properties that the compiler's ordering is for, each of which failed before it.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from intvit.compiler.codegen import compile_program
from intvit.compiler.isa import Geometry, Instruction, Memory, Opcode
from intvit.compiler.verify import check_hazards, mark_overlaps
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import schedule

CONFIG = AcceleratorConfig()


@pytest.fixture(scope="module")
def mnist():
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    program = quantize_model(ViT(get_config("mnist")).eval(), x)
    compiled = compile_program(program, CONFIG)
    return program, compiled, schedule(compiled.instructions, CONFIG)


def test_a_load_waits_for_stores_once_per_input(mnist):
    # A LOAD of a tensor that STOREs wrote goes through a SYNC in the compute queue; the SYNC
    # waits for the tensor's last STORE, so an op needs at most one per activation it reads
    # (before: one per row block, each holding the load back until compute reached it).
    # A job reads at most two activations (a matmul's A and B, or A and a fused residual's operand).
    _, compiled, _ = mnist
    syncs = collections.Counter(name for ins, name in zip(compiled.instructions, compiled.origins)
                                if ins.opcode == Opcode.SYNC)
    assert syncs and max(syncs.values()) <= 2, syncs


def test_next_head_operands_load_under_this_heads_compute(mnist):
    # Q.K^T keeps each head's K^T resident in one half of B: head h+1's blocks load into the
    # other half while head h computes, so they are all in before head h's last MATMUL ends.
    _, compiled, report = mnist
    ops = [(i, ins) for i, (ins, name) in enumerate(zip(compiled.instructions, compiled.origins))
           if name == "blocks.0.attn.qk"]
    b_loads = [i for i, ins in ops if ins.opcode == Opcode.LOAD and ins.mem == Memory.B]
    matmuls = [i for i, ins in ops if ins.opcode == Opcode.MATMUL]
    heads = get_config("mnist").num_heads
    per_head = len(matmuls) // heads
    for h in range(1, heads):
        first, last_before = matmuls[h * per_head], matmuls[h * per_head - 1]
        loads = [i for i in b_loads if matmuls[(h - 1) * per_head] < i < first]
        assert loads, f"head {h}: no B loads emitted during head {h - 1}"
        assert max(report.end[i] for i in loads) <= report.end[last_before], f"head {h}"


def test_compute_waits_little_for_loads_in_the_blocks(mnist):
    # Within the transformer blocks, the critical path runs through the load module for about
    # 31 k cycles (each op's first loads after the previous op's last STORE, and the transposed
    # V loads of 16-byte rows). That was a fifth of the blocks' cycles; the faster Softmax,
    # LayerNorm and fused chains since made the total shrink around it (to 116 k), so the bound
    # is on the cycles themselves: a load module that falls behind compute again (a SYNC per
    # tile, operands loaded after the tile that needs them) adds tens of thousands.
    _, compiled, report = mnist
    parts = dict(report.timeline(compiled.origins).critical_by_part())
    blocks = [cycles for part, cycles in parts.items() if part.startswith("blocks.")]
    load = sum(c["load"] for c in blocks)
    assert load < 34_000, f"{load} of {sum(sum(c.values()) for c in blocks)}"


def residual_adds(compiled, job: str) -> list:
    return [ins for ins, name in zip(compiled.instructions, compiled.origins) if name == job and ins.opcode == Opcode.ADD]


def test_residual_add_runs_on_the_projection_tiles(mnist):
    # The residual ADD after attn.proj and mlp.fc2 takes the requantised tile straight from ACC
    # (its other operand loaded beside it): the projection's output never goes to external memory.
    _, compiled, _ = mnist
    for block in range(get_config("mnist").depth):
        for proj in (f"blocks.{block}.attn.proj", f"blocks.{block}.mlp.fc2"):
            adds = residual_adds(compiled, proj)
            assert adds and all(ins.src != ins.src_b and ins.dst in (ins.src, ins.src_b) for ins in adds), proj
            assert not any(ins.opcode == Opcode.STORE and compiled.memory.regions[proj][0] <= ins.dram_addr <
                           sum(compiled.memory.regions[proj]) for ins in compiled.instructions), proj


def test_residual_add_after_a_chunked_matmul_runs_on_whole_rows(mnist):
    # With K cut into chunks (small scratchpads) the operands keep the load module busy: the ADD
    # runs after the matmul, row block by row block, on stored rows.
    program, _, _ = mnist
    small = CONFIG.with_(buffers__ifmap_bytes=1024, buffers__weight_bytes=1024, buffers__ofmap_bytes=8192,
                         buffers__param_bytes=4096)
    compiled = compile_program(program, small)
    assert not residual_adds(compiled, "blocks.0.mlp.fc2") and residual_adds(compiled, "blocks.0")


def _ordered(reads_matmul: int, matmuls: int = 3, vector_overlap: int = 1) -> list:
    """``matmuls`` MATMULs into disjoint ACC tiles, then a REQUANT of tile ``reads_matmul`` and END."""
    stream = [Instruction(Opcode.MATMUL, k=4, acc_addr=4 * j, acc_stride=1, overlap=int(j > 0)) for j in range(matmuls)]
    stream.append(Instruction(Opcode.REQUANT, src=4 * reads_matmul, dst=4 * reads_matmul, rows=4, length=4, stride=1,
                              overlap=vector_overlap))
    return stream + [Instruction(Opcode.END)]


GEOMETRY = Geometry(rows=4, cols=4, a_depth=64, b_depth=64, acc_words=64, param_records=64,
                    lanes=dict.fromkeys(("requant", "softmax", "gelu", "layernorm"), 4))


@pytest.mark.parametrize("reads, matmuls, safe", [(0, 3, True), (1, 3, False), (2, 3, False), (0, 2, False)])
def test_the_array_holds_two_matmuls(reads, matmuls, safe):
    # When a MATMUL starts, the one two before it has delivered its rows (the array streams one
    # fold while the previous drains): a vector instruction issued after MATMUL 2 may overlap it
    # and read MATMUL 0's rows, not MATMUL 1's or 2's. Planted in the checker: knowing the last
    # MATMUL (or the one before it) complete fails the unsafe cases.
    stream = _ordered(reads, matmuls)
    if safe:
        check_hazards(stream, GEOMETRY)
        assert mark_overlaps(stream, GEOMETRY)[matmuls].overlap == 1
    else:
        with pytest.raises(IntVitError, match=r"\(REQUANT\) may overtake instruction \d+ \(MATMUL\): both touch ACC"):
            check_hazards(stream, GEOMETRY)
        assert mark_overlaps([ins.replace(overlap=0) if "overlap" in ins.fields else ins for ins in stream],
                             GEOMETRY)[matmuls].overlap == 0


def test_the_vector_units_run_one_instruction_at_a_time():
    # A MATMUL issued after two vector instructions may overwrite the ACC words of the first (it
    # finished before the second started), not those of the second.
    requant = dict(rows=4, length=4, stride=1, overlap=1)
    head = [Instruction(Opcode.MATMUL, k=4, acc_addr=32, acc_stride=1),
            Instruction(Opcode.REQUANT, src=0, dst=0, **requant), Instruction(Opcode.REQUANT, src=8, dst=8, **requant)]
    for acc_addr, safe in ((0, True), (8, False)):
        stream = head + [Instruction(Opcode.MATMUL, k=4, acc_addr=acc_addr, acc_stride=1, overlap=1),
                         Instruction(Opcode.END)]
        if safe:
            check_hazards(stream, GEOMETRY)
        else:
            with pytest.raises(IntVitError, match=r"\(MATMUL\) may overtake instruction 2 \(REQUANT\)"):
                check_hazards(stream, GEOMETRY)
