"""cocotb bench for ``rtl.requant.Requantiser`` against ``quant.requant.requantize`` and ``int_add``.

Driver and monitor: ``bench_streams.stream_through`` (random ``valid``/``ready`` drops in the
correctness phase). Every vector set carries a per-element output width ``bits`` (one of the
unit's ``widths``, the same across a beat's lanes, picked at random per beat so one stream
mixes them); the beat's ``width`` field is its index. Vectors: seeded random INT32 values,
multipliers and shifts (realistic and full-range, with shifts that land results around each
width's saturation point), then edge beats for every width: INT32_MIN/MAX, multipliers 1,
2**30 and 2**31-1, shifts 1 and 62, exact rounding ties of both signs, and results at, one
inside and one past each width's bounds (also reached by rounding a tie). With ``residual``
the beats of ``int_add`` residual additions (INT8 operands, 22-bit multipliers, ``bits = 8``)
are shuffled among plain requantisations with ``b = 0`` of every width. Model: ``requantize``
/ ``int_add``. Checker: every lane and ``last``, bit for bit. A second phase streams
``cycle_lengths`` elements of mixed widths without stalls and hands back the cycles from first
beat accepted to last result delivered, both included.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import Shape

from bench_streams import pack, reset, stream_through, unpack
from intvit.quant.requant import (ADD_MULTIPLIER_BITS, INT32_MAX, INT32_MIN, MAX_SHIFT, MULTIPLIER_BITS, int_add,
                           int_range, requantize)
from intvit.rtl.requant import operand_layout
from runner import bench_params, bench_result

STALL_PROBABILITY = 0.25
MULTIPLIER_MIN = 1 << (MULTIPLIER_BITS - 1)       # dyadic() keeps 2**30 <= m < 2**31
MULTIPLIER_END = 1 << MULTIPLIER_BITS
IDENTITY_SHIFT = MULTIPLIER_BITS - 1              # x * 2**30 >> 30 == x: y is x saturated
INT8_BITS = 8


def beat_bits(rng: np.random.Generator, count: int, lanes: int, widths) -> np.ndarray:
    """A random width per beat of ``lanes`` elements, repeated across its lanes."""
    return np.repeat(rng.choice(np.array(widths), size=-(-count // lanes)), lanes)[:count]


def random_plain(rng: np.random.Generator, count: int, lanes: int, widths) -> dict[str, np.ndarray]:
    """Requantisation vectors: half realistic (shift near log2 of the product), half full-range."""
    bits = beat_bits(rng, count, lanes, widths)
    x = rng.integers(INT32_MIN, INT32_MAX, size=count, endpoint=True)
    small = rng.random(count) < 0.3
    x[small] = rng.integers(-(2**12), 2**12, size=int(small.sum()))
    multiplier = rng.integers(MULTIPLIER_MIN, MULTIPLIER_END, size=count)
    wild = rng.random(count) < 0.2
    multiplier[wild] = rng.integers(1, MULTIPLIER_END, size=int(wild.sum()))
    # A shift that leaves results from a few bits up to just past the beat's width, so some saturate.
    magnitude = np.floor(np.log2(np.abs(x * multiplier.astype(np.float64)) + 1)).astype(np.int64)
    shift = np.clip(magnitude - rng.integers(-2, bits + 2), 1, MAX_SHIFT)
    uniform = rng.random(count) < 0.3
    shift[uniform] = rng.integers(1, MAX_SHIFT + 1, size=int(uniform.sum()))
    return {"x": x, "multiplier": multiplier, "shift": shift, "bits": bits}


def edge_plain(bits: int) -> dict[str, np.ndarray]:
    """Extremes of every field, exact rounding ties (x * 2**30 >> 31 is x / 2) and ``bits``' bounds."""
    xs = np.array([INT32_MIN, INT32_MAX, 0, 1, -1, -128, 127, 2**31 - 2, INT32_MIN + 1])
    multipliers = np.array([1, MULTIPLIER_MIN, MULTIPLIER_END - 1])
    shifts = np.array([1, 2, 31, 32, 61, MAX_SHIFT])
    grid = np.array(np.meshgrid(xs, multipliers, shifts, indexing="ij")).reshape(3, -1)
    ties = np.arange(-41, 42, 2)                                  # odd x: x / 2 is a tie
    lo, hi = int_range(bits)
    at_bounds = np.array([lo - 1, lo, lo + 1, hi - 1, hi, hi + 1])
    # (2*hi + 1) / 2 rounds up past hi, (2*lo - 1) / 2 rounds up onto lo.
    tie_bounds = np.array([2 * hi - 1, 2 * hi + 1, 2 * lo - 1, 2 * lo + 1])
    at_bounds = at_bounds[(at_bounds >= INT32_MIN) & (at_bounds <= INT32_MAX)]
    tie_bounds = tie_bounds[(tie_bounds >= INT32_MIN) & (tie_bounds <= INT32_MAX)]
    x = np.concatenate([grid[0], ties, ties * 3, at_bounds, tie_bounds])
    vectors = {
        "x": x,
        "multiplier": np.concatenate([grid[1], np.full(x.size - grid.shape[1], MULTIPLIER_MIN)]),
        "shift": np.concatenate([grid[2], np.full(2 * ties.size, 31), np.full(at_bounds.size, IDENTITY_SHIFT),
                                 np.full(tie_bounds.size, IDENTITY_SHIFT + 1)]),
    }
    vectors["bits"] = np.full(x.size, bits)
    return vectors


