"""cocotb bench for ``rtl.requant.Requantiser`` against ``quant.requant.requantize`` and ``int_add``.

Driver and monitor: ``bench_streams.stream_through`` (random ``valid``/``ready`` drops in the
correctness phase). Vectors: seeded random INT32 values, multipliers and shifts (realistic
and full-range), then edge beats: INT32_MIN/MAX, multipliers 1, 2**30 and 2**31-1, shifts 1
and 62, exact rounding ties of both signs, values that saturate either way. With ``residual``
half the beats are ``int_add`` residual additions (INT8 operands, 22-bit multipliers) and half
plain requantisations with ``b = 0``. Model: ``requantize`` / ``int_add``. Checker: every lane
and ``last``, bit for bit. A second phase streams ``cycle_lengths`` elements without stalls and
hands back the cycles from first beat accepted to last result delivered, both included.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np

from bench_streams import pack, reset, stream_through, unpack
from quant.requant import (ADD_MULTIPLIER_BITS, INT32_MAX, INT32_MIN, MAX_SHIFT, MULTIPLIER_BITS, int_add,
                           requantize)
from runner import bench_params, bench_result

STALL_PROBABILITY = 0.25
MULTIPLIER_MIN = 1 << (MULTIPLIER_BITS - 1)       # dyadic() keeps 2**30 <= m < 2**31
MULTIPLIER_END = 1 << MULTIPLIER_BITS
SHIFT_BITS = MAX_SHIFT.bit_length()


def random_plain(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Requantisation vectors: half realistic (shift near log2 of the product), half full-range."""
    x = rng.integers(INT32_MIN, INT32_MAX, size=count, endpoint=True)
    small = rng.random(count) < 0.3
    x[small] = rng.integers(-(2**12), 2**12, size=int(small.sum()))
    multiplier = rng.integers(MULTIPLIER_MIN, MULTIPLIER_END, size=count)
    wild = rng.random(count) < 0.2
    multiplier[wild] = rng.integers(1, MULTIPLIER_END, size=int(wild.sum()))
    # A shift that keeps most results inside the output range, jittered to saturate sometimes.
    magnitude = np.floor(np.log2(np.abs(x * multiplier.astype(np.float64)) + 1)).astype(np.int64)
    shift = np.clip(magnitude - rng.integers(-2, 10, size=count), 1, MAX_SHIFT)
    uniform = rng.random(count) < 0.3
    shift[uniform] = rng.integers(1, MAX_SHIFT + 1, size=int(uniform.sum()))
    return {"x": x, "multiplier": multiplier, "shift": shift}


def edge_plain() -> dict[str, np.ndarray]:
    """Extremes of every field and exact rounding ties (x * 2**30 >> 31 is x / 2)."""
    xs = np.array([INT32_MIN, INT32_MAX, 0, 1, -1, -128, 127, 2**31 - 2, INT32_MIN + 1])
    multipliers = np.array([1, MULTIPLIER_MIN, MULTIPLIER_END - 1])
    shifts = np.array([1, 2, 31, 32, 61, MAX_SHIFT])
    grid = np.array(np.meshgrid(xs, multipliers, shifts, indexing="ij")).reshape(3, -1)
    ties = np.arange(-41, 42, 2)                                  # odd x: x / 2 is a tie
    return {
        "x": np.concatenate([grid[0], ties, ties * 3]),
        "multiplier": np.concatenate([grid[1], np.full(2 * ties.size, MULTIPLIER_MIN)]),
        "shift": np.concatenate([grid[2], np.full(ties.size, 31), np.full(ties.size, 31)]),
    }


