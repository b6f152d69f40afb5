"""The controller in Amaranth's simulator: fetch, dispatch, queues, tokens and issue against ``sim.schedule``.

A Python model stands in for the instruction memory (an AXI4 slave that answers a burst
``read_latency_cycles`` after its address, one beat a cycle) and for the three execution
modules (each completes an instruction ``sim.schedule.instruction_cycles`` after its start;
the array takes MATMULs back to back as ``sim.schedule.matmul_times`` says).
The controller's cycle counter must then equal ``sim.schedule.predict_cycles`` for streams
that exercise every token counter, full queues, full fetch FIFOs and END; illegal
instructions must raise the error flag with the offending index, never hang.
"""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from intvit.compiler.isa import REORDER_DEPTH, Instruction, Memory, Opcode, decode, encode_program
from intvit.rtl.controller import Controller
from intvit.sim.config import AcceleratorConfig
from intvit.sim.schedule import instruction_cycles, matmul_times, predict_cycles, schedule

TIMEOUT_CYCLES = 50_000


def load(**flags) -> Instruction:
    return Instruction(Opcode.LOAD, mem=Memory.ACC, elem=1, dram_addr=64, x_count=40, y_count=3, z_count=1,
                       y_stride=160, **flags)


def store(**flags) -> Instruction:
    return Instruction(Opcode.STORE, mem=Memory.ACC, elem=0, dram_addr=4000, x_count=24, y_count=2, z_count=1,
                       y_stride=100, **flags)


def compute(**flags) -> Instruction:
    return Instruction(Opcode.REQUANT, rows=2, length=20, stride=2, **flags)


def matmul(k: int, **flags) -> Instruction:
    return Instruction(Opcode.MATMUL, k=k, acc_stride=1, **flags)


def random_stream(seed: int, n: int) -> list[Instruction]:
    """A legal stream: tokens pushed before they are popped, every counter used, then END."""
    rng = random.Random(seed)
    out, credit = [], {"lc": 0, "cl": 0, "cs": 0, "sc": 0}
    for _ in range(n):
        kind = rng.choice(["load", "compute", "compute", "store", "sync"])
        if kind == "load":
            pop = credit["cl"] > 0 and rng.random() < 0.5
            push = rng.random() < 0.6
            credit["cl"] -= pop
            credit["lc"] += push
            out.append(load(pop_next=pop, push_next=push))
        elif kind == "store":
            pop = credit["cs"] > 0 and rng.random() < 0.7
            push = rng.random() < 0.5
            credit["cs"] -= pop
            credit["sc"] += push
            out.append(store(pop_prev=pop, push_prev=push))
        else:
            pop_prev = credit["lc"] > 0 and rng.random() < 0.6
            pop_next = credit["sc"] > 0 and rng.random() < 0.5
            credit["lc"] -= pop_prev
            credit["sc"] -= pop_next
            push_prev, push_next = rng.random() < 0.3, rng.random() < 0.4
            credit["cl"] += push_prev
            credit["cs"] += push_next
            fields = dict(pop_prev=pop_prev, pop_next=pop_next, push_prev=push_prev, push_next=push_next)
            if kind == "sync":
                out.append(Instruction(Opcode.SYNC, **fields))
            else:
                # Both compute slots, side by side when ``overlap`` is set.
                fields["overlap"] = rng.random() < 0.5
                out.append(matmul(rng.randint(1, 60), **fields) if rng.random() < 0.5 else compute(**fields))
    return out + [Instruction(Opcode.END)]


def run_controller(stream: bytes, config: AcceleratorConfig, instructions: list[Instruction] | None = None) -> dict:
    """Run the controller on ``stream`` with model memory and modules; return its status at the end."""
    width = config.memory.axi_data_bits
    dut = Controller(data_width=width)
    latency = config.memory.read_latency_cycles
    beat_bytes = width // 8
    padded = stream + bytes(32 * 16)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {}

    async def bench(ctx):
        ctx.set(dut.insn_base, 0)
        bursts = []                       # [first beat cycle, address, beats left]
        # Completion cycles of the instructions running in each module (compute: in each slot;
        # the array holds two MATMULs at once, timed by sim.schedule.matmul_times).
        modules = {("load", 0): [], ("compute", 0): [], ("compute", 1): [], ("store", 0): []}
        array_takes, last_row = 0, -1
        cycle = 0                         # the start cycle
        starts = result["starts"] = []    # the cycle each LOAD, STORE, MATMUL and vector instruction started
        while cycle < TIMEOUT_CYCLES:
            ctx.set(dut.start, cycle == 0)
            for name in ("load", "compute", "store"):
                ctx.set(getattr(dut, name).done, sum((cycle in modules[(name, k)]) << k for k in (0, 1)
                                                     if (name, k) in modules))
            ctx.set(dut.compute.array_ready, cycle >= array_takes)
            beat = bursts[0] if bursts and bursts[0][0] <= cycle else None
            ctx.set(dut.imem.rvalid, beat is not None)
            if beat is not None:
                ctx.set(dut.imem.rdata, int.from_bytes(padded[beat[1]:beat[1] + beat_bytes], "little"))
            ctx.set(dut.imem.arready, 1)
            if ctx.get(dut.imem.arvalid):
                beats = ctx.get(dut.imem.arlen) + 1
                bursts.append([cycle + latency + 1, ctx.get(dut.imem.araddr), beats])
            if beat is not None and ctx.get(dut.imem.rready):
                beat[1] += beat_bytes
                beat[2] -= 1
                if beat[2] == 0:
                    bursts.pop(0)
            for name in ("load", "compute", "store"):
                port = getattr(dut, name)
                if ctx.get(port.start):
                    ins = decode(ctx.get(port.insn).to_bytes(32, "little"))
                    starts.append(cycle)
                    slot = int(name == "compute" and ins.opcode != Opcode.MATMUL)
                    if ins.opcode == Opcode.MATMUL:
                        array_takes, last_row = matmul_times(cycle, ins.k, last_row, config)
                        modules[(name, slot)].append(last_row + 1)
                    else:
                        modules[(name, slot)].append(cycle + instruction_cycles(ins, config))
            await ctx.tick()
            cycle += 1
            if ctx.get(dut.done) or ctx.get(dut.error):
                break
        result.update(done=ctx.get(dut.done), error=ctx.get(dut.error), error_index=ctx.get(dut.error_index),
                      cycles=ctx.get(dut.cycles), busy=ctx.get(dut.busy), waited=cycle)

    sim.add_testbench(bench)
    sim.run()
    return result


