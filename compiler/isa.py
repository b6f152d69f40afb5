"""The accelerator's instruction set: opcodes, the 256-bit instruction word, its fields, the parameter record.

This module is the single source of truth that the compiler, the functional executor, the
cycle model (``sim.schedule``) and the RTL controller share; ``docs/isa.md`` documents the
same tables in prose. It imports nothing from ``sim`` or ``torch`` so that ``rtl`` may use it.

Every instruction is one little-endian 256-bit word (32 bytes): bit ``i`` of the word is bit
``i % 8`` of byte ``i // 8``. Bits 0-7 are common to all opcodes (opcode and the four
dependency-token flags); the rest depend on the opcode's *format* (``DMA``, ``MATMUL``,
``VECTOR`` or ``CONTROL``). Unused bits must be zero.

The per-channel parameter record (``PARAM_FIELDS``) is one little-endian 128-bit word per
channel; the ``PARAM`` scratchpad holds an array of them (matmul bias, requantiser and
residual multipliers and shifts, LayerNorm gamma and beta).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from intvit.quant.errors import IntVitError

__all__ = [
    "INSTRUCTION_BITS", "INSTRUCTION_BYTES", "PARAM_RECORD_BYTES", "ISA_VERSION",
    "Opcode", "Queue", "Slot", "Memory", "Format", "Field", "FORMAT_OF", "QUEUE_OF", "SLOT_OF", "FIELDS",
    "COMMON_FIELDS",
    "PARAM_FIELDS", "REQUANT_WIDTHS", "ELEMENT_BYTES",
    "QUEUE_DEPTH", "FETCH_QUEUE_DEPTH", "FETCH_BURST_INSTRUCTIONS", "TOKEN_BITS", "REORDER_DEPTH", "ISSUE_CYCLES",
    "CONTROL_CYCLES", "AXI_BOUNDARY_BYTES",
    "Geometry", "Instruction", "encode", "decode", "encode_program", "decode_program",
    "pack_params", "unpack_params", "dma_rows",
]

ISA_VERSION = 2
INSTRUCTION_BITS = 256
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
PARAM_RECORD_BYTES = 16

# Controller constants (docs/isa.md, "Execution" and "Timing"). Hardware parameters that the
# compiler and the cycle model must agree on with the RTL, so they live here, not in a config.
QUEUE_DEPTH = 16                 # instructions waiting in each of the load, compute and store queues
FETCH_QUEUE_DEPTH = 16           # fetched instructions waiting for dispatch
FETCH_BURST_INSTRUCTIONS = 8     # instructions per fetch burst on the instruction port
TOKEN_BITS = 8                   # width of each dependency-token counter; overflow is an error
REORDER_DEPTH = 32               # compute instructions issued and not yet retired (tokens pushed)
ISSUE_CYCLES = 1                 # decode/set-up cycle every LOAD, STORE and compute instruction pays
CONTROL_CYCLES = 1               # SYNC and END
AXI_BOUNDARY_BYTES = 4096        # an AXI4 burst never crosses a 4 KiB boundary


class Opcode(enum.IntEnum):
    """Bits 0-3 of every instruction. 0 and the unlisted values are illegal (error flag)."""

    LOAD = 1
    STORE = 2
    MATMUL = 3
    REQUANT = 4
    ADD = 5
    SOFTMAX = 6
    GELU = 7
    LAYERNORM = 8
    SYNC = 9
    END = 15


class Queue(enum.IntEnum):
    """The three decoupled modules; tokens flow between neighbours only (load <-> compute <-> store)."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2


class Memory(enum.IntEnum):
    """On-chip scratchpads a LOAD writes or a STORE reads (the ``mem`` field)."""

    A = 0        # MatMul operand A: ``rows`` banks of INT8, bank r feeds array row r
    B = 1        # MatMul operand B: ``cols`` banks of INT8, bank c feeds array column c
    ACC = 2      # accumulator / vector memory: words of ``cols`` INT32 lanes
    PARAM = 3    # per-channel parameter records, 128 bits each


class Slot(enum.IntEnum):
    """The compute module's execution slots: the array and the vector units run side by side."""

    ARRAY = 0     # MATMUL
    VECTOR = 1    # REQUANT, ADD, SOFTMAX, GELU, LAYERNORM (one at a time)
    CONTROL = 2   # SYNC, END: wait for both others


class Format(enum.Enum):
    DMA = "dma"
    MATMUL = "matmul"
    VECTOR = "vector"
    CONTROL = "control"


