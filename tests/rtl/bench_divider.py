"""cocotb bench for ``rtl.divider.Divider``: seeded random and edge operands against Python ``divmod``.

Parameters (``bench_params``): ``width``, ``quotient_width``, ``seed``, ``vectors``. Operands
keep the quotient within ``quotient_width`` bits (the unit's precondition). Back-to-back
divisions must take ``divider_cycles(quotient_width)`` edges each, plus the first input edge.
"""

from __future__ import annotations

import random

import cocotb
from bench_streams import reset, stream_through
from runner import bench_params, bench_result

from intvit.rtl.divider import divider_cycles


def expected(dividend: int, divisor: int, quotient_width: int) -> tuple[int, int | None]:
    if divisor == 0:
        return (1 << quotient_width) - 1, None
    return divmod(dividend, divisor)


async def divide(dut, pairs, width, quotient_width, rng=None, **stalls):
    beats = [{"i__payload": a | b << width} for a, b in pairs]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    mask = (1 << quotient_width) - 1
    for (a, b), word in zip(pairs, run.outputs):
        quotient, remainder = word & mask, word >> quotient_width
        want_q, want_r = expected(a, b, quotient_width)
        assert quotient == want_q and want_r in (None, remainder), \
            f"{a} // {b}: got {quotient} r {remainder}, want {want_q} r {want_r}"
    return run


@cocotb.test()
async def random_and_edge_operands(dut):
    p = bench_params()
    width, quotient_width, rng = p["width"], p["quotient_width"], random.Random(p["seed"])
    top = (1 << width) - 1
    pairs = [(0, 1), (top, top), (top - 1, top), (1, top), (0, 0), (top, 0), (12345 % (top + 1), 1 << (width - 1))]
    # Largest quotients that fit: for every divisor b, dividends up to b * 2**quotient_width - 1.
    pairs += [(min(top, (b << quotient_width) - 1), b) for b in (1, 2, 3, 1 << (width - quotient_width), top)]
    for _ in range(p["vectors"]):
        b = max(rng.randrange(1, top + 1) >> rng.randrange(width), 1)
        a = rng.randrange(min(top, (b << quotient_width) - 1) + 1) >> rng.randrange(width)
        pairs.append((a, b))
    await reset(dut)
    await divide(dut, pairs, width, quotient_width, rng, idle=0.3, stall=0.3)


@cocotb.test()
async def back_to_back_cycles(dut):
    p = bench_params()
    width, quotient_width = p["width"], p["quotient_width"]
    await reset(dut)
    runs = []
    for count in (1, 5):
        divisor = 1 << (width - quotient_width)
        pairs = [((1 << width) - 1 - k, divisor + k) for k in range(count)]
        run = await divide(dut, pairs, width, quotient_width)
        assert run.cycles == count * divider_cycles(quotient_width) + 1, (count, run.cycles)
        runs.append({"divisions": count, "cycles": run.cycles})
    bench_result(runs=runs)
