"""LayerNorm: parameter checks, and the cocotb bench on Icarus against ``quant.layernorm.int_layernorm``."""

from __future__ import annotations

import numpy as np
import pytest
from runner import check_cycles
from sim_streams import simulate_stream

from intvit.quant.errors import IntVitError
from intvit.quant.layernorm import int_layernorm, layernorm_divisors
from intvit.quant.requant import dyadic
from intvit.rtl.layernorm import LAYERNORM_ROW_OVERHEAD_CYCLES, LayerNorm, layernorm_period_cycles

SEED = 2024
CYCLE_ROWS = [1, 2, 5]


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, r"^LayerNorm lanes must be a positive integer, not 0$"),
    ({"lanes": "8"}, r"^LayerNorm lanes must be a positive integer, not '8'$"),
    ({"width": -4}, r"^LayerNorm width must be a positive integer, not -4$"),
    ({"width": 5000}, r"^LayerNorm width 5000 is too large for an INT32 sum of squares$"),
])
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(IntVitError, match=message):
        LayerNorm(**kwargs)


def test_properties():
    unit = LayerNorm(lanes=4, width=50)
    assert (unit.lanes, unit.width, unit.latency, unit.period) == (4, 50, LAYERNORM_ROW_OVERHEAD_CYCLES,
                                                                   layernorm_period_cycles(13))
    assert unit.divisors == layernorm_divisors(50)
    with pytest.raises(AttributeError):
        unit.width = 3


# (lanes, width, random rows): the shipped MNIST unit (8 lanes, width 64) carries the volume;
# DeiT-Tiny's width 192, a width not a multiple of the lanes, and a 1-lane, 1-wide unit cover
# the other shapes; 2 lanes of width 100 make the row stage (not Newton's) the slowest. With the
# 9 edge rows per run, 1,235 rows in all by default; the slow run takes the MNIST unit through
# 1,550 rows (the same seed: the first 700 are the default's).
# The default run: 8 lanes over a width that fills them, the width-1 edge, 2 lanes over a width that
# does not; the rest are slow.
BENCH_SHAPES = [(8, 64, 700), pytest.param(8, 64, 1550, marks=pytest.mark.slow),
                pytest.param(8, 192, 50, marks=pytest.mark.slow), pytest.param(3, 10, 300, marks=pytest.mark.slow),
                (1, 1, 100), (2, 100, 40)]


@pytest.mark.parametrize("lanes, width, rows", BENCH_SHAPES)
def test_bench_matches_int_layernorm(bench, lanes, width, rows):
    unit = LayerNorm(lanes, width)
    run = bench(unit, toplevel="layernorm", test_module="bench_layernorm",
                params={"lanes": lanes, "width": width, "latency": unit.latency, "seed": SEED + width,
                        "rows": rows, "cycle_rows": CYCLE_ROWS})
    print(f"bench_layernorm lanes={lanes} width={width} rows={run['rows']}: {run.wall_s:.2f} s")
    assert run["rows"] == rows + 9
    # The RTL's declared first-row latency and period against its measured cycles.
    for record in run["records"]:
        assert record["cycles"] == 3 * -(-width // lanes) + unit.latency + (record["rows"] - 1) * unit.period, record
    check_cycles("layernorm", run["records"])


def test_matches_int_layernorm_in_amaranth_sim():
    rows = np.array([[-128, 127, 3, 0], [5, 5, 5, 5], [1, 0, 0, -1]])
    gamma, beta = np.array([127, -128, 1, 64]), np.array([0, 1000, -(2**31), 2**31 - 1])
    multiplier, shift = dyadic(np.array([1e-3, 1e-4, 1e-9, 1e-8]))
    dut = LayerNorm(lanes=4, width=4)
    params = {"addr": 0, "data": [{"gamma": int(g), "beta": int(b), "multiplier": int(m), "shift": int(s)}
                                  for g, b, m, s in zip(gamma, beta, multiplier, shift)]}

    def beat(ctx, row, load_params):
        ctx.set(dut.i.payload, row.tolist())
        ctx.set(dut.params.payload, params)
        ctx.set(dut.params.valid, load_params)      # taken with the first row's first beat

    got = simulate_stream(dut, [lambda ctx, row=row, k=k: beat(ctx, row, k == 0) for k, row in enumerate(rows)],
                          len(rows))
    want = int_layernorm(rows, gamma, beta, multiplier, shift, layernorm_divisors(4))
    assert [[v for v in word.data] for word in got] == want.tolist()
