"""The bench runner: latency records kept true, missing tools fail the RTL tests."""

from __future__ import annotations

import json

import pytest

from runner import SKIP_ENV, UPDATE_CYCLES_ENV, check_cycles, load_cycles, require


def test_check_cycles_writes_then_enforces_records(tmp_path, monkeypatch):
    record = {"lanes": 4, "elements": 9, "cycles": 6}
    with pytest.raises(AssertionError, match=r"no committed record .* rerun with INTVIT_UPDATE_CYCLES=1"):
        check_cycles("unit", [record], tmp_path)
    monkeypatch.setenv(UPDATE_CYCLES_ENV, "1")
    check_cycles("unit", [record, {"lanes": 1, "elements": 9, "cycles": 12}], tmp_path)
    assert json.loads((tmp_path / "unit.json").read_text())[0] == {"lanes": 1, "elements": 9, "cycles": 12}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["unit.json"]
    monkeypatch.delenv(UPDATE_CYCLES_ENV)
    check_cycles("unit", [record], tmp_path)
    with pytest.raises(AssertionError, match=r"measured 7 cycles, committed 6"):
        check_cycles("unit", [{**record, "cycles": 7}], tmp_path)
    assert len(load_cycles("unit", tmp_path)) == 2


def test_a_missing_tool_fails_unless_skipped_on_purpose(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(SKIP_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"^iverilog, vvp not on PATH: .* set INTVIT_SKIP_RTL=1"):
        require("iverilog", "vvp")
    monkeypatch.setenv(SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match=r"^verilator not on PATH"):
        require("verilator")
