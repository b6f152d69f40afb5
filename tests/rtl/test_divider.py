"""Divider: parameter checks, Amaranth-simulator timing, and the cocotb bench on Icarus."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from quant.errors import IntVitError
from rtl.divider import Divider, divider_cycles

SEED = 2024


@pytest.mark.parametrize("width", [0, -3, 8.0, False])
def test_rejects_bad_width(width):
    with pytest.raises(IntVitError, match=r"^Divider width must be a positive integer, not "):
        Divider(width)


def test_properties():
    unit = Divider(31)
    assert (unit.width, unit.cycles, divider_cycles(31)) == (31, 32, 32)
    with pytest.raises(AttributeError):
        unit.width = 8


def test_one_division_in_amaranth_sim():
    dut = Divider(8)
    seen = {}

    async def testbench(ctx):
        ctx.set(dut.i.payload.dividend, 200)
        ctx.set(dut.i.payload.divisor, 7)
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
    # Offered after `width` more edges, so taken `width + 1` edges after the input handshake.
    assert seen == {"result": divmod(200, 7), "edges": 8}
    assert divider_cycles(8) == seen["edges"] + 1


@pytest.mark.parametrize("width, vectors", [(31, 1500), (8, 500)])
def test_bench_matches_divmod(bench, width, vectors):
    run = bench(Divider(width), toplevel="divider", test_module="bench_divider",
                params={"width": width, "seed": SEED + width, "vectors": vectors})
    assert [r["cycles"] for r in run["runs"]] == [divider_cycles(width) + 1, 5 * divider_cycles(width) + 1]
