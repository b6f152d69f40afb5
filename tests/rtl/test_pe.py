"""ProcessingElement: Amaranth-simulator check of the MAC rule, and the cocotb bench on Icarus."""

from __future__ import annotations

from amaranth.sim import Simulator

from intvit.rtl.pe import ProcessingElement

BENCH_VECTORS = 3000


def test_pe_accumulates_from_init_in_amaranth_sim():
    dut = ProcessingElement()
    terms = [(1, 1, -128, -128, 5), (1, 0, 127, -128, 0), (0, 0, 99, 99, 0), (1, 0, -1, 1, 0), (1, 1, 3, 4, -7)]
    expected = [5 + 2**14, 5 + 2**14 - 16256, 5 + 2**14 - 16256, 5 + 2**14 - 16256 - 1, -7 + 12]
    seen = []

    async def testbench(ctx):
        for valid, clear, a, b, init in terms:
            ctx.set(dut.valid, valid)
            ctx.set(dut.clear, clear)
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.init, init)
            await ctx.tick()
            seen.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == expected


def test_pe_bench_matches_int_matmul(bench):
    run = bench(ProcessingElement(), toplevel="pe", test_module="bench_pe",
                params={"seed": 2024, "vectors": BENCH_VECTORS})
    assert run["cycles"] >= BENCH_VECTORS
