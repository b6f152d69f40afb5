"""Softmax: parameter checks, and the cocotb bench on Icarus against ``quant.softmax.int_softmax``."""

from __future__ import annotations

import pytest
from runner import check_cycles

from quant.errors import IntVitError
from rtl.softmax import SOFTMAX_ROW_OVERHEAD_CYCLES, Softmax

SEED = 2024
MAX_LENGTH = 200
CYCLE_CASES = [[1, 1], [2, 50], [3, 197], [4, 8]]


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
    with pytest.raises(AttributeError):
        unit.max_length = 3


@pytest.mark.parametrize("lanes, rows", [(1, 40), (4, 150), (8, 60)])
def test_bench_matches_int_softmax(bench, lanes, rows):
    unit = Softmax(lanes, max_length=MAX_LENGTH)
    run = bench(unit, toplevel="softmax", test_module="bench_softmax",
                params={"lanes": lanes, "max_length": MAX_LENGTH, "latency": unit.latency, "seed": SEED + lanes,
                        "rows": rows, "cycle_cases": CYCLE_CASES})
    print(f"bench_softmax lanes={lanes} rows={rows}: {run.wall_s:.2f} s")
    check_cycles("softmax", run["records"])
