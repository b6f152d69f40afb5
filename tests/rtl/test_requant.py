"""Requantiser: parameter checks, an Amaranth-simulator run, and the cocotb bench with latency records."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from quant.errors import IntVitError
from quant.requant import requantize
from rtl.requant import Requantiser
from runner import check_cycles

# (lanes, out_bits, residual, random beats): the program's widths 8, 17, 32, and residual adds.
BENCH_CASES = [(4, 8, False, 600), (3, 17, False, 400), (2, 32, False, 400), (4, 8, True, 600)]
CYCLE_LENGTHS = (1, 7, 64, 197)


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, r"^lanes must be a positive integer, not 0$"),
    ({"lanes": True}, r"^lanes must be a positive integer, not True$"),
    ({"lanes": 4, "out_bits": 1}, r"^out_bits must be an integer in \[2, 32\], not 1$"),
    ({"lanes": 4, "out_bits": 33}, r"^out_bits must be an integer in \[2, 32\], not 33$"),
    ({"lanes": 4, "residual": 1}, r"^residual must be True or False, not 1$"),
])
def test_requantiser_rejects_bad_parameters(kwargs, message):
    with pytest.raises(IntVitError, match=message):
        Requantiser(**kwargs)


def test_requantiser_exposes_parameters():
    unit = Requantiser(lanes=4, out_bits=17, residual=True)
    assert (unit.lanes, unit.out_bits, unit.residual, Requantiser.LATENCY) == (4, 17, True, 3)
    with pytest.raises(AttributeError):
        unit.lanes = 2


def test_requantiser_in_amaranth_sim():
    x = np.array([[3, -3, 2**31 - 1, -(2**31)], [100, -100, 7, 0]], dtype=np.int64)
    multiplier = np.array([[2**30, 2**30, 2**31 - 1, 2**31 - 1], [2**30 + 12345] * 4], dtype=np.int64)
    shift = np.array([[31, 31, 1, 62], [20, 20, 2, 5]], dtype=np.int64)
    expected = requantize(x, multiplier, shift, 8)
    dut = Requantiser(lanes=4)
    got, timing = [], {}

    async def testbench(ctx):
        ctx.set(dut.results.ready, 1)
        for cycle in range(len(x) + Requantiser.LATENCY + 1):
            if cycle < len(x):
                ctx.set(dut.operands.valid, 1)
                ctx.set(dut.operands.payload, {"x": x[cycle].tolist(), "multiplier": multiplier[cycle].tolist(),
                                               "shift": shift[cycle].tolist(), "last": cycle == len(x) - 1})
            else:
                ctx.set(dut.operands.valid, 0)
            if ctx.get(dut.results.valid):
                payload = ctx.get(dut.results.payload)
                got.append([payload.y[lane] for lane in range(4)])
                timing[len(got) - 1] = cycle
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert np.array_equal(np.array(got), expected)
    assert timing == {0: Requantiser.LATENCY, 1: Requantiser.LATENCY + 1}


@pytest.mark.parametrize("lanes, out_bits, residual, beats", BENCH_CASES)
def test_requantiser_bench_matches_quant(bench, lanes, out_bits, residual, beats):
    run = bench(Requantiser(lanes=lanes, out_bits=out_bits, residual=residual), toplevel="requantiser",
                test_module="bench_requant",
                params={"lanes": lanes, "out_bits": out_bits, "residual": residual, "seed": 97 * lanes + out_bits,
                        "beats": beats, "cycle_lengths": list(CYCLE_LENGTHS)})
    records = [{"lanes": lanes, "out_bits": out_bits, "residual": residual, "elements": elements,
                "latency": Requantiser.LATENCY, "cycles": cycles}
               for elements, cycles in zip(CYCLE_LENGTHS, run["cycles"])]
    check_cycles("requant", records)
