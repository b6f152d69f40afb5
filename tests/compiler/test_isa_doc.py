"""docs/isa.md documents the instruction set exactly as ``compiler.isa`` encodes it.

Every field table of the page (common bits, each format, the parameter record) must list the
same fields at the same bits as ``compiler.isa``; the opcode table the same opcodes, queues and
formats; the enumerations and controller constants their values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from intvit.compiler import isa
from intvit.compiler.isa import (
    COMMON_FIELDS, ELEMENT_BYTES, FIELDS, FORMAT_OF, PARAM_FIELDS, QUEUE_OF, REQUANT_WIDTHS, Format, Memory, Opcode,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "isa.md"
FIELD_ROW = re.compile(r"^\| `(\w+)` \| (\d+)(?:-(\d+))? \|", re.M)


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading line) up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)(?=^#)", text, re.S | re.M)
    assert match, f"docs/isa.md has no section {heading!r}"
    return match.group(1)


def documented_fields(text: str) -> dict[str, tuple[int, int]]:
    """``name -> (offset, width)`` of every field row of the tables in ``text``."""
    return {name: (int(low), int(high or low) - int(low) + 1) for name, low, high in FIELD_ROW.findall(text)}


def encoded(fields) -> dict[str, tuple[int, int]]:
    return {f.name: (f.offset, f.width) for f in fields}


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.mark.parametrize("heading, fields", [
    ("Instruction word", COMMON_FIELDS),
    ("DMA format (LOAD, STORE)", FIELDS[Format.DMA][len(COMMON_FIELDS):]),
    ("MATMUL format", FIELDS[Format.MATMUL][len(COMMON_FIELDS):]),
    ("VECTOR format (REQUANT, ADD, SOFTMAX, GELU, LAYERNORM)", FIELDS[Format.VECTOR][len(COMMON_FIELDS):]),
    ("Parameter record (128 bits, 16 bytes in external memory)", PARAM_FIELDS),
])
def test_every_field_at_its_bits(doc, heading, fields):
    assert documented_fields(section(doc, heading)) == encoded(fields)


def test_control_format_has_only_the_common_bits(doc):
    assert FIELDS[Format.CONTROL] == COMMON_FIELDS
    assert "Common bits only" in section(doc, "CONTROL format (SYNC, END)")


def test_every_opcode_with_its_queue_and_format(doc):
    rows = re.findall(r"^\| (\d+) \| ([A-Z]+) \| (\w+) \| ([A-Z]+) \|$", section(doc, "Instruction word"), re.M)
    assert {int(code): (name, queue, form) for code, name, queue, form in rows} == {
        op.value: (op.name, QUEUE_OF[op].name.lower(), FORMAT_OF[op].name) for op in Opcode}
    illegal = sorted(set(range(1 << COMMON_FIELDS[0].width)) - {op.value for op in Opcode})
    assert illegal == [0, 10, 11, 12, 13, 14] and "0, 10-14 are illegal" in doc


def test_enumerations_and_constants(doc):
    for memory in Memory:
        assert f"| **{memory.name}** | {memory.value} |" in doc
    assert "scratchpad (A 0, B 1, ACC 2, PARAM 3)" in doc
    assert ", ".join(f"{code} = {size} byte{'s' if size > 1 else ''}" for code, size in enumerate(ELEMENT_BYTES)) in doc
    assert ", ".join(f"{code} = {bits}" for code, bits in enumerate(REQUANT_WIDTHS)) + " bits" in doc
    assert f"{isa.INSTRUCTION_BITS} bits ({isa.INSTRUCTION_BYTES} bytes)" in doc
    assert f"## Parameter record ({8 * isa.PARAM_RECORD_BYTES} bits, {isa.PARAM_RECORD_BYTES} bytes" in doc
    assert f"ISA version {isa.ISA_VERSION})" in doc.splitlines()[0]
    for text in (f"`FETCH_BURST_INSTRUCTIONS` ({isa.FETCH_BURST_INSTRUCTIONS})",
                 f"`FETCH_QUEUE_DEPTH` ({isa.FETCH_QUEUE_DEPTH})", f"`QUEUE_DEPTH` = {isa.QUEUE_DEPTH}",
                 f"`TOKEN_BITS` ({isa.TOKEN_BITS})", "`ISSUE_CYCLES`", "`CONTROL_CYCLES`"):
        assert text in doc, text
    assert isa.ISSUE_CYCLES == isa.CONTROL_CYCLES == 1 and "The leading `1` is `ISSUE_CYCLES`" in doc
    assert isa.AXI_BOUNDARY_BYTES == 4096 and "4 KiB boundary" in doc
