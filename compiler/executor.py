"""The instruction-level functional executor: runs a compiled stream on its memory image.

It models exactly what ``docs/isa.md`` specifies, instruction by instruction and in program
order (one legal order of the decoupled modules, since every dependency points backwards):
external memory as bytes, the A and B banks, ACC words of ``cols`` INT32 lanes and the
parameter records. The arithmetic is ``quant``'s kernels (``int_matmul``, ``requantize``,
``int_add``, ``int_softmax``, ``int_gelu``, ``int_layernorm``), so a compiled program
reproduces the golden executor's logits bit for bit; it is also the reference the RTL
engineer compares scratchpad and memory contents against.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np

from intvit.compiler.codegen import CompiledProgram
from intvit.compiler.isa import (
    ELEMENT_BYTES, PARAM_RECORD_BYTES, REQUANT_WIDTHS, Geometry, Instruction, Memory, Opcode, unpack_params,
)
from intvit.quant.errors import IntVitError
from intvit.quant.gelu import GELU_INPUT_BITS, int_gelu
from intvit.quant.layernorm import int_layernorm, layernorm_divisors
from intvit.quant.matmul import int_matmul
from intvit.quant.requant import int_add, requantize
from intvit.quant.softmax import int_softmax

__all__ = ["Machine", "execute"]


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement INT32 wrap-around, as the ACC adders do."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


def _write(target: np.ndarray, index, values):
    """The deferred write of an instruction's results (``Machine.read`` returns it)."""
    def commit():
        target[index] = values
    return commit


