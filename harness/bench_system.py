"""cocotb module: run one compiled stream on ``rtl.system.System`` with cocotbext-axi's AxiRam as memory.

Parameters (``harness_params()``): ``image`` (path of the external-memory image, written at
address 0), ``insn_base``, ``data_base``, ``dump`` (path the memory is written back to),
``timeout_cycles``. The RTL runs free: Python only waits for ``done`` or ``error``, so the
cost per cycle is Verilator's. Results: ``done``, ``error``, ``error_index``, ``cycles`` (the
accelerator's counter), ``read_latency``/``write_latency`` (AxiRam's, measured on the first
data burst: address handshake to first R beat minus one, last W beat to B response).
"""

from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotbext.axi import AxiBus, AxiRam, AxiReadBus
from cocotbext.axi.axi_ram import AxiRamRead

from intvit.harness.runner import harness_params, harness_result


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
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns", impl="gpi").start())
    ram = AxiRam(AxiBus.from_prefix(dut, "dmem"), dut.clk, dut.rst, size=p["memory_bytes"])
    AxiRamRead(AxiReadBus.from_prefix(dut, "imem"), dut.clk, dut.rst, size=p["memory_bytes"], mem=ram.mem)
    ram.write(0, image)
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
    finished = await First(RisingEdge(dut.done), RisingEdge(dut.error), ClockCycles(dut.clk, p["timeout_cycles"]))
    await RisingEdge(dut.clk)
    Path(p["dump"]).write_bytes(ram.read(0, p["memory_bytes"]))
    harness_result(done=int(dut.done.value), error=int(dut.error.value), error_index=int(dut.error_index.value),
                   cycles=int(dut.cycles.value), timed_out=finished is not None and not (dut.done.value or dut.error.value),
                   read_latency=latency.get("read"), write_latency=latency.get("write"))
