"""cocotb bench: LOAD/STORE pairs through ``rtl.loadstore``'s modules, cocotbext-axi's AxiRam outside.

Parameters (``harness_params()``): ``image`` (external memory, written at ``data_base``),
``memory_bytes``, ``data_base``, ``cases`` (each ``load`` and ``store``, the instruction words
as integers, and ``stall``: whether the memory drops its ready/valid signals at random), ``seed``
and ``dumps`` (a folder). After case ``i`` the memory from ``data_base`` goes to
``dumps/case{i}.bin``. Results: ``cycles``, per case ``[load, store]``: the cycle with ``done``
high minus the one with ``start`` high, an instruction's duration as docs/isa.md's Timing counts it.
"""

import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge
from cocotbext.axi import AxiBus, AxiRam

from intvit.harness.runner import harness_params, harness_result

TIMEOUT_CYCLES = 200_000
STALL_PROBABILITY = 0.3


def stall_channels(ram: AxiRam, rng: random.Random | None) -> None:
    """Let the memory drop ready/valid on every channel at random (``STALL_PROBABILITY`` of cycles), or never."""
    for channel in (ram.read_if.ar_channel, ram.read_if.r_channel, ram.write_if.aw_channel,
                    ram.write_if.w_channel, ram.write_if.b_channel):
        if rng is None:
            channel.clear_pause_generator()
            channel.pause = False          # clearing keeps the last value
        else:
            channel.set_pause_generator(iter(lambda: rng.random() < STALL_PROBABILITY, None))


async def execute(dut, unit: str, insn: int) -> int:
    """Start one instruction on ``unit`` (``load``/``store``) at a falling edge; wait for ``done``."""
    start, done = getattr(dut, f"{unit}_start"), getattr(dut, f"{unit}_done")
    getattr(dut, f"{unit}_insn").value = insn
    start.value = 1
    await FallingEdge(dut.clk)
    start.value = 0
    cycles = 1
    while not done.value:
        await FallingEdge(dut.clk)
        cycles += 1
        assert cycles < TIMEOUT_CYCLES, f"{unit} {insn:#x}: no done after {cycles} cycles"
    return cycles


@cocotb.test()
async def load_store_round_trips(dut):
    p = harness_params()
    rng = random.Random(p["seed"])
    base, size = p["data_base"], p["memory_bytes"]
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns", impl="gpi").start())
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=base + size)
    ram.write(base, Path(p["image"]).read_bytes())
    dut.load_start.value = 0
    dut.store_start.value = 0
    dut.base.value = base
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await FallingEdge(dut.clk)
    cycles = []
    for index, case in enumerate(p["cases"]):
        stall_channels(ram, rng if case["stall"] else None)
        # A ready the last stall dropped comes back at the next edge: start on a quiet memory.
        await ClockCycles(dut.clk, 2)
        await FallingEdge(dut.clk)
        load = await execute(dut, "load", case["load"])
        store = await execute(dut, "store", case["store"])
        cycles.append([load, store])
        Path(p["dumps"], f"case{index}.bin").write_bytes(ram.read(base, size))
    harness_result(cycles=cycles)
