"""cocotb bench for ``rtl.pe.ProcessingElement`` against ``quant.matmul.int_matmul`` term by term.

Driver: random (valid, clear, a, b, init) per cycle plus edge runs (-128 * -128 up to the
largest INT32 sum, 127 * -128 down to the most negative, zero operands, extreme biases).
Model: ``int_matmul`` of each completed sum (its bias is ``init``). Checker: ``acc`` after
every edge equals the model's running sum, and the forwarded ports equal the inputs one
cycle late.
"""

from __future__ import annotations

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from intvit.quant.matmul import int_matmul
from runner import bench_params, bench_result

CLOCK_NS = 10


def stimulus(rng: np.random.Generator, count: int) -> list[tuple[int, int, int, int, int]]:
    """(valid, clear, a, b, init) per cycle: random sums of random length, then edge sums."""
    cycles = []
    while len(cycles) < count:
        depth = int(rng.integers(1, 40))
        init = int(rng.integers(-(2**31) + 2**20, 2**31 - 2**20))
        for k in range(depth):
            if rng.random() < 0.2:                      # a bubble inside the sum
                cycles.append((0, int(rng.integers(2)), int(rng.integers(-128, 128)),
                               int(rng.integers(-128, 128)), int(rng.integers(-(2**31), 2**31))))
            cycles.append((1, int(k == 0), int(rng.integers(-128, 128)), int(rng.integers(-128, 128)), init))
    # Sums at the edge of what int_matmul accepts (|bias| + K * 2**14 <= 2**31 - 1): up to
    # INT32_MAX exactly, and down to -INT32_MAX + 128 * K.
    depth = 64
    cycles += [(1, int(k == 0), -128, -128, 2**31 - 1 - depth * 2**14) for k in range(depth)]
    cycles += [(1, int(k == 0), 127, -128, -(2**31 - 1) + depth * 2**14) for k in range(depth)]
    cycles += [(1, int(k == 0), 0, -128, 0) for k in range(8)]
    cycles += [(1, int(k == 0), -128, 127, -(2**31 - 1) + 8 * 2**14) for k in range(8)]
    return cycles


def prefix_sums(terms: list[tuple[int, int]], init: int) -> list[int]:
    """``init + sum(a_k * b_k for k <= i)`` for every i, as one ``int_matmul`` of a triangular A."""
    pairs = np.array(terms, dtype=np.int8)
    depth = len(terms)
    triangular = np.where(np.tri(depth, dtype=bool), pairs[:, 0][None, :], 0).astype(np.int8)
    return int_matmul(triangular, pairs[:, 1:2], np.array([init], dtype=np.int32))[:, 0].tolist()


def model(cycles) -> list[int]:
    """Expected ``acc`` after each cycle: it holds on bubbles and steps through each sum's prefixes."""
    sums, terms, init = [], [], 0
    for valid, clear, a, b, cycle_init in cycles:
        if valid and clear:
            if terms:
                sums.append(prefix_sums(terms, init))
            terms, init = [], cycle_init
        if valid:
            terms.append((a, b))
    sums.append(prefix_sums(terms, init))
    prefixes = iter([value for values in sums for value in values])
    expected, acc = [], 0
    for valid, *_ in cycles:
        if valid:
            acc = next(prefixes)
        expected.append(acc)
    return expected


@cocotb.test()
async def pe_matches_int_matmul(dut):
    params = bench_params()
    rng = np.random.default_rng(params["seed"])
    cycles = stimulus(rng, params["vectors"])
    expected = model(cycles)
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    dut.valid.value = 0
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    previous = None
    for index, (valid, clear, a, b, init) in enumerate(cycles):
        dut.valid.value, dut.clear.value, dut.a.value, dut.b.value, dut.init.value = valid, clear, a, b, init
        await FallingEdge(dut.clk)
        got = dut.acc.value.to_signed()
        assert got == expected[index], f"cycle {index} {cycles[index]}: acc {got}, expected {expected[index]}"
        forwarded = (int(dut.valid_out.value), int(dut.clear_out.value),
                     dut.a_out.value.to_signed(), dut.b_out.value.to_signed())
        assert forwarded == (valid, clear, a, b), f"cycle {index}: forwarded {forwarded}"
        previous = got
    bench_result(cycles=len(cycles), last_acc=previous, vectors=len(cycles))
