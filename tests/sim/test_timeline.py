"""sim.timeline: busy, exposed and critical-path cycles of small schedules worked out by hand, and the Gantt chart."""

from __future__ import annotations

import numpy as np
import pytest

from intvit.compiler.isa import Instruction, Memory, Opcode
from intvit.quant.errors import IntVitError
from intvit.sim import report as report_module
from intvit.sim.config import AcceleratorConfig
from intvit.sim.report import plot_timeline
from intvit.sim.schedule import matmul_times, schedule
from intvit.sim.simulator import OpReport, SimReport
from intvit.sim.timeline import Timeline, merge_intervals, overlap_length

CONFIG = AcceleratorConfig()          # 16x16, AXI 128 bits, 8-cycle latencies; op-level 16 bytes a cycle
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_merge_and_overlap():
    merged = merge_intervals([(5, 9), (0, 3), (3, 4), (8, 12), (20, 20), (15, 18)])
    np.testing.assert_array_equal(merged, [[0, 4], [5, 12], [15, 18]])
    assert overlap_length(merged, merge_intervals([(2, 6), (11, 30)])) == 2 + 1 + 1 + 3


def hand_timeline() -> Timeline:
    # array [0,10) [20,30); requant [8,22); load [0,5) [25,40); path: array, requant, array, load.
    return Timeline.build(40, {"array": [(0, 10), (20, 30)], "requant": [(8, 22)], "load": [(0, 5), (25, 40)]},
                          [(0, 10, "array", "a"), (10, 20, "requant", "a"), (20, 30, "array", "b"),
                           (30, 40, "load", "b")])


def test_busy_exposed_and_critical_by_hand():
    t = hand_timeline()
    units = t.units()
    assert units["array"] == {"busy_cycles": 20, "exposed_cycles": None, "critical_cycles": 20}
    # requant [8,22) under the array in [8,10) and [20,22): 10 cycles exposed.
    assert units["requant"] == {"busy_cycles": 14, "exposed_cycles": 10, "critical_cycles": 10}
    # load [0,5) under the array; [25,40) under it until 30: 10 exposed.
    assert units["load"] == {"busy_cycles": 20, "exposed_cycles": 10, "critical_cycles": 10}
    assert units["store"] == {"busy_cycles": 0, "exposed_cycles": 0, "critical_cycles": 0}
    assert sum(entry["critical_cycles"] for entry in units.values()) == 40
    assert t.critical_by_part()[1] == ("b", {**dict.fromkeys(units, 0), "array": 10, "load": 10})
    assert t.stretches() == 4
    assert t.as_dict()["array_idle_cycles"] == 20