@pytest.mark.parametrize("seed, n, width", [(0, 60, 128), (1, 40, 32), (2, 120, 64), (3, 120, 128)])
def test_cycles_equal_the_schedule_model(seed, n, width):
    config = AcceleratorConfig().with_(memory__axi_data_bits=width)
    instructions = random_stream(seed, n)
    result = run_controller(encode_program(instructions), config)
    assert result["done"] and not result["error"]
    predicted = predict_cycles(instructions, config)
    assert result["cycles"] == predicted
    # Every start where the model puts it (tokens pushed at retirement decide many of them).
    timed = schedule(instructions, config)
    executed = [i for i, ins in enumerate(instructions) if ins.opcode not in (Opcode.SYNC, Opcode.END)]
    assert result["starts"] == sorted(int(timed.start[i]) for i in executed)
    # The stream does run the array and the vector units side by side.
    serial = [ins.replace(overlap=0) if "overlap" in ins.fields else ins for ins in instructions]
    assert predicted < predict_cycles(serial, config)


def _word(ins: Instruction, **raw_bits) -> bytes:
    """``ins`` encoded, with extra raw bits set: ``{offset: value}`` as ``bit_<offset>=value``."""
    word = int.from_bytes(encode_program([ins]), "little")
    for name, value in raw_bits.items():
        word |= value << int(name.removeprefix("bit_"))
    return word.to_bytes(32, "little")


@pytest.mark.parametrize("bad", [
    pytest.param(bytes([0]) + bytes(31), id="opcode-0"),
    pytest.param(bytes([12]) + bytes(31), id="opcode-12"),
    pytest.param(_word(Instruction(Opcode.SYNC), bit_200=1), id="sync-reserved-bit"),
    pytest.param(_word(compute(), bit_255=1), id="vector-reserved-bit"),
    pytest.param(_word(load(), bit_4=1), id="load-pops-previous"),
    pytest.param(_word(store(), bit_7=1), id="store-pushes-next"),
    pytest.param(encode_program([Instruction(Opcode.REQUANT, rows=0, length=3)]), id="zero-rows"),
    pytest.param(encode_program([Instruction(Opcode.MATMUL, k=0)]), id="zero-k"),
    pytest.param(encode_program([load().replace(z_count=0)]), id="zero-z-count"),
    pytest.param(encode_program([load().replace(mem=Memory.PARAM, elem=0)]), id="param-bytes"),
    pytest.param(encode_program([load().replace(mem=Memory.A, elem=1)]), id="a-int32"),
    pytest.param(encode_program([store().replace(mem=Memory.B)]), id="store-from-b"),
])
def test_illegal_instruction_raises_error_and_stops(bad):
    """Three legal instructions, the bad one (index 3), then END: error with index 3, no done."""
    good = encode_program([load(push_next=True), compute(pop_prev=True), Instruction(Opcode.SYNC)])
    result = run_controller(good + bad + encode_program([Instruction(Opcode.END)]), AcceleratorConfig())
    assert result["error"] and not result["done"] and not result["busy"]
    assert result["error_index"] == 3


def test_token_counter_overflow_raises_error():
    """256 load->compute tokens that nobody takes while a long REQUANT keeps END from completing."""
    long_compute = Instruction(Opcode.REQUANT, rows=60000, length=60000, stride=1)
    pushes = [load(push_next=True)] * 256
    result = run_controller(encode_program([long_compute, *pushes, Instruction(Opcode.END)]), AcceleratorConfig())
    assert result["error"] and not result["done"]


def test_a_full_reorder_buffer_stalls_issue():
    """A long REQUANT, then short MATMULs beside it: they finish but cannot retire before it, so
    the 32nd after it waits for a free reorder-buffer entry, in the RTL as in the model."""
    config = AcceleratorConfig()
    instructions = [Instruction(Opcode.REQUANT, rows=300, length=64, stride=8),
                    *[matmul(1, overlap=1)] * (REORDER_DEPTH + 4), Instruction(Opcode.END)]
    result = run_controller(encode_program(instructions), config)
    timed = schedule(instructions, config)
    assert result["done"] and result["cycles"] == timed.total_cycles
    assert result["starts"] == [int(t) for t in timed.start[:-1]]
    assert timed.start[REORDER_DEPTH - 1] < timed.end[0] < timed.start[REORDER_DEPTH]