def _low_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` of each lane, sign-extended: what a unit with a ``bits``-wide input sees."""
    half = 1 << (bits - 1)
    return ((np.asarray(x, dtype=np.int64) + half) % (1 << bits)) - half


class Machine:
    """The accelerator's architectural state: external memory and the four scratchpads.

    Parameters
    ----------
    geometry : Geometry
    memory_bytes : int
        Size of external memory (``CompiledProgram.memory_bytes``).
    """

    def __init__(self, geometry: Geometry, memory_bytes: int):
        g = geometry
        self.geometry = g
        self.dram = np.zeros(memory_bytes, dtype=np.uint8)
        self.a = np.zeros((g.rows, g.a_depth), dtype=np.int8)
        self.b = np.zeros((g.cols, g.b_depth), dtype=np.int8)
        self.acc = np.zeros((g.acc_words, g.cols), dtype=np.int64)
        self.param = np.zeros((g.param_records, PARAM_RECORD_BYTES), dtype=np.uint8)

    # ------------------------------------------------------------------ helpers
    def _fail(self, index: int, ins: Instruction, message: str):
        raise IntVitError(f"instruction {index} ({ins.opcode.name}): {message}")

    def _dram_index(self, index: int, ins: Instruction) -> np.ndarray:
        """Byte addresses of every element, shape (z, y, x, elem_bytes)."""
        elem = ELEMENT_BYTES[ins.elem]
        if min(ins.x_count, ins.y_count, ins.z_count) < 1:
            self._fail(index, ins, "x_count, y_count and z_count must be at least 1")
        addr = (ins.dram_addr + np.arange(ins.z_count)[:, None, None, None] * ins.z_stride
                + np.arange(ins.y_count)[None, :, None, None] * ins.y_stride
                + np.arange(ins.x_count)[None, None, :, None] * elem + np.arange(elem))
        if addr.min() < 0 or addr.max() >= self.dram.size:
            self._fail(index, ins, f"external address {int(addr.max())} outside memory of {self.dram.size} bytes")
        return addr

    def _acc_rows(self, index: int, ins: Instruction, start: int, rows: int, length: int, stride: int):
        """(word, lane) index arrays of ``rows`` rows of ``length`` elements from word ``start``."""
        c = self.geometry.cols
        j = np.arange(length)
        words = start + np.arange(rows)[:, None] * stride + j // c
        if words.max() >= self.geometry.acc_words:
            self._fail(index, ins, f"ACC word {int(words.max())} outside {self.geometry.acc_words}")
        return words, np.broadcast_to(j % c, words.shape)

    def _params(self, index: int, ins: Instruction, count: int) -> dict[str, np.ndarray]:
        if ins.param_addr + count > self.geometry.param_records:
            self._fail(index, ins, f"PARAM records {ins.param_addr}..{ins.param_addr + count - 1} outside "
                                   f"{self.geometry.param_records}")
        return unpack_params(self.param[ins.param_addr:ins.param_addr + count])

    # ------------------------------------------------------------------ instructions
    def read(self, index: int, ins: Instruction):
        """Read an instruction's operands and compute its result; returns the function that writes it."""
        op = ins.opcode
        if op == Opcode.LOAD:
            return self._load(index, ins)
        if op == Opcode.STORE:
            return self._store(index, ins)
        if op == Opcode.MATMUL:
            return self._matmul(index, ins)
        if op in (Opcode.REQUANT, Opcode.ADD, Opcode.SOFTMAX, Opcode.GELU, Opcode.LAYERNORM):
            return self._vector(index, ins)
        return lambda: None

    def step(self, index: int, ins: Instruction) -> None:
        """Execute one instruction."""
        self.read(index, ins)()

    def _load(self, index: int, ins: Instruction) -> None:
        g = self.geometry
        raw = self.dram[self._dram_index(index, ins)]                 # (z, y, x, elem) bytes
        mem, elem = Memory(ins.mem), ELEMENT_BYTES[ins.elem]
        z, e = np.arange(ins.z_count)[:, None], np.arange(ins.y_count * ins.x_count)[None, :]
        if mem in (Memory.A, Memory.B):
            if elem != 1:
                self._fail(index, ins, "A and B take 1-byte elements")
            target = self.a if mem == Memory.A else self.b
            values = raw.reshape(ins.z_count, -1).view(np.int8)
            bank, offset = (ins.sp_bank + e, ins.sp_addr + z) if ins.transpose else (ins.sp_bank + z, ins.sp_addr + e)
            bank, offset = np.broadcast_arrays(bank, offset)
            if bank.max() >= target.shape[0] or offset.max() >= target.shape[1]:
                self._fail(index, ins, f"{mem.name} bank {int(bank.max())} / byte {int(offset.max())} outside "
                                       f"{target.shape[0]} x {target.shape[1]}")
            return _write(target, (bank, offset), values)
        elif ins.transpose:
            self._fail(index, ins, "transpose applies to A and B only")
        elif mem == Memory.ACC:
            if elem not in (1, 4):
                self._fail(index, ins, "ACC takes 1- or 4-byte elements")
            values = raw.reshape(ins.z_count, -1, elem).view("<i1" if elem == 1 else "<i4")[..., 0]
            words, lanes = self._acc_rows(index, ins, ins.sp_addr, ins.z_count, e.size, ins.sp_stride)
            return _write(self.acc, (words, lanes), values)
        else:
            if elem != PARAM_RECORD_BYTES:
                self._fail(index, ins, "PARAM takes 16-byte records")
            record = ins.sp_addr + z * ins.sp_stride + e
            if record.max() >= g.param_records:
                self._fail(index, ins, f"PARAM record {int(record.max())} outside {g.param_records}")
            return _write(self.param, record, raw.reshape(ins.z_count, -1, PARAM_RECORD_BYTES))

    def _store(self, index: int, ins: Instruction) -> None:
        if ins.mem != Memory.ACC or ins.transpose:
            self._fail(index, ins, "STORE reads ACC only")
        elem = ELEMENT_BYTES[ins.elem]
        if elem not in (1, 4):
            self._fail(index, ins, "STORE writes 1- or 4-byte elements")
        addr = self._dram_index(index, ins)
        words, lanes = self._acc_rows(index, ins, ins.sp_addr, ins.z_count, ins.y_count * ins.x_count, ins.sp_stride)
        values = _wrap32(self.acc[words, lanes]).astype("<i4")
        data = values.astype("<i1") if elem == 1 else values          # a 1-byte store keeps the low 8 bits
        return _write(self.dram, addr.reshape(-1), data.view(np.uint8).reshape(-1))

    def _matmul(self, index: int, ins: Instruction) -> None:
        g = self.geometry
        k = ins.k
        if k < 1 or ins.a_addr + k > g.a_depth or ins.b_addr + k > g.b_depth:
            self._fail(index, ins, f"operands {ins.a_addr}+{k} / {ins.b_addr}+{k} outside banks of "
                                   f"{g.a_depth} / {g.b_depth} bytes")
        bias = self._params(index, ins, g.cols)["bias"].astype(np.int32) if ins.bias else None
        result = int_matmul(self.a[:, ins.a_addr:ins.a_addr + k], self.b[:, ins.b_addr:ins.b_addr + k], bias,
                            transpose_b=True, name=f"instruction {index}")
        rows = ins.acc_addr + np.arange(g.rows) * ins.acc_stride
        if rows.max() >= g.acc_words:
            self._fail(index, ins, f"ACC word {int(rows.max())} outside {g.acc_words}")
        if not ins.accumulate:
            return _write(self.acc, rows, _wrap32(result))
        # The array reads the rows it accumulates onto as they drain, not at its start.
        return lambda: _write(self.acc, rows, _wrap32(result + self.acc[rows]))()

    def _vector(self, index: int, ins: Instruction) -> None:
        op, n = ins.opcode, ins.length
        if ins.rows < 1 or n < 1:
            self._fail(index, ins, "rows and length must be at least 1")
        src = self._acc_rows(index, ins, ins.src, ins.rows, n, ins.stride)
        dst = self._acc_rows(index, ins, ins.dst, ins.rows, n, ins.stride)
        x = self.acc[src]                                             # (rows, length) int64
        if op == Opcode.REQUANT:
            p = self._params(index, ins, n)
            y = requantize(_wrap32(x), p["multiplier"], p["shift"], bits=REQUANT_WIDTHS[ins.width])
        elif op == Opcode.ADD:
            p = self._params(index, ins, n)
            b = _low_bits(self.acc[self._acc_rows(index, ins, ins.src_b, ins.rows, n, ins.stride)], 8)
            y = np.empty(x.shape, dtype=np.int8)
            triples = np.stack([p["multiplier"], p["multiplier_b"], p["shift"]], axis=1)
            for m_a, m_b, shift in np.unique(triples, axis=0):        # one int_add per distinct channel constant
                cols = np.all(triples == (m_a, m_b, shift), axis=1)
                y[:, cols] = int_add(_wrap32(x[:, cols]), b[:, cols], int(m_a), int(m_b), int(shift))
        elif op == Opcode.SOFTMAX:
            if n > self.geometry.softmax_max_length:
                self._fail(index, ins, f"rows of {n} exceed the Softmax unit's {self.geometry.softmax_max_length}")
            y = int_softmax(_wrap32(x).astype(np.int32))
        elif op == Opcode.GELU:
            y = int_gelu(_low_bits(x, GELU_INPUT_BITS))
        else:
            if n != self.geometry.layernorm_width:
                self._fail(index, ins, f"length {n} differs from the LayerNorm unit's {self.geometry.layernorm_width}")
            p = self._params(index, ins, n)
            y = int_layernorm(_low_bits(x, 8).astype(np.int8), p["gamma"], p["bias"], p["multiplier"], p["shift"],
                              layernorm_divisors(n))
        return _write(self.acc, dst, np.asarray(y, dtype=np.int64))

    def run_timed(self, instructions: list[Instruction], start: np.ndarray, end: np.ndarray) -> None:
        """Execute as the decoupled modules would under a schedule: every instruction reads its
        operands in its start cycle and writes its results in its completion cycle.

        With correct dependency tokens the result equals ``run``'s; an instruction that
        overtakes one it depends on reads stale data or is overwritten, and the outputs differ.
        """
        events = sorted([(int(end[i]), 0, i) for i in range(len(start))] +
                        [(int(start[i]), 1, i) for i in range(len(start))])
        pending = {}
        for _, phase, i in events:          # in a cycle, completions (and their tokens) come first
            if phase:
                pending[i] = self.read(i, instructions[i])
            else:
                pending.pop(i)()

    def run(self, instructions: Iterable[Instruction]) -> int:
        """Execute until END; returns the number of instructions executed."""
        for index, ins in enumerate(instructions):
            self.step(index, ins)
            if ins.opcode == Opcode.END:
                return index + 1
        raise IntVitError("instruction stream ends without END")


def execute(compiled: CompiledProgram, x: np.ndarray, *, progress=None, timing=None) -> np.ndarray:
    """Run a compiled program on its batch of INT8 images ``(B, C, H, W)`` (or one ``(C, H, W)``); INT32
    logits ``(B, classes)``.

    Parameters
    ----------
    compiled : CompiledProgram
    x : int8 array from ``IntProgram.quantize_input``
    progress : optional callable wrapping the instruction iterator (e.g. tqdm)
    timing : optional (start, end) cycle arrays, e.g. from ``sim.schedule.schedule``
        Execute in that overlapped order (``Machine.run_timed``) instead of program order:
        the logits then prove the dependency tokens order every access that matters.
    """
    machine = load_machine(compiled, x)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)        # tiles are small: starting the parallel kernels' threads costs more
    try:
        if timing is not None:
            machine.run_timed(compiled.instructions, *timing)
        else:
            machine.run(progress(compiled.instructions) if progress else compiled.instructions)
    finally:
        numba.set_num_threads(threads)
    return read_output(compiled, machine.dram)


def load_machine(compiled: CompiledProgram, x: np.ndarray) -> Machine:
    """A machine whose external memory holds the image and the input ``x`` (the program's batch of images)."""
    x = np.asarray(x)
    addr, size = compiled.input_region()
    batch = compiled.manifest.get("batch", 1)
    if x.dtype != np.int8 or x.size != size:
        raise IntVitError(f"the compiled program takes {batch} int8 image{'s' if batch > 1 else ''} of {size // batch} "
                          f"values each, got {x.dtype} {x.shape}")
    machine = Machine(compiled.geometry, compiled.memory_bytes)
    machine.dram[:compiled.image.size] = compiled.image
    machine.dram[addr:addr + size] = compiled.memory.input_bytes(x)
    return machine


def read_output(compiled: CompiledProgram, dram: np.ndarray) -> np.ndarray:
    """The logits (INT32, or INT8 for an INT8 output) from an external-memory array."""
    out = compiled.output_place()
    rows, cols = out.shape
    index = out.addr + np.arange(rows)[:, None] * out.strides[0] + np.arange(cols)[None, :] * out.elem
    data = dram[index[..., None] + np.arange(out.elem)]
    return data.view("<i4" if out.elem == 4 else "<i1")[..., 0].astype(np.int32 if out.elem == 4 else np.int8)
