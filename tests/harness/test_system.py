"""The accelerator top in Amaranth's simulator: LOAD/STORE programs against the functional executor.

A Python AXI4 memory serves both ports (reads ``Lr`` cycles after the address handshake, one
beat a cycle; a write's response ``Lw`` cycles after its last beat slot). Each program moves
data through ACC with strides, 4 KiB crossings, unaligned starts, INT8 and INT32 elements and
bursts cut at ``max_burst_beats``; external memory afterwards must equal
``compiler.executor.Machine``'s byte for byte, and ``cycles`` must equal ``sim.schedule``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from intvit.compiler.executor import Machine
from intvit.compiler.isa import Geometry, Instruction, Memory, Opcode, encode_program
from intvit.rtl.system import System, SystemParams
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import predict_cycles

DRAM_BYTES = 1 << 14
INSN_BASE = 0x3800
TIMEOUT_CYCLES = 20_000


def program() -> list[Instruction]:
    acc = dict(mem=Memory.ACC)
    return [
        Instruction(Opcode.LOAD, **acc, elem=0, dram_addr=0x0FF3, x_count=5, y_count=3, z_count=2, y_stride=7,
                    z_stride=40, sp_addr=2, sp_stride=5, push_next=1),
        Instruction(Opcode.SYNC, pop_prev=1, push_next=1),
        Instruction(Opcode.STORE, **acc, elem=0, dram_addr=0x2103, x_count=5, y_count=3, z_count=2, y_stride=5,
                    z_stride=16, sp_addr=2, sp_stride=5, pop_prev=1, push_prev=1),
        Instruction(Opcode.LOAD, **acc, elem=1, dram_addr=0x0800, x_count=6, y_count=2, z_count=1, y_stride=24,
                    sp_addr=20, push_next=1),
        Instruction(Opcode.SYNC, pop_prev=1, push_next=1),
        Instruction(Opcode.STORE, **acc, elem=1, dram_addr=0x2FF8, x_count=6, y_count=2, z_count=1, y_stride=24,
                    sp_addr=20, pop_prev=1, push_prev=1),
        Instruction(Opcode.STORE, **acc, elem=0, dram_addr=0x3101, x_count=6, y_count=2, z_count=1, y_stride=10,
                    sp_addr=20, push_prev=1),
        Instruction(Opcode.SYNC, pop_next=1),
        Instruction(Opcode.SYNC, pop_next=1),
        Instruction(Opcode.END, pop_next=1),
    ]


def run_system(params: SystemParams, dram: bytearray, latency: tuple[int, int]) -> dict:
    dut = System(params)
    w = params.axi_data_bits // 8
    lr, lw = latency
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {}

    async def bench(ctx):
        ctx.set(dut.insn_base, INSN_BASE)
        ctx.set(dut.data_base, 0)
        reads = {"imem": [], "dmem": []}          # [first beat cycle, address, beats left]
        writes = []                               # [address, beats left, aw cycle]
        responses = []                            # cycles at which a B response is due
        for cycle in range(TIMEOUT_CYCLES):
            ctx.set(dut.start, cycle == 0)
            for port_name, queue in reads.items():
                port = getattr(dut, port_name)
                beat = queue[0] if queue and queue[0][0] <= cycle else None
                ctx.set(port.rvalid, beat is not None)
                if beat is not None:
                    ctx.set(port.rdata, int.from_bytes(dram[beat[1]:beat[1] + w], "little"))
                ctx.set(port.arready, 1)
                if ctx.get(port.arvalid):
                    queue.append([cycle + lr + 1, ctx.get(port.araddr), ctx.get(port.arlen) + 1])
                if beat is not None and ctx.get(port.rready):
                    beat[1] += w
                    beat[2] -= 1
                    if beat[2] == 0:
                        queue.pop(0)
            dmem = dut.dmem
            ctx.set(dmem.awready, 1)
            ctx.set(dmem.wready, 1)
            ctx.set(dmem.bvalid, bool(responses) and responses[0] <= cycle)
            if ctx.get(dmem.awvalid):
                beats = ctx.get(dmem.awlen) + 1
                writes.append([ctx.get(dmem.awaddr), beats])
                responses.append(cycle + beats + lw)
            if ctx.get(dmem.wvalid):
                burst = writes[0]
                data, strb = ctx.get(dmem.wdata), ctx.get(dmem.wstrb)
                for i in range(w):
                    if strb >> i & 1:
                        dram[burst[0] + i] = data >> (8 * i) & 0xFF
                assert ctx.get(dmem.wlast) == (burst[1] == 1)
                burst[0] += w
                burst[1] -= 1
                if burst[1] == 0:
                    writes.pop(0)
            if responses and responses[0] <= cycle and ctx.get(dmem.bready):
                responses.pop(0)
            await ctx.tick()
            if ctx.get(dut.done) or ctx.get(dut.error):
                break
        result.update(done=ctx.get(dut.done), error=ctx.get(dut.error), cycles=ctx.get(dut.cycles),
                      error_index=ctx.get(dut.error_index))

    sim.add_testbench(bench)
    sim.run()
    return result


@pytest.mark.parametrize("cols, axi_bits, max_beats, latency", [(4, 32, 4, (3, 2)), (8, 64, 16, (8, 8))])
def test_load_store_programs_match_the_executor(cols, axi_bits, max_beats, latency):
    params = SystemParams(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=16,
                          axi_data_bits=axi_bits, max_burst_beats=max_beats)
    rng = random.Random(cols)
    dram = bytearray(rng.getrandbits(8) for _ in range(DRAM_BYTES))
    instructions = program()
    stream = encode_program(instructions)
    dram[INSN_BASE:INSN_BASE + len(stream)] = stream
    geometry = Geometry(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=16,
                        lanes={"requant": cols, "softmax": cols, "gelu": cols, "layernorm": cols})
    machine = Machine(geometry, DRAM_BYTES)
    machine.dram[:] = np.frombuffer(bytes(dram), dtype=np.uint8)
    for index, ins in enumerate(instructions):
        machine.step(index, ins)
    result = run_system(params, dram, latency)
    assert result["done"] and not result["error"], result
    differ = np.flatnonzero(np.frombuffer(bytes(dram), dtype=np.uint8) != machine.dram)
    assert differ.size == 0, f"external memory differs at {[hex(a) for a in differ[:8]]}"
    config = AcceleratorConfig().with_(memory__axi_data_bits=axi_bits, memory__max_burst_beats=max_beats,
                                       memory__read_latency_cycles=latency[0], memory__write_latency_cycles=latency[1])
    assert result["cycles"] == predict_cycles(instructions, config)


@pytest.mark.slow
def test_verilator_with_axi_ram(tmp_path):
    """The same program through the generated Verilog on Verilator, cocotbext-axi's AxiRam outside.

    AxiRam's own latencies are measured in the run (address handshake to first R beat, last W
    beat to B) and given to the cycle model; the counter must equal its prediction.
    """
    from intvit.harness.runner import build, run

    cols, axi_bits, max_beats = 8, 64, 16
    params = SystemParams(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=16,
                          axi_data_bits=axi_bits, max_burst_beats=max_beats)
    rng = random.Random(7)
    dram = bytearray(rng.getrandbits(8) for _ in range(DRAM_BYTES))
    instructions = program()
    stream = encode_program(instructions)
    dram[INSN_BASE:INSN_BASE + len(stream)] = stream
    (tmp_path / "image.bin").write_bytes(bytes(dram))
    geometry = Geometry(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=16,
                        lanes={"requant": cols, "softmax": cols, "gelu": cols, "layernorm": cols})
    machine = Machine(geometry, DRAM_BYTES)
    machine.dram[:] = np.frombuffer(bytes(dram), dtype=np.uint8)
    for index, ins in enumerate(instructions):
        machine.step(index, ins)

    model = build(System(params), toplevel="intvit_system", build_dir=tmp_path / "build")
    result = run(model, "intvit.harness.bench_system",
                 {"image": str(tmp_path / "image.bin"), "dump": str(tmp_path / "dump.bin"), "memory_bytes": DRAM_BYTES,
                  "insn_base": INSN_BASE, "data_base": 0, "timeout_cycles": TIMEOUT_CYCLES, "measure": True})
    assert result["done"] and not result["error"], result
    after = np.frombuffer((tmp_path / "dump.bin").read_bytes(), dtype=np.uint8)
    differ = np.flatnonzero(after != machine.dram)
    assert differ.size == 0, f"external memory differs at {[hex(a) for a in differ[:8]]}"
    config = AcceleratorConfig().with_(memory__axi_data_bits=axi_bits, memory__max_burst_beats=max_beats,
                                       memory__read_latency_cycles=result["read_latency"],
                                       memory__write_latency_cycles=result["write_latency"])
    assert result["cycles"] == predict_cycles(instructions, config)