FORMAT_OF = {
    Opcode.LOAD: Format.DMA, Opcode.STORE: Format.DMA, Opcode.MATMUL: Format.MATMUL,
    Opcode.REQUANT: Format.VECTOR, Opcode.ADD: Format.VECTOR, Opcode.SOFTMAX: Format.VECTOR,
    Opcode.GELU: Format.VECTOR, Opcode.LAYERNORM: Format.VECTOR,
    Opcode.SYNC: Format.CONTROL, Opcode.END: Format.CONTROL,
}
SLOT_OF = {op: Slot.ARRAY if op == Opcode.MATMUL else Slot.CONTROL if op in (Opcode.SYNC, Opcode.END)
           else Slot.VECTOR for op in Opcode if op not in (Opcode.LOAD, Opcode.STORE)}
QUEUE_OF = {op: Queue.LOAD if op == Opcode.LOAD else Queue.STORE if op == Opcode.STORE else Queue.COMPUTE
            for op in Opcode}
# REQUANT's ``width`` field picks the output width, as rtl.requant.PROGRAM_WIDTHS orders them.
REQUANT_WIDTHS = (8, 17, 32)
# DMA ``elem`` field: bytes per element in external memory.
ELEMENT_BYTES = (1, 4, 16)


@dataclass(frozen=True)
class Field:
    """One bit field of an instruction word or parameter record: bits ``[offset, offset + width)``."""

    name: str
    offset: int
    width: int
    signed: bool = False
    doc: str = ""

    @property
    def limit(self) -> tuple[int, int]:
        """Inclusive range of values the field holds."""
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


COMMON_FIELDS = (
    Field("opcode", 0, 4, doc="Opcode"),
    Field("pop_prev", 4, 1, doc="wait for and take a token from the previous queue (compute: load; store: compute)"),
    Field("pop_next", 5, 1, doc="wait for and take a token from the next queue (load: compute; compute: store)"),
    Field("push_prev", 6, 1, doc="give a token to the previous queue when done"),
    Field("push_next", 7, 1, doc="give a token to the next queue when done"),
)

FIELDS: dict[Format, tuple[Field, ...]] = {
    Format.DMA: COMMON_FIELDS + (
        Field("mem", 8, 2, doc="scratchpad: 0 A, 1 B, 2 ACC, 3 PARAM (Memory)"),
        Field("transpose", 10, 1, doc="A/B only: element (z, e) goes to bank sp_bank + e, offset sp_addr + z"),
        Field("elem", 11, 2, doc="element size in external memory: 0 1 byte, 1 4 bytes, 2 16 bytes"),
        Field("dram_addr", 16, 32, doc="byte address of element (0, 0, 0), relative to DATA_BASE"),
        Field("x_count", 48, 16, doc="elements per contiguous row (>= 1)"),
        Field("y_count", 64, 16, doc="rows per plane (>= 1)"),
        Field("z_count", 80, 16, doc="planes (>= 1)"),
        Field("y_stride", 96, 32, doc="bytes between rows"),
        Field("z_stride", 128, 32, doc="bytes between planes"),
        Field("sp_addr", 160, 24, doc="scratchpad offset: bank byte offset (A/B), word (ACC), record (PARAM)"),
        Field("sp_bank", 184, 16, doc="A/B: first bank"),
        Field("sp_stride", 200, 24, doc="ACC: words between planes; PARAM: records between planes"),
    ),
    Format.MATMUL: COMMON_FIELDS + (
        Field("accumulate", 8, 1, doc="1: ACC[row] += result; 0: ACC[row] = result"),
        Field("bias", 9, 1, doc="1: column c starts at PARAM[param_addr + c].bias; 0: at zero"),
        Field("overlap", 10, 1, doc="1: may start while the vector unit still runs the instructions before it"),
        Field("a_addr", 16, 24, doc="byte offset in every A bank of beat 0"),
        Field("b_addr", 40, 24, doc="byte offset in every B bank of beat 0"),
        Field("k", 64, 16, doc="beats (inner dimension, >= 1)"),
        Field("acc_addr", 80, 24, doc="ACC word of result row 0"),
        Field("acc_stride", 104, 24, doc="ACC words between result rows"),
        Field("param_addr", 128, 24, doc="PARAM record of column 0's bias"),
    ),
    Format.VECTOR: COMMON_FIELDS + (
        Field("width", 8, 2, doc="REQUANT: output width 0 -> 8, 1 -> 17, 2 -> 32 bits"),
        Field("overlap", 10, 1, doc="1: may start while the MatMul array still runs the instructions before it"),
        Field("src", 16, 24, doc="ACC word where row 0 of the (first) operand starts"),
        Field("src_b", 40, 24, doc="ADD: ACC word where row 0 of the second operand starts"),
        Field("dst", 64, 24, doc="ACC word where row 0 of the result starts"),
        Field("rows", 88, 16, doc="rows (>= 1)"),
        Field("length", 104, 16, doc="elements per row (>= 1); a row fills ceil(length / cols) words"),
        Field("stride", 120, 24, doc="ACC words between rows, the same for src, src_b and dst"),
        Field("param_addr", 144, 24, doc="PARAM record of element 0 of every row (channel j: param_addr + j)"),
    ),
    Format.CONTROL: COMMON_FIELDS,
}

