"""Requantiser: parameter checks, an Amaranth-simulator run, and the cocotb bench with latency records."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from intvit.quant.errors import IntVitError
from intvit.quant.requant import requantize
from intvit.rtl.requant import PROGRAM_WIDTHS, Requantiser
from runner import check_cycles

# (lanes, widths, residual, random beats): the top's unit (the program's widths 8, 17, 32 and residual
# adds), the same widths without the residual input, a lone width (no width field) and two widths.
BENCH_CASES = [(4, PROGRAM_WIDTHS, True, 600), (3, PROGRAM_WIDTHS, False, 400),
               pytest.param(2, (32,), False, 300, marks=pytest.mark.slow), (4, (8, 17), False, 300)]
CYCLE_LENGTHS = (1, 7, 64, 197)
WIDTHS_MESSAGE = r"^widths must be a non-empty tuple of increasing integers in \[2, 32\], not "


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, r"^lanes must be a positive integer, not 0$"),
    ({"lanes": True}, r"^lanes must be a positive integer, not True$"),
    ({"lanes": 4, "widths": (1, 8)}, WIDTHS_MESSAGE + r"\(1, 8\)$"),
    ({"lanes": 4, "widths": (8, 33)}, WIDTHS_MESSAGE + r"\(8, 33\)$"),
    ({"lanes": 4, "widths": ()}, WIDTHS_MESSAGE + r"\(\)$"),
    ({"lanes": 4, "widths": [8, 32]}, WIDTHS_MESSAGE + r"\[8, 32\]$"),
    ({"lanes": 4, "widths": (17, 8)}, WIDTHS_MESSAGE + r"\(17, 8\)$"),
    ({"lanes": 4, "widths": (8, 8)}, WIDTHS_MESSAGE + r"\(8, 8\)$"),
    ({"lanes": 4, "widths": (8, True)}, WIDTHS_MESSAGE + r"\(8, True\)$"),
    ({"lanes": 4, "residual": 1}, r"^residual must be True or False, not 1$"),
])
def test_requantiser_rejects_bad_parameters(kwargs, message):
    with pytest.raises(IntVitError, match=message):
        Requantiser(**kwargs)


def test_requantiser_exposes_parameters():
    unit = Requantiser(lanes=4, residual=True)
    assert (unit.lanes, unit.widths, unit.residual, Requantiser.LATENCY) == (4, (8, 17, 32), True, 3)
    assert unit.latency == Requantiser.LATENCY
    with pytest.raises(AttributeError):
        unit.lanes = 2


def test_requantiser_in_amaranth_sim():
    # One beat per width index, back to back: 8, 17, 32 bits, and index 3 (past the last) picks 32.
    x = np.array([[3, -3, 2**31 - 1, -(2**31)], [100, -100, 7, 0], [65536, -65537, 2**31 - 1, -(2**31)],
                  [2**31 - 1, -(2**31), 5, -5]], dtype=np.int64)
    multiplier = np.array([[2**30, 2**30, 2**31 - 1, 2**31 - 1], [2**30 + 12345] * 4, [2**30] * 4,
                           [2**31 - 1, 2**31 - 1, 2**30, 2**30]], dtype=np.int64)
    shift = np.array([[31, 31, 1, 62], [20, 20, 2, 5], [30, 30, 30, 30], [1, 1, 31, 31]], dtype=np.int64)
    width_index = [0, 1, 2, 3]
    bits = [8, 17, 32, 32]
    expected = np.stack([requantize(x[i], multiplier[i], shift[i], bits[i]) for i in range(len(x))])
    dut = Requantiser(lanes=4)
    got, timing = [], {}

    async def testbench(ctx):
        ctx.set(dut.results.ready, 1)
        for cycle in range(len(x) + Requantiser.LATENCY + 1):
            if cycle < len(x):
                ctx.set(dut.operands.valid, 1)
                ctx.set(dut.operands.payload, {"x": x[cycle].tolist(), "multiplier": multiplier[cycle].tolist(),
                                               "shift": shift[cycle].tolist(), "width": width_index[cycle],
                                               "last": cycle == len(x) - 1})
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
    assert timing == {beat: Requantiser.LATENCY + beat for beat in range(len(x))}


@pytest.mark.parametrize("lanes, widths, residual, beats", BENCH_CASES)
def test_requantiser_bench_matches_quant(bench, lanes, widths, residual, beats):
    run = bench(Requantiser(lanes=lanes, widths=widths, residual=residual), toplevel="requantiser",
                test_module="bench_requant",
                params={"lanes": lanes, "widths": list(widths), "residual": residual,
                        "seed": 97 * lanes + sum(widths), "beats": beats, "cycle_lengths": list(CYCLE_LENGTHS)})
    records = [{"lanes": lanes, "widths": list(widths), "residual": residual, "elements": elements,
                "latency": Requantiser.LATENCY, "cycles": cycles}
               for elements, cycles in zip(CYCLE_LENGTHS, run["cycles"])]
    check_cycles("requant", records)
