"""Divider: parameter checks, Amaranth-simulator timing, and the cocotb bench on Icarus and Verilator."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from intvit.quant.errors import IntVitError
from intvit.rtl.divider import Divider, divider_cycles, divider_steps
from runner import require

SEED = 2024


@pytest.mark.parametrize("width", [0, -3, 8.0, False])
def test_rejects_bad_width(width):
    with pytest.raises(IntVitError, match=r"^Divider width must be a positive integer, not "):
        Divider(width)


@pytest.mark.parametrize("quotient_width", [0, 32, 16.0, True])
def test_rejects_bad_quotient_width(quotient_width):
    with pytest.raises(IntVitError, match=r"^Divider quotient_width must be an integer from 1 to width 31, not "):
        Divider(31, quotient_width)


def test_properties():
    unit = Divider(31)
    assert (unit.width, unit.quotient_width, unit.cycles, divider_cycles(31)) == (31, 31, 17, 17)
    narrow = Divider(31, 16)
    assert (narrow.width, narrow.quotient_width, narrow.cycles) == (31, 16, 9)
    with pytest.raises(AttributeError):
        unit.width = 8


@pytest.mark.parametrize("quotient_width, dividend, divisor", [(8, 200, 7), (5, 200, 7), (3, 200, 29), (1, 200, 101),
                                                              (8, 0, 3), (8, 255, 1), (8, 254, 255)])
def test_one_division_in_amaranth_sim(quotient_width, dividend, divisor):
    dut = Divider(8, quotient_width)
    seen = {}

    async def testbench(ctx):
        ctx.set(dut.i.payload.dividend, dividend)
        ctx.set(dut.i.payload.divisor, divisor)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()                    # the input handshake edge
        ctx.set(dut.i.valid, 0)
        edges = 0
        while not ctx.get(dut.o.valid):
            await ctx.tick()
            edges += 1
        seen["result"] = (ctx.get(dut.o.payload.quotient), ctx.get(dut.o.payload.remainder))
        seen["edges"] = edges

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    # Offered after ceil(quotient_width / 2) more edges (two quotient bits each), taken one edge later still.
    assert seen == {"result": divmod(dividend, divisor), "edges": divider_steps(quotient_width)}
    assert divider_cycles(quotient_width) == seen["edges"] + 1


@pytest.mark.parametrize("width, quotient_width, vectors", [(31, 31, 1500),
                                                                pytest.param(8, 8, 500, marks=pytest.mark.slow),
                                                                (31, 16, 1500)])
def test_bench_matches_divmod(bench, width, quotient_width, vectors):
    run = bench(Divider(width, quotient_width), toplevel="divider", test_module="bench_divider",
                params={"width": width, "quotient_width": quotient_width, "seed": SEED + width + quotient_width,
                        "vectors": vectors})
    cycles = divider_cycles(quotient_width)
    assert [r["cycles"] for r in run["runs"]] == [cycles + 1, 5 * cycles + 1]


@pytest.mark.slow
def test_bench_on_verilator(bench):
    # The shipped Verilog also starts cleanly and computes right on a second simulator. Slow: the
    # default suite runs the whole System, dividers included, on Verilator (tests/harness/test_rtl_run.py).
    require("verilator")
    run = bench(Divider(8, 8), toplevel="divider", test_module="bench_divider", simulator="verilator",
                params={"width": 8, "quotient_width": 8, "seed": SEED, "vectors": 200})
    assert [r["cycles"] for r in run["runs"]] == [divider_cycles(8) + 1, 5 * divider_cycles(8) + 1]