PARAM_FIELDS = (
    Field("bias", 0, 32, signed=True, doc="MATMUL bias; LAYERNORM beta"),
    Field("multiplier", 32, 31, doc="REQUANT/LAYERNORM output multiplier; ADD m_a"),
    Field("shift", 64, 6, doc="REQUANT/ADD/LAYERNORM output shift (1..62)"),
    Field("gamma", 72, 8, signed=True, doc="LAYERNORM gamma"),
    Field("multiplier_b", 80, 31, doc="ADD m_b"),
)


@dataclass(frozen=True)
class Geometry:
    """The scratchpads and units as the compiler sees them (derived from the accelerator config).

    Parameters
    ----------
    rows, cols : int
        MatMul array R x C: A has ``rows`` banks, B ``cols`` banks, an ACC word ``cols`` lanes.
    a_depth, b_depth : int
        Bytes per A bank and per B bank.
    acc_words : int
        Words of ``cols`` INT32 lanes in ACC.
    param_records : int
        128-bit records in PARAM.
    lanes : Mapping of unit name -> int
        Values per beat of ``requant``, ``softmax``, ``gelu``, ``layernorm``; each divides ``cols``.
    softmax_max_length, layernorm_width : int
        Elaboration parameters of the Softmax (longest row) and LayerNorm (row width) units.
    """

    rows: int
    cols: int
    a_depth: int
    b_depth: int
    acc_words: int
    param_records: int
    lanes: Mapping[str, int] = field(default_factory=lambda: {"requant": 8, "softmax": 8, "gelu": 8, "layernorm": 8})
    softmax_max_length: int = 256
    layernorm_width: int = 192

    def __post_init__(self):
        for name in ("rows", "cols", "a_depth", "b_depth", "acc_words", "param_records",
                     "softmax_max_length", "layernorm_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IntVitError(f"{name} must be a positive integer, not {value!r}")
        for unit, lanes in self.lanes.items():
            if not isinstance(lanes, int) or lanes < 1 or self.cols % lanes:
                raise IntVitError(f"{unit}.lanes must be a positive divisor of matmul.cols ({self.cols}), not {lanes!r}")

    def banks(self, memory: Memory) -> int:
        return {Memory.A: self.rows, Memory.B: self.cols}.get(memory, 1)

    def depth(self, memory: Memory) -> int:
        """Addressable units of a scratchpad: bytes per bank (A, B), words (ACC) or records (PARAM)."""
        return {Memory.A: self.a_depth, Memory.B: self.b_depth, Memory.ACC: self.acc_words,
                Memory.PARAM: self.param_records}[memory]


class Instruction:
    """One decoded instruction: an opcode and the values of its format's fields (others are 0).

    ``Instruction(Opcode.LOAD, mem=Memory.A, dram_addr=64, ...)``; fields read as attributes.
    Values are checked against the field widths when the instruction is built.
    """

    __slots__ = ("opcode", "fields")

    def __init__(self, opcode: Opcode, **values: int):
        try:
            opcode = Opcode(opcode)
        except ValueError:
            raise IntVitError(f"unknown opcode {opcode!r}") from None
        layout = {f.name: f for f in FIELDS[FORMAT_OF[opcode]]}
        fields = {}
        for name, f in layout.items():
            if name == "opcode":
                continue
            value = int(values.pop(name, 0))
            low, high = f.limit
            if not low <= value <= high:
                raise IntVitError(f"{opcode.name}.{name} must be in [{low}, {high}], not {value}")
            fields[name] = value
        if values:
            raise IntVitError(f"{opcode.name} has no field {next(iter(values))!r}")
        object.__setattr__(self, "opcode", opcode)
        object.__setattr__(self, "fields", fields)

    def __getattr__(self, name: str) -> int:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Instruction is immutable; use replace()")

    def __reduce__(self):
        # Pickle through the constructor: the default path sets slots with setattr, which
        # the immutability forbids, and cluster workers receive instructions pickled.
        return _build_instruction, (self.opcode, self.fields)

    def replace(self, **values: int) -> Instruction:
        return Instruction(self.opcode, **{**self.fields, **values})

    @property
    def queue(self) -> Queue:
        return QUEUE_OF[self.opcode]

    def __eq__(self, other) -> bool:
        return isinstance(other, Instruction) and (self.opcode, self.fields) == (other.opcode, other.fields)

    def __hash__(self) -> int:
        return hash((self.opcode, tuple(self.fields.items())))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v}" for k, v in self.fields.items() if v)
        return f"{self.opcode.name}({body})"


def _build_instruction(opcode: Opcode, fields: dict[str, int]) -> Instruction:
    return Instruction(opcode, **fields)


