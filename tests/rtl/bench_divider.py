"""cocotb bench for ``rtl.divider.Divider``: seeded random and edge operands against Python ``divmod``.

Parameters (``bench_params``): ``width``, ``seed``, ``vectors``. Back-to-back divisions
must take ``divider_cycles(width)`` edges each, plus the first input edge.
"""

from __future__ import annotations

import random

import cocotb
from bench_streams import reset, stream_through
from runner import bench_params, bench_result

from rtl.divider import divider_cycles


def expected(dividend: int, divisor: int, width: int) -> tuple[int, int | None]:
    if divisor == 0:
        return (1 << width) - 1, None
    return divmod(dividend, divisor)


async def divide(dut, pairs, width, rng=None, **stalls):
    beats = [{"i__payload": a | b << width} for a, b in pairs]
    run = await stream_through(dut, beats, len(beats), rng=rng, **stalls)
    mask = (1 << width) - 1
    for (a, b), word in zip(pairs, run.outputs):
        quotient, remainder = word & mask, word >> width
        want_q, want_r = expected(a, b, width)
        assert quotient == want_q and want_r in (None, remainder), \
            f"{a} // {b}: got {quotient} r {remainder}, want {want_q} r {want_r}"
    return run


@cocotb.test()
async def random_and_edge_operands(dut):
    p = bench_params()
    width, rng = p["width"], random.Random(p["seed"])
    top = (1 << width) - 1
    pairs = [(0, 1), (top, 1), (top, top), (top - 1, top), (1, top), (0, 0), (top, 0), (1 << (width - 1), 3),
             (12345 % (top + 1), 1 << (width - 1))]
    for _ in range(p["vectors"]):
        a = rng.randrange(top + 1) >> rng.randrange(width)
        b = rng.randrange(1, top + 1) >> rng.randrange(width)
        pairs.append((a, max(b, 1)))
    await reset(dut)
    await divide(dut, pairs, width, rng, idle=0.3, stall=0.3)


@cocotb.test()
async def back_to_back_cycles(dut):
    p = bench_params()
    width = p["width"]
    await reset(dut)
    runs = []
    for count in (1, 5):
        run = await divide(dut, [((1 << width) - 1 - k, k + 1) for k in range(count)], width)
        assert run.cycles == count * divider_cycles(width) + 1, (count, run.cycles)
        runs.append({"divisions": count, "cycles": run.cycles})
    bench_result(runs=runs)