def test_bins_by_hand():
    edges, busy, critical = hand_timeline().bins(4)
    np.testing.assert_array_equal(edges, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(busy["array"], [1, 0, 1, 0])
    np.testing.assert_allclose(busy["requant"], [0.2, 1, 0.2, 0])
    np.testing.assert_allclose(busy["load"], [0.5, 0, 0.5, 1])
    np.testing.assert_allclose(critical.sum(axis=0), 1)
    np.testing.assert_allclose(critical[1], [0, 1, 0, 0])             # requant bounds the second bin


def test_path_must_tile_the_run():
    with pytest.raises(IntVitError, match=r"^the critical path must cover cycles 0\.\.40 without gaps or overlaps$"):
        Timeline.build(40, {}, [(0, 10, "array", "a"), (12, 40, "load", "a")])
    with pytest.raises(IntVitError, match=r"^unknown unit\(s\) dma; units are array, requant"):
        Timeline.build(40, {"dma": [(0, 1)]}, [(0, 40, "array", "a")])


def load(**fields) -> Instruction:
    return Instruction(Opcode.LOAD, **{"mem": Memory.A, "x_count": 64, "y_count": 1, "z_count": 1, **fields})


def test_compiled_schedule_critical_path_by_hand():
    # Two LOADs (13 cycles each: 1 + 8 + 4 beats) feed two MATMULs (k = 64); one burst of fetch
    # arrives at 24, LOAD 0 dispatches at 24 and starts at 25. MATMUL 0 waits for LOAD 0's token
    # (38); LOAD 1 runs [38, 51) under MATMUL 0; MATMUL 1 starts when the array takes MATMUL 0's
    # last beat (38 + 64) and streams while MATMUL 0 drains; END follows MATMUL 1's last row.
    stream = [load(push_next=1), load(push_next=1), Instruction(Opcode.MATMUL, k=64, pop_prev=1),
              Instruction(Opcode.MATMUL, k=64, pop_prev=1), Instruction(Opcode.END)]
    first_beat, first_row = matmul_times(38, 64, -1, CONFIG)
    assert (first_beat, first_row) == (38 + 64, 38 + 64 + 16 + 16 - 1 + 1)
    _, last_row = matmul_times(first_beat, 64, first_row, CONFIG)
    report = schedule(stream, CONFIG)
    np.testing.assert_array_equal(report.start, [25, 38, 38, first_beat, last_row + 1])
    array = last_row + 1 - 38                              # 2 x 64 beats and one drain
    t = report.timeline(["blocks.0.qkv"] * 3 + ["blocks.1.qkv"] * 2)       # op names, grouped by block
    units = t.units()
    assert units["load"] == {"busy_cycles": 26, "exposed_cycles": 13, "critical_cycles": 13}
    assert units["array"] == {"busy_cycles": array, "exposed_cycles": None, "critical_cycles": array}
    # Fetch (24) and dispatch (1) before LOAD 0, END's own cycle.
    assert units["control"]["critical_cycles"] == 24 + 1 + 1 == t.total_cycles - 13 - array
    assert [(part, cycles["array"]) for part, cycles in t.critical_by_part()] == [("blocks.0", 64),
                                                                                ("blocks.1", array - 64)]


def test_compiled_path_through_a_full_queue():
    # 18 MATMULs after a slow LOAD: the 17th cannot dispatch until the 1st starts (QUEUE_DEPTH 16),
    # but the path still runs back through the MATMULs, the LOAD and the fetch.
    stream = [load(x_count=4096, push_next=1), Instruction(Opcode.MATMUL, k=8, pop_prev=1),
              *[Instruction(Opcode.MATMUL, k=8)] * 17, Instruction(Opcode.END)]
    report = schedule(stream, CONFIG)
    critical = report.timeline().critical_cycles()
    assert sum(critical.values()) == report.total_cycles
    assert critical["array"] == report.end[18] - report.start[1]       # back to back on the array
    assert critical["load"] == report.end[0] - report.start[0]


def test_op_level_timeline_by_hand():
    ops = [
        OpReport("mm", "matmul", "matmul", 100, 100, compute_cycles=100),
        OpReport("mm.requant", "requant", "requant", 30, 4, compute_cycles=30),       # fused: ends at 104
        OpReport("norm", "layernorm", "layernorm", 50, 50, dram_bytes=800, dram_write_bytes=320, bound="memory",
                 compute_cycles=20),                                                   # 30 read + 20 write cycles
        OpReport("split", "split_heads", "none", 0, 0),
    ]
    t = SimReport(CONFIG, "hand", 1, ops).timeline()
    assert t.total_cycles == 154
    np.testing.assert_array_equal(t.busy["requant"], [[74, 104]])
    np.testing.assert_array_equal(t.busy["load"], [[104, 134]])
    np.testing.assert_array_equal(t.busy["store"], [[134, 154]])
    units = t.units()
    assert units["requant"] == {"busy_cycles": 30, "exposed_cycles": 4, "critical_cycles": 4}
    assert units["layernorm"] == {"busy_cycles": 20, "exposed_cycles": 20, "critical_cycles": 0}
    assert (units["load"]["critical_cycles"], units["store"]["critical_cycles"], units["array"]["critical_cycles"]) \
        == (30, 20, 100)


@pytest.mark.parametrize("exact", [True, False])
def test_gantt_plot(tmp_path, monkeypatch, exact):
    if not exact:
        monkeypatch.setattr(report_module, "EXACT_INTERVALS", 0)
    path = plot_timeline(hand_timeline(), tmp_path / "gantt.png", title="hand", bins=4)
    assert path.read_bytes().startswith(PNG_MAGIC)
