"""Softmax: parameter checks, and the cocotb bench on Icarus against ``quant.softmax.int_softmax``."""

from __future__ import annotations

import numpy as np
import pytest
from runner import check_cycles
from sim_streams import simulate_stream

from intvit.quant.errors import IntVitError
from intvit.quant.softmax import int_softmax
from intvit.rtl.softmax import SOFTMAX_ROW_OVERHEAD_CYCLES, Softmax, softmax_period_cycles

SEED = 2024
CYCLE_CASES = [[1, 1], [2, 50], [3, 197], [4, 8], [5, 50], [5, 197]]
# (lanes, max_length, random rows): the shipped MNIST unit (8 lanes, 50 tokens) carries the
# volume; DeiT's 197 tokens on 4 lanes and a 1-lane unit cover the other shapes. With the
# 12 edge rows per run, 2,036 rows in all.


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, r"^Softmax lanes must be a positive integer, not 0$"),
    ({"lanes": 1.5}, r"^Softmax lanes must be a positive integer, not 1.5$"),
    ({"max_length": 0}, r"^Softmax max_length must be a positive integer, not 0$"),
    ({"max_length": 1 << 20}, r"^Softmax max_length 1048576 is too long for a 31-bit row total$"),
])
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(IntVitError, match=message):
        Softmax(**kwargs)


def test_properties():
    unit = Softmax(lanes=4, max_length=100)
    assert (unit.lanes, unit.max_length, unit.latency) == (4, 100, SOFTMAX_ROW_OVERHEAD_CYCLES)
    assert (unit.period(100), unit.period(97)) == (softmax_period_cycles(25), softmax_period_cycles(25))
    with pytest.raises(AttributeError):
        unit.max_length = 3


@pytest.mark.parametrize("lanes, max_length, rows", [(8, 50, 1600), (4, 197, 340),
                                                          pytest.param(1, 200, 60, marks=pytest.mark.slow)])
def test_bench_matches_int_softmax(bench, lanes, max_length, rows):
    unit = Softmax(lanes, max_length=max_length)
    cases = [[count, length] for count, length in CYCLE_CASES if length <= max_length]
    run = bench(unit, toplevel="softmax", test_module="bench_softmax",
                params={"lanes": lanes, "max_length": max_length, "latency": unit.latency, "seed": SEED + lanes,
                        "rows": rows, "cycle_cases": cases})
    print(f"bench_softmax lanes={lanes} rows={run['rows']}: {run.wall_s:.2f} s")
    assert run["rows"] == rows + 12
    # The RTL's declared first-row latency and period against its measured cycles.
    for record in run["records"]:
        assert record["cycles"] == (3 * -(-record["length"] // lanes) + unit.latency
                                    + (record["rows"] - 1) * unit.period(record["length"])), record
    check_cycles("softmax", run["records"])


def test_matches_int_softmax_in_amaranth_sim():
    rows = [np.array([4096, 0, -4096, 100, 2**31 - 1, -2**31]), np.array([-5])]
    dut = Softmax(lanes=4, max_length=8)
    beats = []
    for row in rows:
        padded = np.concatenate([row, np.zeros(-len(row) % 4, dtype=np.int64)]).reshape(-1, 4)
        beats += [lambda ctx, beat=beat, length=len(row): (ctx.set(dut.i.payload, beat.tolist()),
                                                          ctx.set(dut.length, length))
                  for beat in padded]
    got = simulate_stream(dut, beats, len(beats))
    assert [[v for v in word.data] for word in got] == [
        int_softmax(rows[0])[:4].tolist(), [*int_softmax(rows[0])[4:].tolist(), 0, 0], [127, 0, 0, 0]]
    assert [word.last for word in got] == [0, 1, 1]