def random_residual(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """``int_add`` vectors: INT8 operands, multipliers below 2**22, edges included."""
    a = rng.integers(-128, 128, size=count)
    b = rng.integers(-128, 128, size=count)
    a[:4], b[:4] = [-128, 127, -128, 127], [-128, 127, 127, -128]
    m_a = rng.integers(0, 1 << ADD_MULTIPLIER_BITS, size=count)
    m_b = rng.integers(0, 1 << ADD_MULTIPLIER_BITS, size=count)
    m_a[:4] = m_b[:4] = (1 << ADD_MULTIPLIER_BITS) - 1
    shift = rng.integers(ADD_MULTIPLIER_BITS - 4, ADD_MULTIPLIER_BITS + 2, size=count)
    shift[:2] = 1
    shift[2:4] = MAX_SHIFT
    return {"x": a, "multiplier": m_a, "shift": shift, "b": b, "multiplier_b": m_b}


def expected(vectors: dict[str, np.ndarray], out_bits: int) -> np.ndarray:
    if "b" in vectors and np.any(vectors["b"] != 0):
        assert out_bits == 8, "int_add is defined for INT8 results only"
        # int_add takes one (m_a, m_b, shift) per tensor; the unit's lanes each carry their own.
        fields = zip(*(vectors[name].tolist() for name in ("x", "b", "multiplier", "multiplier_b", "shift")))
        return np.array([int_add(np.int8(x), np.int8(b), m_a, m_b, shift) for x, b, m_a, m_b, shift in fields],
                        dtype=np.int64)
    return requantize(vectors["x"], vectors["multiplier"], vectors["shift"], out_bits).astype(np.int64)


def beats_of(vectors: dict[str, np.ndarray], lanes: int, residual: bool) -> list[dict[str, int]]:
    """Payload words, ``lanes`` elements per beat (the last padded with zeros), ``last`` on the final one."""
    count = vectors["x"].size
    padded = -(-count // lanes) * lanes
    fields = [("x", 32), ("multiplier", MULTIPLIER_BITS), ("shift", SHIFT_BITS)]
    if residual:
        fields += [("b", 8), ("multiplier_b", MULTIPLIER_BITS)]
    columns = {}
    for name, _ in fields:
        column = np.zeros(padded, dtype=np.int64)
        column[:count] = vectors.get(name, 0)
        columns[name] = column.reshape(-1, lanes)
    columns["shift"][columns["shift"] == 0] = 1                   # padding lanes need a legal shift
    words = []
    for beat in range(padded // lanes):
        word, offset = 0, 0
        for name, bits in fields:                                 # StructLayout order, low bits first
            word |= pack(columns[name][beat], bits) << offset
            offset += bits * lanes
        words.append({"operands__payload": word | int(beat == padded // lanes - 1) << offset})
    return words


def results_of(words: list[int], lanes: int, out_bits: int, count: int) -> tuple[np.ndarray, list[int]]:
    values = np.concatenate([unpack(word, out_bits, lanes) for word in words])[:count]
    lasts = [(word >> (out_bits * lanes)) & 1 for word in words]
    return values, lasts


async def check(dut, vectors, lanes: int, out_bits: int, residual: bool, rng: random.Random | None):
    beats = beats_of(vectors, lanes, residual)
    run = await stream_through(dut, beats, len(beats), source="operands", sink="results", rng=rng,
                               idle=STALL_PROBABILITY, stall=STALL_PROBABILITY)
    got, lasts = results_of(run.outputs, lanes, out_bits, vectors["x"].size)
    want = expected(vectors, out_bits)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} mismatches, first at element {bad[0]}: "
                           f"{ {name: int(v[bad[0]]) for name, v in vectors.items()} } -> {got[bad[0]]}, "
                           f"expected {want[bad[0]]}")
    assert lasts == [0] * (len(beats) - 1) + [1], f"last flags {lasts}"
    return run


@cocotb.test()
async def requantiser_matches_quant(dut):
    params = bench_params()
    lanes, out_bits, residual = params["lanes"], params["out_bits"], params["residual"]
    rng = np.random.default_rng(params["seed"])
    stalls = random.Random(params["seed"])
    dut.operands__valid.value = 0
    dut.results__ready.value = 0
    await reset(dut)

    count = params["beats"] * lanes
    sets = [random_plain(rng, count), edge_plain()]
    if residual:
        # b = 0 makes the residual unit a plain requantiser whatever multiplier_b holds.
        for vectors in sets:
            vectors["b"] = np.zeros_like(vectors["x"])
            vectors["multiplier_b"] = rng.integers(0, MULTIPLIER_END, size=vectors["x"].size)
        sets.append(random_residual(rng, count))
    for vectors in sets:
        await check(dut, vectors, lanes, out_bits, residual, stalls)

    cycles = []
    for elements in params["cycle_lengths"]:
        run = await check(dut, random_plain(rng, elements), lanes, out_bits, residual, None)
        cycles.append(run.cycles)
    bench_result(cycles=cycles, elements=int(sum(v["x"].size for v in sets)))
