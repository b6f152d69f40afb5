"""cocotb module: run one compiled stream on ``rtl.system.System`` with cocotbext-axi's AxiRam as memory.

Parameters (``harness_params()``): ``image`` (path of the external-memory image, written at
address 0), ``insn_base``, ``data_base``, ``dump`` (path the memory is written back to),
``timeout_cycles``, and optionally ``read_latency``/``write_latency``: the memory latencies
to model (docs/isa.md's ``Lr``, ``Lw``), reached by holding each read burst's data and each
write response for the cycles AxiRam itself does not take (``AXI_RAM_READ_LATENCY``,
``AXI_RAM_WRITE_LATENCY``, measured). The RTL runs free: Python only waits for ``done`` or ``error``, so the
cost per cycle is Verilator's. Results: ``done``, ``error``, ``error_index``, ``cycles`` (the
accelerator's counter), ``read_latency``/``write_latency`` (AxiRam's, measured on the first
data burst: address handshake to first R beat minus one, last W beat to B response).
"""

import logging
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiRam, AxiReadBus
from cocotbext.axi.axi_ram import AxiRamRead

from intvit.harness.runner import harness_params, harness_result

CLOCK_NS = 2
# AxiRam's own latencies in docs/isa.md's terms (address handshake to first R beat, minus one;
# last W beat to B response), measured by this module's ``measure`` option.
AXI_RAM_READ_LATENCY = 1
AXI_RAM_WRITE_LATENCY = 2


def _delay_reads(ram_read, clk, cycles: int) -> None:
    """Hold every read burst's data ``cycles`` more cycles after its address is taken."""
    recv = ram_read.ar_channel.recv

    async def delayed():
        ar = await recv()
        await ClockCycles(clk, cycles)
        return ar
    ram_read.ar_channel.recv = delayed


def _delay_responses(ram_write, clk, cycles: int) -> None:
    """Send every write response ``cycles`` later."""
    send = ram_write.b_channel.send

    async def delayed(b):
        await ClockCycles(clk, cycles)
        await send(b)
    ram_write.b_channel.send = delayed


async def _measure(dut, clk, prefix_valid, prefix_ready, data_valid, data_ready) -> int:
    """Cycles from the first address handshake on a channel to the first data handshake after it."""
    cycle = 0
    handshake = None
    while True:
        await RisingEdge(clk)
        cycle += 1
        if handshake is None and prefix_valid.value and prefix_ready.value:
            handshake = cycle
        elif handshake is not None and data_valid.value and data_ready.value:
            return cycle - handshake


@cocotb.test()
async def run_stream(dut):
    p = harness_params()
    image = Path(p["image"]).read_bytes()
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start())
    ram = AxiRam(AxiBus.from_prefix(dut, "dmem"), dut.clk, dut.rst, size=p["memory_bytes"])
    imem = AxiRamRead(AxiReadBus.from_prefix(dut, "imem"), dut.clk, dut.rst, size=p["memory_bytes"], mem=ram.mem)
    ram.write(0, image)
    # AxiRam logs every burst at INFO (thousands of lines an image); warnings and errors still show.
    for interface in (ram.read_if, ram.write_if, imem):
        interface.log.setLevel(logging.WARNING)
    if p.get("read_latency") is not None:
        extra_read = p["read_latency"] - AXI_RAM_READ_LATENCY
        extra_write = p["write_latency"] - AXI_RAM_WRITE_LATENCY
        assert extra_read >= 0 and extra_write >= 0, "memory latencies below AxiRam's own"
        if extra_read:
            _delay_reads(ram.read_if, dut.clk, extra_read)
            _delay_reads(imem, dut.clk, extra_read)
        if extra_write:
            _delay_responses(ram.write_if, dut.clk, extra_write)
    dut.start.value = 0
    dut.insn_base.value = p["insn_base"]
    dut.data_base.value = p["data_base"]
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    latency = {}
    if p.get("measure"):
        async def read_latency():
            latency["read"] = await _measure(dut, dut.clk, dut.dmem_arvalid, dut.dmem_arready,
                                             dut.dmem_rvalid, dut.dmem_rready) - 1
        async def write_latency():
            # From the last W beat of the first burst to its B response.
            while True:
                await RisingEdge(dut.clk)
                if dut.dmem_wvalid.value and dut.dmem_wready.value and dut.dmem_wlast.value:
                    break
            cycles = 0
            while True:
                await RisingEdge(dut.clk)
                cycles += 1
                if dut.dmem_bvalid.value and dut.dmem_bready.value:
                    latency["write"] = cycles
                    return
        cocotb.start_soon(read_latency())
        cocotb.start_soon(write_latency())
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    # One timer, not a Python wake-up per cycle: the clock runs in the simulator (GPI clock).
    await First(RisingEdge(dut.done), RisingEdge(dut.error), Timer(CLOCK_NS * p["timeout_cycles"], unit="ns"))
    await RisingEdge(dut.clk)
    Path(p["dump"]).write_bytes(ram.read(0, p["memory_bytes"]))
    harness_result(done=int(dut.done.value), error=int(dut.error.value), error_index=int(dut.error_index.value),
                   cycles=int(dut.cycles.value), timed_out=not (dut.done.value or dut.error.value),
                   read_latency=latency.get("read"), write_latency=latency.get("write"))
