"""cocotb module for ``test_rtl_run``: count ``cycles`` clock cycles of ``step`` after reset, report ``count``."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from intvit.harness.runner import harness_params, harness_result


@cocotb.test()
async def count(dut):
    p = harness_params()
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns", impl="gpi").start())
    dut.step.value = p["step"]
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await ClockCycles(dut.clk, p["cycles"])
    await FallingEdge(dut.clk)
    harness_result(count=int(dut.count.value))
