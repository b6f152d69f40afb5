"""MultiPortMemory: the replicated (LVT) form against the plain Amaranth memory, cycle for cycle, in the
Amaranth simulator; what each form becomes in Yosys's ECP5 mapping."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from amaranth import Elaboratable, Module
from amaranth.back import rtlil
from amaranth.sim import Simulator

from intvit.quant.errors import IntVitError
from intvit.rtl.multiport import FPGA, MultiPortMemory

SEED = 2026
WIDTH = 32


class Elaborated(Elaboratable):
    """``dut`` elaborated for ``platform`` (Amaranth's simulator elaborates with none)."""

    def __init__(self, dut, platform):
        self.dut, self.platform = dut, platform

    def elaborate(self, platform):
        return self.dut.elaborate(self.platform)


def run_random(depth: int, writes: int, reads: int, cycles: int, seed: int, transparent: bool = True) -> int:
    """Drive the plain and the replicated memory with the same random port activity; every read
    data of both, every cycle, against each other and a Python model. Returns the reads compared."""
    plain, replicated = (MultiPortMemory(width=WIDTH, depth=depth, write_ports=writes, read_ports=reads,
                                         transparent=transparent) for _ in range(2))
    m = Module()
    m.submodules.plain = plain
    m.submodules.replicated = Elaborated(replicated, FPGA)
    rng = random.Random(seed)
    addr_span = 1 << len(plain.read[0].addr)          # addresses past depth too (depth 5: 5..7)
    checked = []

    async def bench(ctx):
        model = [0] * depth
        shown = [0] * reads
        for cycle in range(cycles):
            # Few distinct addresses, so that writes collide with each other and with reads.
            hot = rng.sample(range(addr_span), min(addr_span, 3))
            wr = [(rng.random() < 0.6, rng.choice(hot), rng.getrandbits(WIDTH)) for _ in range(writes)]
            rd = [(rng.random() < 0.7, rng.choice(hot)) for _ in range(reads)]
            for dut in (plain, replicated):
                for port, (en, addr, data) in zip(dut.write, wr):
                    ctx.set(port.en, en)
                    ctx.set(port.addr, addr)
                    ctx.set(port.data, data)
                for port, (en, addr) in zip(dut.read, rd):
                    ctx.set(port.en, en)
                    ctx.set(port.addr, addr)
            await ctx.tick()
            before = list(model)
            for en, addr, data in wr:                  # the later port wins
                if en and addr < depth:
                    model[addr] = data
            for j, (en, addr) in enumerate(rd):
                if en and not transparent:
                    shown[j] = before[addr] if addr < depth else 0
                elif en:
                    shown[j] = model[addr] if addr < depth else next(
                        (data for w_en, w_addr, data in reversed(wr) if w_en and w_addr == addr), 0)
            got = [[ctx.get(port.data) for port in dut.read] for dut in (plain, replicated)]
            assert got[0] == got[1] == shown, f"cycle {cycle}: plain {got[0]}, replicated {got[1]}, model {shown}"
            checked.append(reads)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return sum(checked)


@pytest.mark.parametrize("depth, writes, reads", [(8, 2, 3), (8, 3, 4), (5, 3, 2), (16, 4, 1), (4, 1, 3)])
def test_replicated_equals_plain(depth, writes, reads):
    assert run_random(depth, writes, reads, cycles=2000, seed=SEED + depth * 100 + writes * 10 + reads) >= 2000 * reads


@pytest.mark.parametrize("depth, writes, reads", [(8, 2, 2), (6, 3, 2), (4, 1, 2)])
def test_replicated_equals_plain_without_transparency(depth, writes, reads):
    # As Softmax's row buffer uses it: a read in the cycle of a write to its word gets the old word.
    seed = SEED + 1 + depth * 100 + writes * 10 + reads
    assert run_random(depth, writes, reads, cycles=2000, seed=seed, transparent=False) >= 2000 * reads


@pytest.mark.parametrize("field, value", [("width", 0), ("depth", -1), ("write_ports", 2.0), ("read_ports", True)])
def test_rejects_bad_parameters(field, value):
    kwargs = {"width": 32, "depth": 16, "write_ports": 2, "read_ports": 3, field: value}
    with pytest.raises(IntVitError, match=rf"^{field} must be a positive integer, not {value!r}$"):
        MultiPortMemory(**kwargs)


@pytest.mark.parametrize("field", ["scratchpad", "transparent"])
def test_rejects_bad_flags(field):
    with pytest.raises(IntVitError, match=rf"^{field} must be True or False, not 1$"):
        MultiPortMemory(width=32, depth=16, write_ports=2, read_ports=3, **{field: 1})


def port_counts(platform) -> list[tuple[int, int]]:
    """(write ports, read ports) of each memory in the RTLIL of an ACC-like 3-write 4-read memory."""
    text = rtlil.convert(MultiPortMemory(width=32, depth=128, write_ports=3, read_ports=4), name="acc",
                         platform=platform, emit_src=False)
    counts = Counter()
    for cell in text.split("cell ")[1:]:
        kind = cell.split()[0]
        if kind in ("$memwr_v2", "$memrd_v2"):
            counts[re.search(r'MEMID "(\S+)"', cell).group(1), kind] += 1
    names = sorted({name for name, _ in counts})
    return sorted((counts[name, "$memwr_v2"], counts[name, "$memrd_v2"]) for name in names)


def test_replicated_banks_have_one_write_port():
    assert port_counts(None) == [(3, 4)]
    # One bank per write port, each written by that port alone and read by every read port; one tag
    # memory (2 bits a word) per write port, written by it alone, read by every read port and
    # (combinationally) by the two other write ports: nothing has more than one write port.
    assert port_counts(FPGA) == [(1, 4), (1, 4), (1, 4), (1, 6), (1, 6), (1, 6)]
