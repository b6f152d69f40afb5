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
from intvit.compiler.isa import Geometry, Instruction, Memory, Opcode, encode_program, pack_params
from intvit.compiler.verify import check_hazards, mark_overlaps
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


K = 12


def matmul_program(cols: int) -> list[Instruction]:
    """A (R x K) and two K-chunks of B^T into the banks at unaligned offsets, C bias records at an
    unaligned record, a REQUANT running while the bias loads, a MATMUL with bias, one accumulating on top, a REQUANT straight after it, and
    the INT32 rows stored."""
    return [
        Instruction(Opcode.LOAD, mem=Memory.A, elem=0, dram_addr=0x100, x_count=K, y_count=1, z_count=cols,
                    z_stride=K, sp_addr=3),
        Instruction(Opcode.LOAD, mem=Memory.B, elem=0, dram_addr=0x201, x_count=K, y_count=1, z_count=cols,
                    z_stride=K, sp_addr=5),
        Instruction(Opcode.LOAD, mem=Memory.B, elem=0, dram_addr=0x300, x_count=K, y_count=1, z_count=cols,
                    z_stride=K + 3, sp_addr=5 + K, push_next=1),
        Instruction(Opcode.LOAD, mem=Memory.PARAM, elem=2, dram_addr=0x400, x_count=cols, y_count=1, z_count=1,
                    sp_addr=2, push_next=1),
        # Outlasts the PARAM LOAD, so the MATMUL starts (and reads its bias) in the REQUANT's done cycle.
        Instruction(Opcode.REQUANT, width=0, src=40, dst=40, rows=20, length=cols, stride=1, param_addr=cols + 4,
                    pop_prev=1),
        Instruction(Opcode.MATMUL, bias=1, a_addr=3, b_addr=5, k=K, acc_addr=1, acc_stride=2, param_addr=2,
                    pop_prev=1),
        Instruction(Opcode.MATMUL, accumulate=1, a_addr=3, b_addr=5 + K, k=K, acc_addr=1, acc_stride=2),
        # Starts in the MATMUL's done cycle, in which the MATMUL writes its last row.
        Instruction(Opcode.REQUANT, width=0, src=1, dst=40, rows=1, length=cols, stride=1, param_addr=2,
                    push_next=1),
        Instruction(Opcode.STORE, mem=Memory.ACC, elem=1, dram_addr=0x800, x_count=cols, y_count=1, z_count=cols,
                    z_stride=4 * cols + 8, sp_addr=1, sp_stride=2, pop_prev=1, push_prev=1),
        Instruction(Opcode.END, pop_next=1),
    ]


LENGTH, ROWS, MAX_LENGTH = 6, 3, 16


