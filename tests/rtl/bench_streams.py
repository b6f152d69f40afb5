"""cocotb helpers shared by the non-linear unit benches: clock and reset, lane packing,
and a cycle-accurate driver + monitor for Amaranth valid/ready streams.

Inputs are driven on the falling edge and handshakes sampled in the read-only phase
before the next rising edge, so a handshake recorded in loop cycle ``k`` happens on
rising edge ``k``. Latencies are counted in those edges: from the first input handshake
to the last output handshake, both included.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cocotb.clock import Clock
from cocotb_coverage.coverage import CoverPoint, coverage_db
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from runner import bench_ports, bench_result, bench_result_value

__all__ = ["CLOCK_NS", "StreamRun", "pack", "unpack", "check_rows", "cover", "reset", "stream_through"]

CLOCK_NS = 10
RESET_CYCLES = 2
DRAIN_CYCLES = 300              # longer than any unit's per-row or per-fold latency
_checked_beats = [0]            # output beats taken in this simulation, reported as ``vectors``


def pack(values: Sequence[int], bits: int) -> int:
    """Lanes (lane 0 in the low bits) as one integer, each two's complement in ``bits``."""
    mask = (1 << bits) - 1
    word = 0
    for lane, value in enumerate(values):
        word |= (int(value) & mask) << (lane * bits)
    return word


def unpack(word: int, bits: int, count: int, signed: bool = True) -> np.ndarray:
    """Inverse of ``pack``: ``count`` lanes of ``bits`` each, as int64."""
    mask = (1 << bits) - 1
    lanes = [(word >> (lane * bits)) & mask for lane in range(count)]
    if signed:
        lanes = [v - (1 << bits) if v >> (bits - 1) else v for v in lanes]
    return np.array(lanes, dtype=np.int64)


