"""compiler.isa: the field tables, encode/decode, parameter records and DMA address order."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from intvit.compiler.isa import (
    FIELDS, FORMAT_OF, INSTRUCTION_BITS, INSTRUCTION_BYTES, PARAM_FIELDS, PARAM_RECORD_BYTES, Geometry, Instruction,
    Opcode, decode, decode_program, dma_rows, encode, encode_program, pack_params, unpack_params,
)
from intvit.quant.errors import IntVitError


@pytest.mark.parametrize("fmt", list(FIELDS))
def test_fields_tile_the_word_without_overlap(fmt):
    used = 0
    for f in FIELDS[fmt]:
        mask = ((1 << f.width) - 1) << f.offset
        assert f.width > 0 and f.offset + f.width <= INSTRUCTION_BITS, f.name
        assert not used & mask, f"{fmt}: {f.name} overlaps"
        used |= mask


def test_param_fields_fit_the_record_and_its_halves():
    used = 0
    for f in PARAM_FIELDS:
        mask = ((1 << f.width) - 1) << f.offset
        assert not used & mask and f.offset + f.width <= PARAM_RECORD_BYTES * 8
        assert f.offset // 64 == (f.offset + f.width - 1) // 64, f.name
        used |= mask


def random_instruction(rng, opcode):
    values = {}
    for f in FIELDS[FORMAT_OF[opcode]][1:]:
        low, high = f.limit
        values[f.name] = int(rng.choice([low, high, int(rng.integers(low, high, endpoint=True))]))
    return Instruction(opcode, **values)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    program = [random_instruction(rng, op) for _ in range(300) for op in Opcode]
    data = encode_program(program)
    assert len(data) == len(program) * INSTRUCTION_BYTES
    assert decode_program(data) == program
    assert all(decode(encode(i)) == i for i in program[:50])


def test_instructions_pickle_and_copy():
    # Cluster workers receive instructions pickled; a round trip must give the same instruction.
    rng = np.random.default_rng(1)
    program = [random_instruction(rng, op) for op in Opcode]
    assert pickle.loads(pickle.dumps(program)) == program
    assert copy.deepcopy(program) == program


def test_field_positions_are_little_endian():
    word = int.from_bytes(encode(Instruction(Opcode.LOAD, dram_addr=0x12345678, push_next=1)), "little")
    assert word & 0xF == Opcode.LOAD and word >> 7 & 1 == 1
    assert (word >> 16) & 0xFFFFFFFF == 0x12345678


def test_decode_rejects_bad_words():
    with pytest.raises(IntVitError, match=r"^instruction 3: illegal opcode 0$"):
        decode(bytes(INSTRUCTION_BYTES), 3)
    with pytest.raises(IntVitError, match=r"^instruction 0: illegal opcode 12$"):
        decode(bytes([12]) + bytes(31))
    reserved = bytearray(encode(Instruction(Opcode.SYNC)))
    reserved[31] = 1
    with pytest.raises(IntVitError, match=r"^instruction 0: SYNC has reserved bits set"):
        decode(bytes(reserved))
    with pytest.raises(IntVitError, match="is not a multiple of 32"):
        decode_program(bytes(33))


def test_instruction_checks_fields():
    with pytest.raises(IntVitError, match=r"^MATMUL.k must be in \[0, 65535\], not 65536$"):
        Instruction(Opcode.MATMUL, k=65536)
    with pytest.raises(IntVitError, match=r"^END has no field 'k'$"):
        Instruction(Opcode.END, k=1)
    with pytest.raises(AttributeError):
        Instruction(Opcode.END).k = 1


def test_param_records_round_trip():
    rng = np.random.default_rng(1)
    n = 2000
    values = {"bias": rng.integers(-2**31, 2**31, n), "multiplier": rng.integers(0, 2**31, n),
              "shift": rng.integers(0, 64, n), "gamma": rng.integers(-128, 128, n),
              "multiplier_b": rng.integers(0, 2**31, n)}
    values["bias"][:2] = (-2**31, 2**31 - 1)
    records = pack_params(n, **values)
    assert records.shape == (n, PARAM_RECORD_BYTES) and records.dtype == np.uint8
    for name, column in unpack_params(records).items():
        np.testing.assert_array_equal(column, values[name], err_msg=name)
    # The bias is the record's first four bytes, little-endian.
    assert records[0, :4].tobytes() == (-2**31).to_bytes(4, "little", signed=True)


def test_param_records_reject_out_of_range():
    with pytest.raises(IntVitError, match=r"^parameter shift must be in \[0, 63\], got \[0, 64\]$"):
        pack_params(2, shift=[0, 64])
    with pytest.raises(IntVitError, match="has no field 'beta'"):
        pack_params(1, beta=0)


def test_dma_rows_order():
    ins = Instruction(Opcode.LOAD, elem=1, dram_addr=100, x_count=3, y_count=2, z_count=2, y_stride=40,
                      z_stride=1000)
    assert list(dma_rows(ins)) == [(0, 0, 100, 12), (0, 1, 140, 12), (1, 0, 1100, 12), (1, 1, 1140, 12)]


def test_geometry_checks_lanes():
    with pytest.raises(IntVitError, match=r"^gelu.lanes must be a positive divisor of matmul.cols \(16\), not 6$"):
        Geometry(16, 16, 64, 64, 64, 64, lanes={"gelu": 6})
