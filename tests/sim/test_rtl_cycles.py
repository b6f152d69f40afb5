"""The simulator's cycle models against the cycles the RTL benches measured.

Every ``tests/rtl/cycles/<unit>.json`` (written and kept true by the cocotb benches) is a list
of flat records: the unit's parameters and the measured ``cycles``. Each unit's model here
must land within ``TOLERANCE`` of every record. A new unit's records fail until its model is
added to ``MODELS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intvit.quant.errors import IntVitError
from intvit.sim.gelu import gelu_cycles
from intvit.sim.layernorm import layernorm_cycles
from intvit.sim.matmul import compute_cycles
from intvit.sim.requant import requant_cycles
from intvit.sim.softmax import softmax_cycles

CYCLES_DIR = Path(__file__).resolve().parents[1] / "rtl" / "cycles"
TOLERANCE = 0.05
REQUIRED_UNITS = ("matmul", "requant")

# unit -> model of one record; the MatMul array is output-stationary, in the RTL's native counting.
MODELS = {
    "matmul": lambda r: compute_cycles(r["m"], r["k"], r["n"], r["rows"], r["cols"], "os", "native", r["latency"]),
    "requant": lambda r: requant_cycles(r["lanes"], r["latency"], r["elements"]),
    "gelu": lambda r: gelu_cycles(r["lanes"], r["latency"], r["elements"]),
    "softmax": lambda r: softmax_cycles(r["lanes"], r["latency"], r["rows"], r["length"]),
    "layernorm": lambda r: layernorm_cycles(r["lanes"], r["latency"], r["rows"], r["width"]),
}


def record_files() -> list[Path]:
    return sorted(CYCLES_DIR.glob("*.json"))


def test_required_records_exist():
    assert {path.stem for path in record_files()} >= set(REQUIRED_UNITS)


@pytest.mark.parametrize("path", record_files(), ids=lambda path: path.stem)
def test_model_within_tolerance_of_rtl(path):
    assert path.stem in MODELS, f"{path.name}: no cycle model registered for unit {path.stem!r}"
    records = json.loads(path.read_text())
    assert records, f"{path.name} holds no records"
    off = []
    for record in records:
        modelled = MODELS[path.stem](record)
        if abs(modelled - record["cycles"]) > TOLERANCE * record["cycles"]:
            off.append(f"{record}: model {modelled}")
    assert not off, f"{path.name}: model off by more than {TOLERANCE:.0%}:\n" + "\n".join(off)


def test_requant_model_is_exact():
    # The Requantiser's model is a closed form of the RTL, so it must match to the cycle.
    for record in json.loads((CYCLES_DIR / "requant.json").read_text()):
        assert requant_cycles(record["lanes"], record["latency"], record["elements"]) == record["cycles"]


@pytest.mark.parametrize("lanes, latency, elements, expected", [
    (4, 3, 1, 4), (4, 3, 8, 5), (4, 3, 9, 6), (1, 0, 7, 7), (8, 3, 0, 0),
])
def test_requant_hand_cases(lanes, latency, elements, expected):
    assert requant_cycles(lanes, latency, elements) == expected


@pytest.mark.parametrize("args, message", [
    ((0, 3, 5), r"^requant\.lanes must be a positive integer, not 0$"),
    ((4, -1, 5), r"^requant\.latency must be a non-negative integer, not -1$"),
    ((4, 3, 2.5), r"^requant\.elements must be a non-negative integer, not 2\.5$"),
])
def test_requant_rejects_bad_arguments(args, message):
    with pytest.raises(IntVitError, match=message):
        requant_cycles(*args)