def check_rows(words: Sequence[int], rows: Sequence[np.ndarray], want: Sequence[np.ndarray], bits: int,
               lanes: int) -> None:
    """Check a row unit's output beats (``lanes`` values of ``bits`` with ``last`` above them).

    Each row of ``len(row)`` values comes back as ``ceil(len / lanes)`` beats, ``last`` on the
    final one, padding lanes 0, and values equal to ``want`` (the golden kernel's row).
    """
    words = iter(words)
    for index, (row, expected) in enumerate(zip(rows, want)):
        beats = -(-len(row) // lanes)
        got = []
        for beat in range(beats):
            word = next(words)
            last = word >> (lanes * bits)
            assert last == (beat == beats - 1), f"row {index}: last={last} on beat {beat} of {beats}"
            got.append(unpack(word, bits, lanes))
        got = np.concatenate(got)
        assert np.all(got[len(row):] == 0), f"row {index}: padding lanes {got[len(row):]} are not 0"
        bad = np.flatnonzero(got[:len(row)] != expected)
        assert bad.size == 0, (f"row {index} (length {len(row)}): {bad.size} mismatches, first at {bad[0]}: "
                               f"got {got[bad[0]]}, want {expected[bad[0]]}; row {np.asarray(row).tolist()}")


def cover(name: str, bins: Sequence[str], samples: Sequence[str]) -> dict[str, int]:
    """Sample edge classes into a cocotb-coverage point; every bin must be hit.

    ``samples`` name the class of each checked vector (a row, a job). The hits per bin are
    handed back under ``coverage[name]`` for the pytest summary, and a bin never hit fails
    the bench: the vectors did not reach that edge.
    """
    point = CoverPoint(name, xf=lambda sample: sample, bins=list(bins))(lambda sample: None)
    for sample in samples:
        point(sample)
    hits = dict(coverage_db[name].detailed_coverage)
    missed = [name for name, count in hits.items() if count == 0]
    assert not missed, f"coverage {name}: no vector in {', '.join(missed)}"
    merged = bench_result_value("coverage", {})
    merged[name] = hits
    bench_result(coverage=merged)
    return hits


async def reset(dut) -> None:
    """Start the clock and hold the synchronous reset for a few cycles, every input at 0.

    Then require every output port to read a defined value (no X or Z bit) on the first
    sample after reset: the Verilog as shipped must start cleanly, with no help from the bench.
    """
    ports = bench_ports()
    for name in ports["in"]:
        getattr(dut, name).value = 0
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rst.value = 1
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await ReadOnly()
    undefined = [name for name in ports["out"] if not getattr(dut, name).value.is_resolvable]
    assert not undefined, f"outputs not defined after reset: {', '.join(undefined)}"
    await FallingEdge(dut.clk)


@dataclass(frozen=True)
class StreamRun:
    """What came out of ``stream_through``: output words and the handshake edges."""

    outputs: list[int]
    first_input_cycle: int | None
    last_output_cycle: int | None

    @property
    def cycles(self) -> int:
        """Edges from the first input handshake to the last output handshake, both counted."""
        return self.last_output_cycle - self.first_input_cycle + 1


async def stream_through(dut, beats: Sequence[Mapping[str, int]], outputs: int, *, source: str = "i",
                         sink: str = "o", rng: random.Random | None = None, idle: float = 0.0,
                         stall: float = 0.0, timeout_cycles: int = 1_000_000,
                         drain_cycles: int = DRAIN_CYCLES) -> StreamRun:
    """Drive ``beats`` into stream ``source`` and collect ``outputs`` payloads from ``sink``.

    Each beat maps port names (``"i__payload"``, ``"length"``) to the values driven with it.
    With ``rng``, the driver leaves ``valid`` low with probability ``idle`` between beats
    (never withdrawing an offered beat) and the monitor lowers ``ready`` with probability
    ``stall``. Call right after ``reset`` or a previous ``stream_through`` (on a falling edge).
    An output beat beyond ``outputs`` fails the run, also one that arrives up to
    ``drain_cycles`` after the last expected one. Every bench checks each beat it collects,
    so their running count is handed back as ``vectors``.
    """
    in_valid, in_ready = getattr(dut, f"{source}__valid"), getattr(dut, f"{source}__ready")
    out_valid, out_ready = getattr(dut, f"{sink}__valid"), getattr(dut, f"{sink}__ready")
    out_payload = getattr(dut, f"{sink}__payload")
    words: list[int] = []
    sent = 0
    offering = False
    first_input = last_output = None
    for cycle in range(timeout_cycles):
        if sent == len(beats) and len(words) == outputs:
            break
        if cycle:
            await FallingEdge(dut.clk)
        offering = sent < len(beats) and (offering or rng is None or rng.random() >= idle)
        if offering:
            for name, value in beats[sent].items():
                getattr(dut, name).value = value
        in_valid.value = int(offering)
        out_ready.value = int(rng is None or rng.random() >= stall)
        await ReadOnly()
        if offering and in_ready.value:
            first_input = cycle if first_input is None else first_input
            sent += 1
            offering = False
        if out_valid.value and out_ready.value:
            if len(words) == outputs:
                raise AssertionError(f"{sink}: more than the {outputs} expected output beats")
            words.append(out_payload.value.to_unsigned())
            last_output = cycle
    else:
        raise AssertionError(f"timeout after {timeout_cycles} cycles: {sent}/{len(beats)} beats in, "
                             f"{len(words)}/{outputs} out")
    await FallingEdge(dut.clk)
    in_valid.value = 0
    out_ready.value = 1
    for cycle in range(drain_cycles):
        await ReadOnly()
        if out_valid.value:
            raise AssertionError(f"{sink}: an output beat beyond the {outputs} expected, "
                                 f"{cycle + 1} cycles after the last input and output")
        await FallingEdge(dut.clk)
    _checked_beats[0] += len(words)
    bench_result(vectors=_checked_beats[0])
    return StreamRun(words, first_input, last_output)