def encode(instruction: Instruction) -> bytes:
    """The 32-byte little-endian word of one instruction."""
    word = int(instruction.opcode)
    for f in FIELDS[FORMAT_OF[instruction.opcode]][1:]:
        word |= (instruction.fields[f.name] & ((1 << f.width) - 1)) << f.offset
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(data: bytes, index: int = 0) -> Instruction:
    """The instruction of one 32-byte word; an illegal opcode or set reserved bits raise ``IntVitError``.

    ``index`` only names the instruction in the error message.
    """
    if len(data) != INSTRUCTION_BYTES:
        raise IntVitError(f"instruction {index}: {len(data)} bytes, not {INSTRUCTION_BYTES}")
    word = int.from_bytes(data, "little")
    try:
        opcode = Opcode(word & 0xF)
    except ValueError:
        raise IntVitError(f"instruction {index}: illegal opcode {word & 0xF}") from None
    values, used = {}, 0
    for f in FIELDS[FORMAT_OF[opcode]]:
        mask = (1 << f.width) - 1
        used |= mask << f.offset
        raw = (word >> f.offset) & mask
        if f.signed and raw >> (f.width - 1):
            raw -= 1 << f.width
        values[f.name] = raw
    if word & ~used:
        raise IntVitError(f"instruction {index}: {opcode.name} has reserved bits set ({word & ~used:#x})")
    del values["opcode"]
    return Instruction(opcode, **values)


def encode_program(instructions: Iterable[Instruction]) -> bytes:
    """The binary instruction stream: the words back to back."""
    return b"".join(encode(i) for i in instructions)


def decode_program(data: bytes) -> list[Instruction]:
    """Every instruction of a binary stream written by ``encode_program``."""
    if len(data) % INSTRUCTION_BYTES:
        raise IntVitError(f"instruction stream of {len(data)} bytes is not a multiple of {INSTRUCTION_BYTES}")
    return [decode(data[i:i + INSTRUCTION_BYTES], i // INSTRUCTION_BYTES) for i in range(0, len(data), INSTRUCTION_BYTES)]


def pack_params(count: int, **columns) -> np.ndarray:
    """``count`` parameter records as a ``(count, 16)`` uint8 array (little-endian 128-bit words).

    Keyword arguments are the ``PARAM_FIELDS`` names, each an integer or an array of ``count``;
    missing fields are zero. Values outside a field's range raise ``IntVitError``.
    """
    words = np.zeros((count, 2), dtype=np.uint64)        # low and high 64 bits
    layout = {f.name: f for f in PARAM_FIELDS}
    for name, values in columns.items():
        if name not in layout:
            raise IntVitError(f"parameter record has no field {name!r}")
        f = layout[name]
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), (count,))
        low, high = f.limit
        if values.size and (values.min() < low or values.max() > high):
            raise IntVitError(f"parameter {name} must be in [{low}, {high}], got [{values.min()}, {values.max()}]")
        raw = values.astype(np.uint64) & np.uint64((1 << f.width) - 1)
        half, offset = divmod(f.offset, 64)
        if offset + f.width > 64:
            raise AssertionError(f"{name} crosses a 64-bit half")   # the record layout keeps fields within halves
        words[:, half] |= raw << np.uint64(offset)
    return words.astype("<u8").view(np.uint8).reshape(count, PARAM_RECORD_BYTES)


def unpack_params(records: np.ndarray) -> dict[str, np.ndarray]:
    """The fields of ``(n, 16)`` uint8 records as int64 arrays, by ``PARAM_FIELDS`` name."""
    words = np.ascontiguousarray(records, dtype=np.uint8).reshape(-1, PARAM_RECORD_BYTES).view("<u8")
    out = {}
    for f in PARAM_FIELDS:
        half, offset = divmod(f.offset, 64)
        raw = ((words[:, half] >> np.uint64(offset)) & np.uint64((1 << f.width) - 1)).astype(np.int64)
        if f.signed:
            raw = np.where(raw >> (f.width - 1) & 1, raw - (1 << f.width), raw)
        out[f.name] = raw
    return out


def dma_rows(instruction: Instruction) -> Iterator[tuple[int, int, int, int]]:
    """The contiguous rows of a LOAD or STORE in transfer order: ``(z, y, dram_addr, bytes)``.

    Element ``(z, y, x)`` sits at ``dram_addr + z * z_stride + y * y_stride + x * elem_bytes``;
    rows go ``z`` outer, ``y`` inner, each ``x_count * elem_bytes`` contiguous bytes.
    """
    i = instruction
    size = i.x_count * ELEMENT_BYTES[i.elem]
    for z in range(i.z_count):
        for y in range(i.y_count):
            yield z, y, i.dram_addr + z * i.z_stride + y * i.y_stride, size
