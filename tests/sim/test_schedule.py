"""sim.schedule: AXI bursts, per-instruction cycles from the units' formulas, and the controller's schedule."""

from __future__ import annotations

import numpy as np
import pytest

from intvit.compiler.isa import Instruction, Memory, Opcode
from intvit.quant.errors import IntVitError
from intvit.sim.config import AcceleratorConfig
from intvit.sim.layernorm import layernorm_cycles
from intvit.sim.matmul import fold_cycles, fold_plan
from intvit.sim.schedule import burst_cost, instruction_cycles, predict_cycles, schedule
from intvit.sim.softmax import softmax_cycles

CONFIG = AcceleratorConfig()          # 16x16, AXI 128 bits, 8-cycle latencies, 16-beat bursts


@pytest.mark.parametrize(("offset", "size", "beat", "max_beats", "expected"), [
    (0, 64, 16, 16, (1, 4)),
    (8, 16, 16, 16, (1, 2)),            # unaligned: the run touches two beats
    (4090, 12, 16, 256, (2, 2)),        # cut at the 4 KiB boundary
    (0, 1000, 16, 16, (4, 63)),         # cut every 16 beats
    (2, 8, 4, 16, (1, 3)),              # 32-bit port
    (0, 4096, 128, 256, (1, 32)),
])
def test_burst_cost(offset, size, beat, max_beats, expected):
    assert burst_cost(offset, size, beat, max_beats) == expected


def load(**fields) -> Instruction:
    return Instruction(Opcode.LOAD, **{"mem": Memory.A, "x_count": 1, "y_count": 1, "z_count": 1, **fields})


def test_dma_cycles_runs_and_bursts():
    # 4 rows of 64 bytes back to back: one run of 256 bytes, one 16-beat burst.
    assert instruction_cycles(load(x_count=64, z_count=4, z_stride=64), CONFIG) == 1 + 8 + 16
    # Rows 100 bytes apart: four runs of 4, 5, 5 and 5 beats.
    assert instruction_cycles(load(x_count=64, z_count=4, z_stride=100), CONFIG) == 1 + 4 * 8 + 19
    # Rows of a plane contiguous, planes apart: one run per plane.
    assert instruction_cycles(load(x_count=16, y_count=2, y_stride=16, z_count=3, z_stride=1000), CONFIG) == \
        1 + 3 * 8 + 2 + 3 + 2   # planes at 0, 1000, 2000: 2, 3 and 2 beats
    store = Instruction(Opcode.STORE, mem=Memory.ACC, elem=1, x_count=8, y_count=1, z_count=1)
    assert instruction_cycles(store, CONFIG.with_(memory__write_latency_cycles=3)) == 1 + 3 + 2
    narrow = CONFIG.with_(memory__axi_data_bits=32, memory__read_latency_cycles=20)
    assert instruction_cycles(load(x_count=64), narrow) == 1 + 20 + 16


def test_acc_planes_of_partial_words_are_runs_of_their_own():
    # docs/isa.md, RTL notes 1: ACC planes start at lane 0 of a 16-lane word, so 3 planes of
    # 50 INT32 elements (200 bytes, back to back) are 3 runs of 13 beats, each with its latency.
    acc = load(mem=Memory.ACC, elem=1, x_count=50, z_count=3, z_stride=200)
    assert instruction_cycles(acc, CONFIG) == 1 + 3 * (8 + 13)
    # Planes of whole words (64 elements) stay one run: 768 bytes, 48 beats, 3 bursts.
    assert instruction_cycles(acc.replace(x_count=64, z_stride=256), CONFIG) == 1 + 3 * 8 + 48
    # Outside ACC the rule does not apply: 600 contiguous bytes, one run of 38 beats.
    assert instruction_cycles(acc.replace(mem=Memory.A), CONFIG) == 1 + 8 * 3 + 38


