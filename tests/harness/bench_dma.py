"""cocotb bench: random strided 2-D loads and stores through the DMA, cocotbext-axi's AxiRam outside.

Each case loads a random 2-D region of external memory into the scratchpad, stores it back to
another region with other strides, and checks every byte of external memory against a Python
model (so a word in the wrong place, a lost burst or a stray write all fail). Rows cross 4 KB
boundaries and exceed 256 words; the AxiRam's ready signals stall at random in half the cases.
Cycle counts of plain loads and stores go back for the timing check.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from intvit.harness.runner import harness_params, harness_result

MEMORY_BYTES = 1 << 18
TIMEOUT_CYCLES = 100_000


def pack(fields: list[tuple[int, int]]) -> int:
    """Fields (value, bits) LSB first, as Amaranth lays out a StructLayout."""
    word, at = 0, 0
    for value, bits in fields:
        word |= (value & ((1 << bits) - 1)) << at
        at += bits
    return word


async def transfer(dut, channel: str, cmd: dict, p: dict) -> int:
    """Issue one command and wait until the engine is idle again; return the cycles it took
    (the rising edge that takes the command to the first one with the engine idle)."""
    valid, ready, busy = (getattr(dut, f"{channel}_valid"), getattr(dut, f"{channel}_ready"),
                          getattr(dut, f"{channel}_busy"))
    getattr(dut, f"{channel}_payload").value = pack([
        (cmd["ext_addr"], p["addr_width"]), (cmd["ext_stride"], p["addr_width"]),
        (cmd["sp_addr"], p["sp_addr_width"]), (cmd["sp_stride"], p["sp_addr_width"]),
        (cmd["row_beats"], p["count_width"]), (cmd["rows"], p["count_width"])])
    valid.value = 1
    while not ready.value:                 # sampled between edges: taken at the next rising edge
        await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    valid.value = 0
    cycles = 1
    while busy.value:
        cycles += 1
        assert cycles < TIMEOUT_CYCLES, f"{channel} {cmd}: still busy after {cycles} cycles"
        await FallingEdge(dut.clk)
    assert not dut.error.value, f"{channel} {cmd}: error flag"
    return cycles


def region(rng: random.Random, word: int, sp_words: int) -> dict:
    rows = rng.randint(1, 4)
    row_beats = rng.choice([1, 2, 7, rng.randint(1, 300), 257])
    row_beats = min(row_beats, sp_words // (rows * 2))
    ext_stride = (row_beats + rng.randint(0, 80)) * word
    ext_addr = rng.randrange(0, MEMORY_BYTES // 2 - rows * ext_stride, word)
    sp_stride = row_beats + rng.randint(0, 5)
    return {"ext_addr": ext_addr, "ext_stride": ext_stride, "sp_addr": rng.randrange(0, sp_words - rows * sp_stride),
            "sp_stride": sp_stride, "row_beats": row_beats, "rows": rows}


def stall_channels(ram: AxiRam, rng: random.Random | None) -> None:
    """Let the memory drop its ready/valid signals at random (30 % of cycles), or never (``rng=None``)."""
    for channel in (ram.read_if.ar_channel, ram.read_if.r_channel, ram.write_if.aw_channel,
                    ram.write_if.w_channel, ram.write_if.b_channel):
        if rng is None:
            channel.clear_pause_generator()
            channel.pause = False          # clearing keeps the last value
        else:
            channel.set_pause_generator(iter(lambda: rng.random() < 0.3, None))


@cocotb.test()
async def dma_round_trips(dut):
    p = harness_params()
    rng = random.Random(p["seed"])
    word = p["data_width"] // 8
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns", impl="gpi").start())
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=MEMORY_BYTES)
    image = bytes(rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    ram.write(0, image)
    model = bytearray(image)
    dut.load_valid.value = 0
    dut.store_valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await FallingEdge(dut.clk)

    for case in range(p["cases"]):
        stall_channels(ram, rng if case % 2 else None)
        src = region(rng, word, p["sp_words"])
        dst = dict(src, ext_addr=MEMORY_BYTES // 2 + rng.randrange(0, MEMORY_BYTES // 4, word),
                   ext_stride=(src["row_beats"] + rng.randint(0, 9)) * word)
        await transfer(dut, "load", src, p)
        await transfer(dut, "store", dst, p)
        for r in range(src["rows"]):
            data = model[src["ext_addr"] + r * src["ext_stride"]:][:src["row_beats"] * word]
            model[dst["ext_addr"] + r * dst["ext_stride"]:][:len(data)] = data
            start = dst["ext_addr"] + r * dst["ext_stride"]
            model[start:start + len(data)] = data
        got = ram.read(0, MEMORY_BYTES)
        if got != bytes(model):
            first = next(i for i in range(MEMORY_BYTES) if got[i] != model[i])
            raise AssertionError(f"case {case} ({src} -> {dst}): memory differs from byte {first:#x}")

    stall_channels(ram, None)
    timing = []
    for words in (1, 16, 256, 300):
        cmd = {"ext_addr": 0x1000, "ext_stride": words * word, "sp_addr": 0, "sp_stride": words,
               "row_beats": words, "rows": 1}
        timing.append({"words": words, "load_cycles": await transfer(dut, "load", cmd, p),
                       "store_cycles": await transfer(dut, "store", cmd, p)})
    harness_result(timing=timing)