def random_residual(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """``int_add`` vectors: INT8 operands, multipliers below 2**22, edges included, INT8 results."""
    a = rng.integers(-128, 128, size=count)
    b = rng.integers(-128, 128, size=count)
    a[:4], b[:4] = [-128, 127, -128, 127], [-128, 127, 127, -128]
    m_a = rng.integers(0, 1 << ADD_MULTIPLIER_BITS, size=count)
    m_b = rng.integers(0, 1 << ADD_MULTIPLIER_BITS, size=count)
    m_a[:4] = m_b[:4] = (1 << ADD_MULTIPLIER_BITS) - 1
    shift = rng.integers(ADD_MULTIPLIER_BITS - 4, ADD_MULTIPLIER_BITS + 2, size=count)
    shift[:2] = 1
    shift[2:4] = MAX_SHIFT
    return {"x": a, "multiplier": m_a, "shift": shift, "b": b, "multiplier_b": m_b,
            "bits": np.full(count, INT8_BITS)}


def whole_beats(vectors: dict[str, np.ndarray], lanes: int) -> dict[str, np.ndarray]:
    """``vectors`` padded to whole beats with zeros (shift 1, the last width), which are checked too."""
    pad = -vectors["x"].size % lanes
    out = {name: np.concatenate([v, np.zeros(pad, dtype=np.int64)]) for name, v in vectors.items()}
    out["shift"][out["shift"].size - pad:] = 1
    out["bits"][out["bits"].size - pad:] = vectors["bits"][-1]
    return out


def concat(sets: list[dict[str, np.ndarray]], lanes: int) -> dict[str, np.ndarray]:
    """Vector sets one after another, each padded to whole beats so no beat mixes two sets."""
    sets = [whole_beats(v, lanes) for v in sets]
    return {name: np.concatenate([v[name] for v in sets]) for name in sets[0]}


def shuffle_beats(vectors: dict[str, np.ndarray], lanes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The beats of ``vectors`` (whole beats) in a random order, lanes kept together."""
    order = rng.permutation(vectors["x"].size // lanes)
    return {name: v.reshape(-1, lanes)[order].reshape(-1) for name, v in vectors.items()}


def expected(vectors: dict[str, np.ndarray]) -> np.ndarray:
    want = np.empty(vectors["x"].size, dtype=np.int64)
    for bits in np.unique(vectors["bits"]).tolist():
        at = vectors["bits"] == bits
        want[at] = requantize(vectors["x"][at], vectors["multiplier"][at], vectors["shift"][at], bits)
    if "b" in vectors:
        add = vectors["b"] != 0
        assert np.all(vectors["bits"][add] == INT8_BITS), "int_add is defined for INT8 results only"
        # int_add takes one (m_a, m_b, shift) per tensor; the unit's lanes each carry their own.
        fields = zip(*(vectors[name][add].tolist() for name in ("x", "b", "multiplier", "multiplier_b", "shift")))
        want[add] = [int_add(np.int8(x), np.int8(b), m_a, m_b, shift) for x, b, m_a, m_b, shift in fields]
    return want


def beats_of(vectors: dict[str, np.ndarray], lanes: int, residual: bool, widths) -> list[dict[str, int]]:
    """Payload words, ``lanes`` elements per beat (the last padded with zeros), ``last`` on the final one.

    ``vectors["bits"]`` must agree across each beat's lanes; it becomes the beat's ``width`` index.
    Fields are placed by the unit's own ``operand_layout``.
    """
    layout = operand_layout(lanes, residual, tuple(widths))
    vectors = whole_beats({name: np.broadcast_to(np.asarray(v, dtype=np.int64), vectors["x"].shape)
                           for name, v in vectors.items()}, lanes)
    bits = vectors["bits"].reshape(-1, lanes)
    assert np.all(bits == bits[:, :1]), "a beat's lanes must share one output width"
    index = {width: i for i, width in enumerate(widths)}
    columns = {name: vectors.get(name, np.zeros_like(vectors["x"])).reshape(-1, lanes)
               for name, _ in layout if name not in ("width", "last")}
    words = []
    for beat in range(bits.shape[0]):
        word = (index[int(bits[beat, 0])] << layout["width"].offset
                | int(beat == bits.shape[0] - 1) << layout["last"].offset)
        for name, column in columns.items():
            word |= pack(column[beat], Shape.cast(layout[name].shape.elem_shape).width) << layout[name].offset
        words.append({"operands__payload": word})
    return words


def results_of(words: list[int], lanes: int, y_bits: int, count: int) -> tuple[np.ndarray, list[int]]:
    """Lanes of ``y_bits`` (the unit's widest width) and ``last`` of each output beat."""
    values = np.concatenate([unpack(word, y_bits, lanes) for word in words])[:count]
    lasts = [(word >> (y_bits * lanes)) & 1 for word in words]
    return values, lasts


async def check(dut, vectors, lanes: int, widths, residual: bool, rng: random.Random | None):
    beats = beats_of(vectors, lanes, residual, widths)
    run = await stream_through(dut, beats, len(beats), source="operands", sink="results", rng=rng,
                               idle=STALL_PROBABILITY, stall=STALL_PROBABILITY)
    vectors = whole_beats(vectors, lanes)
    got, lasts = results_of(run.outputs, lanes, max(widths), vectors["x"].size)
    want = expected(vectors)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} mismatches, first at element {bad[0]}: "
                           f"{ {name: int(v[bad[0]]) for name, v in vectors.items()} } -> {got[bad[0]]}, "
                           f"expected {want[bad[0]]}")
    assert lasts == [0] * (len(beats) - 1) + [1], f"last flags {lasts}"
    return run


@cocotb.test()
async def requantiser_matches_quant(dut):
    params = bench_params()
    lanes, widths, residual = params["lanes"], tuple(params["widths"]), params["residual"]
    rng = np.random.default_rng(params["seed"])
    stalls = random.Random(params["seed"])
    dut.operands__valid.value = 0
    dut.results__ready.value = 0
    await reset(dut)

    count = params["beats"] * lanes
    sets = [random_plain(rng, count, lanes, widths), concat([edge_plain(bits) for bits in widths], lanes)]
    if residual:
        # b = 0 makes the residual unit a plain requantiser whatever multiplier_b holds.
        for vectors in sets:
            vectors["b"] = np.zeros_like(vectors["x"])
            vectors["multiplier_b"] = rng.integers(0, MULTIPLIER_END, size=vectors["x"].size)
        if INT8_BITS in widths:
            plain = random_plain(rng, count, lanes, widths)
            plain["b"] = np.zeros(count, dtype=np.int64)
            plain["multiplier_b"] = rng.integers(0, MULTIPLIER_END, size=count)
            sets.append(shuffle_beats(concat([plain, random_residual(rng, count)], lanes), lanes, rng))
    for vectors in sets:
        await check(dut, vectors, lanes, widths, residual, stalls)

    cycles = []
    for elements in params["cycle_lengths"]:
        run = await check(dut, random_plain(rng, elements, lanes, widths), lanes, widths, residual, None)
        cycles.append(run.cycles)
    bench_result(cycles=cycles, elements=int(sum(v["x"].size for v in sets)))