@pytest.mark.parametrize(("rows", "cols", "latency"), [(16, 16, 1), (8, 4, 3), (32, 8, 0)])
@pytest.mark.parametrize("k", [1, 7, 64, 768])
def test_matmul_cycles_follow_sim_matmul(rows, cols, latency, k):
    config = CONFIG.with_(matmul__rows=rows, matmul__cols=cols, matmul__latency=latency)
    expected = 1 + fold_cycles(fold_plan(rows, k, cols, rows, cols, "os"), "native", latency)
    assert instruction_cycles(Instruction(Opcode.MATMUL, k=k), config) == expected


def test_vector_cycles():
    vector = lambda op, rows, length: Instruction(op, rows=rows, length=length)
    assert instruction_cycles(vector(Opcode.REQUANT, 3, 20), CONFIG) == 1 + 9 + 3
    assert instruction_cycles(vector(Opcode.ADD, 3, 20), CONFIG) == 1 + 9 + 3
    assert instruction_cycles(vector(Opcode.GELU, 2, 16), CONFIG) == 1 + 4 + 4
    assert instruction_cycles(vector(Opcode.SOFTMAX, 2, 50), CONFIG) == 1 + 3 * 7 + 26 + 27 == \
        1 + softmax_cycles(8, 26, 2, 50)
    assert instruction_cycles(vector(Opcode.LAYERNORM, 2, 64), CONFIG) == 1 + 8 + 3 * 8 + 73 + 47 == \
        1 + 8 + layernorm_cycles(8, 73, 2, 64)
    assert instruction_cycles(Instruction(Opcode.SYNC), CONFIG) == instruction_cycles(Instruction(Opcode.END), CONFIG) == 1


def test_schedule_of_a_small_stream_by_hand():
    stream = [
        load(x_count=64, push_next=1),                                                       # 1 + 8 + 4 beats
        Instruction(Opcode.MATMUL, k=64, pop_prev=1, push_next=1),                           # 112
        Instruction(Opcode.STORE, mem=Memory.ACC, x_count=16, y_count=1, z_count=1, pop_prev=1, push_prev=1),  # 10
        Instruction(Opcode.END, pop_next=1),
    ]
    report = schedule(stream, CONFIG)
    matmul = instruction_cycles(stream[1], CONFIG)
    # Fetch: one burst of 8 instructions, 16 beats, arrives at 8 + 16 = 24; dispatch 24, 25, 26, 27.
    np.testing.assert_array_equal(report.start, [25, 38, 38 + matmul, 48 + matmul])
    np.testing.assert_array_equal(report.end, [38, 38 + matmul, 48 + matmul, 49 + matmul])
    assert report.total_cycles == predict_cycles(stream, CONFIG) == 49 + matmul
    assert report.classes["MATMUL"] == {"count": 1, "busy_cycles": matmul}
    assert report.units["dma_load"] == 13 and report.dram_read_bytes == 64 and report.dram_write_bytes == 16


def test_fetch_bursts_and_dispatch():
    # 17 SYNCs and END: bursts arrive at 24, 48 and 72 (the third waits for room in the FIFO:
    # issued at max(48, dispatch of instruction 7 + 1 = 32)); one dispatch per cycle.
    report = schedule([Instruction(Opcode.SYNC)] * 17 + [Instruction(Opcode.END)], CONFIG)
    assert report.start[7] == 32 and report.start[8] == 49 and report.start[16] == 73
    assert report.total_cycles == 75


def test_hang_and_overflow_are_errors():
    with pytest.raises(IntVitError, match=r"^instruction 0 \(MATMUL\) waits for a load->compute token that no "
                                          r"earlier instruction gives: the controller would hang$"):
        schedule([Instruction(Opcode.MATMUL, k=1, pop_prev=1), Instruction(Opcode.END)], CONFIG)
    with pytest.raises(IntVitError, match=r"^load->compute token counter overflows its 8 bits$"):
        schedule([load(push_next=1)] * 256 + [Instruction(Opcode.END)], CONFIG)
    with pytest.raises(IntVitError, match=r"^instruction stream has no END$"):
        schedule([load()], CONFIG)
