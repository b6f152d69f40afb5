"""The simulator's cycle models against the cycles the RTL benches measured: equal, to the cycle.

Every ``tests/rtl/cycles/<unit>.json`` (written and kept true by the cocotb benches) is a list
of flat records: the unit's parameters and the measured ``cycles``. Each unit's model here
must give exactly the measured cycles of every record, as the README claims. The models take
their per-row and per-fold latencies from the simulator's own composition of them
(``softmax_latency``, ``layernorm_latency``, ``REQUANT_LATENCY``, ...), never from the
record's ``latency`` field (the RTL's declared constant, which the RTL tests check against
the same measurements). A new unit's records fail until its model is added to ``MODELS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intvit.quant.errors import IntVitError
from intvit.sim.config import AcceleratorConfig, MatMulConfig
from intvit.sim.gelu import GELU_LATENCY, gelu_cycles
from intvit.sim.layernorm import layernorm_cycles, layernorm_latency, layernorm_period, layernorm_stage_cycles
from intvit.sim.matmul import compute_cycles
from intvit.sim.requant import REQUANT_LATENCY, requant_cycles
from intvit.sim.softmax import softmax_cycles, softmax_latency, softmax_period, softmax_stage_cycles

CYCLES_DIR = Path(__file__).resolve().parents[1] / "rtl" / "cycles"
REQUIRED_UNITS = ("matmul", "requant", "gelu", "softmax", "layernorm")
MATMUL_LATENCY = MatMulConfig().latency

# unit -> model of one record; the MatMul array is output-stationary, in the RTL's native counting.
MODELS = {
    "matmul": lambda r: compute_cycles(r["m"], r["k"], r["n"], r["rows"], r["cols"], "os", "native", MATMUL_LATENCY),
    "requant": lambda r: requant_cycles(r["lanes"], REQUANT_LATENCY, r["elements"]),
    "gelu": lambda r: gelu_cycles(r["lanes"], GELU_LATENCY, r["elements"]),
    "softmax": lambda r: softmax_cycles(r["lanes"], softmax_latency(), r["rows"], r["length"]),
    "layernorm": lambda r: layernorm_cycles(r["lanes"], layernorm_latency(), r["rows"], r["width"]),
}


def record_files() -> list[Path]:
    return sorted(CYCLES_DIR.glob("*.json"))


def test_required_records_exist():
    assert {path.stem for path in record_files()} >= set(REQUIRED_UNITS)


@pytest.mark.parametrize("path", record_files(), ids=lambda path: path.stem)
def test_model_equals_rtl(path):
    assert path.stem in MODELS, f"{path.name}: no cycle model registered for unit {path.stem!r}"
    records = json.loads(path.read_text())
    assert records, f"{path.name} holds no records"
    off = [f"{record}: model {MODELS[path.stem](record)}" for record in records
           if MODELS[path.stem](record) != record["cycles"]]
    assert not off, f"{path.name}: model differs from the measured cycles:\n" + "\n".join(off)


def test_default_config_uses_the_predicted_latencies():
    # `intvit simulate` with the default accelerator models the RTL as it is.
    config = AcceleratorConfig()
    assert (config.matmul.latency, config.requant.latency, config.gelu.latency, config.softmax.latency,
            config.layernorm.latency) == (MATMUL_LATENCY, REQUANT_LATENCY, GELU_LATENCY, softmax_latency(),
                                          layernorm_latency())


@pytest.mark.parametrize("call, expected", [
    (lambda: softmax_latency(), 1 + 5 + 1 + 17 + 2),
    (lambda: softmax_latency(recip_bits=20), 1 + 5 + 1 + 12 + 2),
    (lambda: softmax_stage_cycles(25), (25 + 1, 1 + 25 + 5 + 1, 17 + 25 + 2 + 1)),
    (lambda: softmax_period(25), 45),
    (lambda: layernorm_latency(), 6 + 5 * 9 + 1 + 17 + 4),
    (lambda: layernorm_latency(iterations=3, newton_bits=12, recip_bits=31), 6 + 3 * 7 + 1 + 17 + 4),
    (lambda: layernorm_stage_cycles(24), (2 * 24 + 6, 5 * 9 + 2, 17 + 24 + 4 + 1)),
    (lambda: layernorm_period(8), 47),
    (lambda: layernorm_period(24), 2 * 24 + 6),
])
def test_latency_compositions(call, expected):
    assert call() == expected


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
