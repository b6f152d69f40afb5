"""The load and store modules of ``rtl.system.System`` on Verilator against cocotbext-axi's AxiRam.

Random strided LOAD/STORE pairs through the ACC lane memories, as ``System`` wires them, with
random stalls on every AXI channel in half of the cases: after each pair, external memory must
equal ``compiler.executor.Machine``'s byte for byte (a word in the wrong place, a lost burst or a
stray write all fail), and without stalls each instruction must take the cycles
``sim.schedule.instruction_cycles`` gives for AxiRam's latencies.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory as SRAM
from amaranth.lib.wiring import In, Out

from intvit.compiler.executor import Machine
from intvit.compiler.isa import INSTRUCTION_BITS, Geometry, Instruction, Memory, Opcode, encode
from intvit.harness.bench_system import AXI_RAM_READ_LATENCY, AXI_RAM_WRITE_LATENCY
from intvit.harness.runner import build, run
from intvit.quant.errors import IntVitError
from intvit.rtl.axi import AxiSignature
from intvit.rtl.loadstore import LoadUnit, SpGeometry, StoreUnit
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import instruction_cycles

HERE = Path(__file__).resolve().parent
COLS, ACC_WORDS, MAX_BEATS = 8, 512, 16
MEMORY_BYTES = 1 << 16
DATA_BASE = 0x2000             # 4 KiB aligned: the page boundaries of relative and absolute addresses agree
CASES = 24


class LoadStoreHarness(wiring.Component):
    """``LoadUnit`` and ``StoreUnit`` on one AXI4 port (``m_axi``), ACC lane memories between them.

    Each unit's ``start``/``insn``/``done`` is brought out (``load_*``, ``store_*``); ``base`` is
    ``DATA_BASE``. The ACC lanes are wired as in ``System``: the load module's write port, the
    store module's read port transparent for it.
    """

    def __init__(self, beat_bytes: int):
        self._g = SpGeometry(rows=1, cols=COLS, a_depth=beat_bytes, b_depth=beat_bytes, acc_words=ACC_WORDS,
                             param_records=COLS, beat_bytes=beat_bytes)
        self.load = LoadUnit(self._g, MAX_BEATS)
        self.store = StoreUnit(self._g, MAX_BEATS)
        super().__init__({"load_start": In(1), "load_insn": In(INSTRUCTION_BITS), "load_done": Out(1),
                          "store_start": In(1), "store_insn": In(INSTRUCTION_BITS), "store_done": Out(1),
                          "base": In(32), "m_axi": Out(AxiSignature(32, 8 * beat_bytes))})

    def elaborate(self, platform):
        m = Module()
        load, store = m.submodules.load, m.submodules.store = self.load, self.store
        for name, unit in (("load", load), ("store", store)):
            m.d.comb += [unit.start.eq(getattr(self, f"{name}_start")), unit.insn.eq(getattr(self, f"{name}_insn")),
                         getattr(self, f"{name}_done").eq(unit.done), unit.base.eq(self.base)]
        for name, member in self.m_axi.signature.members.items():
            source = load.axi if name.startswith("ar") or name[0] == "r" else store.axi
            ours, theirs = getattr(self.m_axi, name), getattr(source, name)
            m.d.comb += ours.eq(theirs) if member.flow == Out else theirs.eq(ours)
        for lane in range(COLS):
            acc = m.submodules[f"acc_lane{lane}"] = SRAM(shape=32, depth=ACC_WORDS, init=[])
            write = acc.write_port()
            m.d.comb += [write.en.eq(load.acc_we[lane]), write.addr.eq(load.acc_addr[lane]),
                         write.data.eq(load.acc_data[lane])]
            read = acc.read_port(transparent_for=(write,))
            m.d.comb += [read.en.eq(store.acc_ren), read.addr.eq(store.acc_raddr[lane]),
                         store.acc_rdata[lane].eq(read.data)]
        return m


def transfer(rng: random.Random, elem: int, counts: tuple[int, int, int], low: int, high: int,
             dense: bool = False) -> dict:
    """DMA fields of a random strided transfer of ``counts`` (x, y, z) elements inside ``[low, high)``.

    Rows are dense (1-byte elements at any byte), padded or packed back to back; 4-byte elements
    stay aligned (the compiler aligns every region, ``rtl.loadstore``'s precondition). ``dense``:
    rows and planes back to back from a 32-byte aligned address, one run whose first beat is full.
    """
    x, y, z = counts
    size = 4 if elem else 1
    row = x * size
    y_stride = row if dense or rng.random() < 0.4 else row + size * rng.randint(1, 40)
    plane = y_stride * (y - 1) + row
    z_stride = y_stride * y if dense or rng.random() < 0.4 else plane + size * rng.randint(0, 300)
    span = z_stride * (z - 1) + plane
    dram_addr = rng.randrange(low, high - span, 32 if dense else size)
    return {"elem": elem, "dram_addr": dram_addr, "x_count": x, "y_count": y, "z_count": z,
            "y_stride": y_stride, "z_stride": z_stride}


def random_case(rng: random.Random, shape: tuple[int, int, int] | None = None,
                elems: tuple[int, int] | None = None, dense: bool = False) -> tuple[Instruction, Instruction]:
    """A LOAD into ACC and a STORE of the same elements elsewhere (other strides, maybe other element size).

    Sources come from the lower half of memory, destinations from the upper, so runs cross
    4 KiB pages and exceed ``MAX_BEATS``; planes start at any ACC word with any spacing. The
    ``shape`` (x, y, z) and the element codes of both sides (``elems``, 0: 1 byte, 1: 4 bytes) are
    random unless given; ``dense``: both are one run (``transfer``).
    """
    shape = shape or rng.choice([(1, 1, 1), (3, 1, 1), (5, 3, 2),
                                 (rng.randint(1, 200), rng.randint(1, 4), rng.randint(1, 3)),
                                 (24, 2, 4), (COLS, 1, 16), (300, 1, 1), (7, 9, 3)])
    plane_words = -(-shape[0] * shape[1] // COLS)
    sp_stride = plane_words + rng.randint(0, 3)
    sp_addr = rng.randrange(0, ACC_WORDS - sp_stride * (shape[2] - 1) - plane_words + 1)
    acc = dict(mem=Memory.ACC, sp_addr=sp_addr, sp_stride=sp_stride)
    load_elem = rng.randint(0, 1)
    store_elem = load_elem if rng.random() < 0.7 else 1 - load_elem
    load_elem, store_elem = elems or (load_elem, store_elem)
    load = Instruction(Opcode.LOAD, **acc, **transfer(rng, load_elem, shape, 0, MEMORY_BYTES // 2, dense))
    store = Instruction(Opcode.STORE, **acc, **transfer(rng, store_elem, shape, MEMORY_BYTES // 2, MEMORY_BYTES,
                                                        dense))
    return load, store


@pytest.mark.parametrize("beat_bytes", [8, pytest.param(4, marks=pytest.mark.slow)])
def test_random_strided_round_trips_with_stalls(tmp_path, beat_bytes):
    rng = random.Random(beat_bytes)
    # The first plane fills the ACC: the largest plane the slot map's arithmetic must walk exactly;
    # the second has 40 planes of 2 bytes, each its own run, so the slot map crosses a plane (and
    # the ACC word moves on by sp_stride) on every beat; the third is one run of 16 planes of COLS
    # bytes, whose first full beat ends on a plane's end (the slot map's places at the start), stored
    # as 4-byte elements: a round trip whose two sides walk the planes alike would hide a fault
    # both slot maps share.
    forced = {0: (COLS * ACC_WORDS // 2, 2, 1), 1: (2, 1, 40), 2: (COLS, 1, 16)}
    elems = {1: (0, 0), 2: (0, 1)}
    cases = [random_case(rng, forced.get(index), elems.get(index), dense=index == 2) for index in range(CASES)]
    image = bytes(rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    (tmp_path / "image.bin").write_bytes(image)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    model = build(LoadStoreHarness(beat_bytes), toplevel="loadstore_harness", build_dir=tmp_path / "build")
    result = run(model, "bench_loadstore",
                 {"image": str(tmp_path / "image.bin"), "memory_bytes": MEMORY_BYTES, "data_base": DATA_BASE,
                  "seed": beat_bytes, "dumps": str(dumps),
                  "cases": [{"load": int.from_bytes(encode(load), "little"), "store": int.from_bytes(encode(store), "little"),
                             "stall": index % 2 == 1} for index, (load, store) in enumerate(cases)]},
                 module_paths=(HERE,))
    geometry = Geometry(rows=1, cols=COLS, a_depth=beat_bytes, b_depth=beat_bytes, acc_words=ACC_WORDS,
                        param_records=COLS, lanes={})
    machine = Machine(geometry, MEMORY_BYTES)
    machine.dram[:] = np.frombuffer(image, dtype=np.uint8)
    config = AcceleratorConfig().with_(memory__axi_data_bits=8 * beat_bytes, memory__max_burst_beats=MAX_BEATS,
                                       memory__read_latency_cycles=AXI_RAM_READ_LATENCY,
                                       memory__write_latency_cycles=AXI_RAM_WRITE_LATENCY,
                                       matmul__rows=COLS, matmul__cols=COLS)
    for index, (load, store) in enumerate(cases):
        machine.step(2 * index, load)
        machine.step(2 * index + 1, store)
        got = np.frombuffer((dumps / f"case{index}.bin").read_bytes(), dtype=np.uint8)
        differ = np.flatnonzero(got != machine.dram)
        assert differ.size == 0, f"case {index} ({load} -> {store}): memory differs at {[hex(a) for a in differ[:8]]}"
        if index % 2 == 0:
            assert result["cycles"][index] == [instruction_cycles(load, config), instruction_cycles(store, config)], \
                f"case {index} ({load} -> {store})"


def test_axi_signature_checks_its_parameters():
    with pytest.raises(IntVitError, match=r"^data_width must be a power of two from 8 to 1024, not 96$"):
        AxiSignature(data_width=96)
    with pytest.raises(IntVitError, match=r"^id_width must be an integer in \[1, 32\], not 0$"):
        AxiSignature(id_width=0)
    assert "awaddr" not in AxiSignature(read_only=True).members