def vector_program() -> list[Instruction]:
    """INT32 rows and INT8 residuals into ACC, then REQUANT to 8 bits, ADD, REQUANT to 17 bits and
    GELU in place, SOFTMAX of the INT32 rows and LAYERNORM of the INT8 ones, each stored; rows of
    6 elements over two 4-lane words."""
    v = dict(rows=ROWS, length=LENGTH, stride=2, param_addr=1)
    store = dict(mem=Memory.ACC, elem=1, x_count=LENGTH, y_count=1, z_count=ROWS, z_stride=4 * LENGTH + 4,
                 sp_stride=2)
    return [
        Instruction(Opcode.LOAD, mem=Memory.ACC, elem=1, dram_addr=0x100, x_count=LENGTH, y_count=1, z_count=ROWS,
                    z_stride=4 * LENGTH + 8, sp_addr=0, sp_stride=2),
        Instruction(Opcode.LOAD, mem=Memory.ACC, elem=0, dram_addr=0x203, x_count=LENGTH, y_count=1, z_count=ROWS,
                    z_stride=LENGTH + 1, sp_addr=10, sp_stride=2),
        Instruction(Opcode.LOAD, mem=Memory.PARAM, elem=2, dram_addr=0x400, x_count=LENGTH, y_count=1, z_count=1,
                    sp_addr=1, push_next=1),
        Instruction(Opcode.REQUANT, width=0, src=0, dst=20, pop_prev=1, **v),
        Instruction(Opcode.ADD, src=20, src_b=10, dst=30, **v),
        Instruction(Opcode.REQUANT, width=1, src=0, dst=40, **v),
        Instruction(Opcode.GELU, src=40, dst=40, **v),
        Instruction(Opcode.SOFTMAX, src=0, dst=46, **v),
        Instruction(Opcode.LAYERNORM, src=20, dst=52, push_next=1, **v),
        Instruction(Opcode.STORE, dram_addr=0x800, sp_addr=20, pop_prev=1, **store),
        Instruction(Opcode.STORE, dram_addr=0x900, sp_addr=30, **store),
        Instruction(Opcode.STORE, dram_addr=0xA00, sp_addr=40, **store),
        Instruction(Opcode.STORE, dram_addr=0xB00, sp_addr=46, **store),
        Instruction(Opcode.STORE, dram_addr=0xC00, sp_addr=52, push_prev=1, **store),
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


def check_program(instructions, cols, axi_bits, max_beats, latency, dram: bytearray, lanes: int | None = None,
                  overlap: bool = False) -> None:
    """Run ``instructions`` on the RTL and on the executor from the same memory; both must agree,
    and the cycle counter must equal the schedule model's prediction. With ``overlap`` the
    compiler's ``mark_overlaps`` runs the array beside the vector units where it may."""
    lanes = lanes or cols
    params = SystemParams(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=32,
                          axi_data_bits=axi_bits, max_burst_beats=max_beats, requant_lanes=lanes, gelu_lanes=lanes,
                          softmax_lanes=lanes, layernorm_lanes=lanes, softmax_max_length=MAX_LENGTH,
                          layernorm_width=LENGTH)
    geometry = Geometry(rows=cols, cols=cols, a_depth=64, b_depth=64, acc_words=64, param_records=32,
                        lanes={"requant": lanes, "softmax": lanes, "gelu": lanes, "layernorm": lanes},
                        softmax_max_length=MAX_LENGTH, layernorm_width=LENGTH)
    serial = instructions
    if overlap:
        instructions = mark_overlaps(instructions, geometry)
        check_hazards(instructions, geometry)
    stream = encode_program(instructions)
    dram[INSN_BASE:INSN_BASE + len(stream)] = stream
    machine = Machine(geometry, DRAM_BYTES)
    machine.dram[:] = np.frombuffer(bytes(dram), dtype=np.uint8)
    for index, ins in enumerate(instructions):
        machine.step(index, ins)
    result = run_system(params, dram, latency)
    assert result["done"] and not result["error"], result
    differ = np.flatnonzero(np.frombuffer(bytes(dram), dtype=np.uint8) != machine.dram)
    assert differ.size == 0, f"external memory differs at {[hex(a) for a in differ[:8]]}"
    config = AcceleratorConfig().with_(memory__axi_data_bits=axi_bits, memory__max_burst_beats=max_beats,
                                       memory__read_latency_cycles=latency[0], memory__write_latency_cycles=latency[1],
                                       matmul__rows=cols, matmul__cols=cols, requant__lanes=lanes, gelu__lanes=lanes,
                                       softmax__lanes=lanes, layernorm__lanes=lanes)
    assert result["cycles"] == predict_cycles(instructions, config)
    if overlap:
        assert any(ins.fields.get("overlap") for ins in instructions)
        assert result["cycles"] <= predict_cycles(serial, config)


@pytest.mark.parametrize("cols, axi_bits, latency, overlap", [
    (4, 32, (3, 2), False), (4, 32, (3, 2), True), (8, 64, (8, 8), True)])   # 8: the last beat waits
def test_matmul_matches_the_executor(cols, axi_bits, latency, overlap):
    rng = np.random.default_rng(cols)
    dram = bytearray(rng.integers(0, 256, DRAM_BYTES, dtype=np.uint8).tobytes())
    bias = pack_params(cols, bias=rng.integers(-2**20, 2**20, cols))
    dram[0x400:0x400 + bias.size] = bias.tobytes()
    check_program(matmul_program(cols), cols, axi_bits, 16, latency, dram, overlap=overlap)


@pytest.mark.parametrize("lanes", [2, 4])
def test_vector_instructions_match_the_executor(lanes):
    rng = np.random.default_rng(lanes)
    dram = bytearray(rng.integers(0, 256, DRAM_BYTES, dtype=np.uint8).tobytes())
    for row in range(ROWS):
        values = rng.integers(-2**22, 2**22, LENGTH).astype("<i4")
        start = 0x100 + row * (4 * LENGTH + 8)
        dram[start:start + values.nbytes] = values.tobytes()
    params = pack_params(LENGTH, multiplier=rng.integers(2**29, 2**30, LENGTH), shift=rng.integers(20, 26, LENGTH),
                         multiplier_b=rng.integers(2**29, 2**30, LENGTH), gamma=rng.integers(-128, 128, LENGTH),
                         bias=rng.integers(-2**16, 2**16, LENGTH))
    dram[0x400:0x400 + params.size] = params.tobytes()
    check_program(vector_program(), 4, 32, 16, (3, 2), dram, lanes=lanes)


@pytest.mark.parametrize("cols, axi_bits, max_beats, latency", [(4, 32, 4, (3, 2)), (8, 64, 16, (8, 8))])
def test_load_store_programs_match_the_executor(cols, axi_bits, max_beats, latency):
    rng = random.Random(cols)
    dram = bytearray(rng.getrandbits(8) for _ in range(DRAM_BYTES))
    check_program(program(), cols, axi_bits, max_beats, latency, dram)


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
