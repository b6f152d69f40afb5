"""Verilog generation and Verilator lint: the whole accelerator, and its units one by one.

``system_verilog`` is the complete accelerator (``rtl.system.System``: controller, load and
store modules, compute units, scratchpad memories) as one self-contained file whose top is
``SYSTEM_NAME``, ports named as ``rtl.top.flat_ports`` names them; it is the text that
``intvit verilog`` ships and that ``harness.runner.build`` compiles for ``intvit rtl-run``.
``system_ports`` lists its ports for a manifest.

``generate`` writes the units side by side instead (``intvit verilog --units``): one file per
unit and one for ``rtl.top.Accelerator`` (``intvit_top.v``), plus ``manifest.json`` with the
parameters, each unit's latency and its ports. ``lint`` runs ``verilator --lint-only -Wall``
with the waivers listed in ``LINT_WAIVERS``, each one a warning class that Amaranth's
generated code raises by construction. Synthesis (generic gates, NanGate 45 nm, ECP5) is
``intvit.rtl.synth``.
"""

import gc
import json
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from amaranth import __version__ as amaranth_version
from amaranth.hdl import UnusedElaboratable
from amaranth._toolchain.yosys import find_yosys
from amaranth.back import rtlil
from amaranth.lib import wiring

from intvit.quant.atomic import atomic_folder, check_output_folder
from intvit.quant.errors import IntVitError
from intvit.rtl.pe import ProcessingElement
from intvit.rtl.system import System, SystemParams
from intvit.rtl.top import Accelerator, TopParams, flat_ports, unit_builders

__all__ = ["TOP_NAME", "SYSTEM_NAME", "LINT_WAIVERS", "designs", "to_verilog", "system_params", "system_verilog",
           "system_ports", "check_size", "generate", "lint"]

TOP_NAME = "intvit_top"
SYSTEM_NAME = "intvit_system"
MANIFEST_NAME = "manifest.json"
# Size guard (check_size): elaboration time and memory grow with these.
MAX_PES = 64 * 64
MAX_LANES = 64
MAX_ROW = 4096
LINT_TIMEOUT_S = 300

# Each waiver: a warning Amaranth's output raises on correct designs, and why it is harmless.
LINT_WAIVERS = {
    "WIDTH": "Yosys's Verilog backend widens and truncates operands implicitly in generated "
             "expressions (e.g. a 16-bit product added to a 32-bit accumulator); Amaranth "
             "already fixed every width by its own rules, checked bit-exactly by the benches.",
    "UNUSEDSIGNAL": "Struct payload ports are single vectors, so a unit that reads some fields "
                    "(the bias only on a fold's first beat, lanes past a row's width) leaves "
                    "other bits unread; each module of the system keeps the whole 256-bit "
                    "instruction and reads only its format's fields; the AXI inputs rid, bid, "
                    "rresp and bresp are part of the standard port but unread (IDs are always "
                    "0, responses are not checked); Amaranth also keeps named intermediate wires.",
    "DECLFILENAME": "Submodules are emitted into the same file as their parent under "
                    "hierarchical names (intvit_top.matmul.pe_0_0), not one file per module.",
    "CASEINCOMPLETE": "FSM and Switch statements become casez without a default arm; every "
                      "such always block assigns each target a default value before the "
                      "case, so no latch is inferred.",
}



def designs(params: TopParams) -> dict[str, Callable[[], object]]:
    """Builders of fresh components keyed by Verilog module name: the units, one PE, the top."""
    units = {f"intvit_{name}": build for name, build in unit_builders(params).items()}
    return {**units, "intvit_pe": ProcessingElement, TOP_NAME: lambda: Accelerator(params)}


def system_params(config, model) -> SystemParams:
    """``SystemParams`` of an accelerator config (``sim.config.AcceleratorConfig``) for a model's shapes.

    The scratchpads as ``compiler.codegen.geometry_for`` sizes them for any program of ``model``
    (a ``quant.config.ViTConfig``: only its token count and width matter), the AXI port from
    ``config.memory``: the parameters ``intvit compile``, ``intvit rtl-run`` and ``intvit
    verilog`` give the accelerator.
    """
    from intvit.compiler.codegen import geometry_for

    return SystemParams.from_geometry(geometry_for(SimpleNamespace(config=model), config), config.memory)


def system_verilog(params: SystemParams) -> str:
    """Verilog of the complete accelerator ``System(params)``, top module ``SYSTEM_NAME``.

    The same text ``harness.runner.build`` writes for ``intvit rtl-run``: ``to_verilog`` with
    the AMBA-style port names of ``rtl.top.flat_ports`` (``dmem_araddr``, ``imem_rdata``).
    """
    design = System(params)
    return to_verilog(design, SYSTEM_NAME, ports=flat_ports(design))


def system_ports(params: SystemParams) -> dict[str, dict]:
    """Every port of ``system_verilog(params)``'s top: name -> ``{"direction", "bits"}``, clock and reset first.

    ``clk`` is the only clock (every register on its rising edge); ``rst`` is a synchronous,
    active-high reset.
    """
    ports = {"clk": {"direction": "input", "bits": 1}, "rst": {"direction": "input", "bits": 1}}
    # Only the signature is read: the instance is never elaborated, which Amaranth would flag.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        design = System(params)
        for path, member, value in design.signature.flatten(design):
            ports["_".join(map(str, path))] = {"direction": "input" if member.flow == wiring.In else "output",
                                               "bits": len(value)}
        del design, value
        gc.collect()
    return ports


def to_verilog(design, name: str, ports=None) -> str:
    """Verilog text of an Amaranth component (or elaboratable + ``ports``) as ``intvit verilog`` ships it.

    Amaranth's ``verilog.convert`` with one step more: the registers' ``init`` attributes are
    dropped, so no ``reg`` is declared with an initial value. Every register of these designs
    is reset synchronously to its ``init`` value, so after ``rst`` the state is the same; before
    it, simulators show X rather than a value the reset would give anyway. The declared
    initial values broke the start-up in Icarus: a register that keeps its initial value
    through reset never changes, so the ``always @*`` block of a combinational output that
    reads only such registers (an FSM's ``ready``) is never evaluated and the output reads X
    (amaranth-lang/amaranth#1629). Without them, reset is an event on every register. It also
    leaves Verilator's PROCASSINIT (procedural assignment to a variable with an initial value)
    nothing to flag.
    """
    text = rtlil.convert(design, name=name, ports=ports, emit_src=False)
    yosys = find_yosys(lambda version: version >= (0, 40))
    # Amaranth's own script (amaranth.back.verilog), plus the attrmap.
    script = [f"read_rtlil <<rtlil\n{text}\nrtlil", "proc -nomux -norom", "memory_collect", "attrmap -remove init",
              "write_verilog -norename"]
    # Yosys warns that not every process can be written; Amaranth emits only ones that can.
    return yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)


def generate(params: TopParams, out_dir: str | Path, progress: Callable | None = None) -> list[Path]:
    """Write ``<module>.v`` for every unit and the top, and ``manifest.json``; return their paths.

    Parameters
    ----------
    params : TopParams
    out_dir : str or Path
        Created if missing; existing files of the same names are replaced, all of them or, if
        anything fails, none.
    progress : callable, optional
        Wraps the iterator of ``(module name, builder)`` pairs (e.g. a tqdm bar): the top of a
        large array takes minutes to elaborate.
    """
    check_size(params)
    out_dir = check_output_folder(out_dir)
    names, modules = [], {}
    # Every file or none: written to a staging folder, moved into out_dir when all are done.
    with atomic_folder(out_dir) as staging:
        items = designs(params).items()
        for name, build in progress(items) if progress else items:
            design = build()
            (staging / f"{name}.v").write_text(to_verilog(design, name))
            names.append(f"{name}.v")
            modules[name] = {"file": f"{name}.v", "latency_cycles": getattr(design, "latency", None),
                             "ports": _ports(design.signature)}
        (staging / MANIFEST_NAME).write_text(json.dumps(
            {"top": TOP_NAME, "params": asdict(params), "amaranth": amaranth_version,
             "lint_waivers": sorted(LINT_WAIVERS), "modules": modules}, indent=1) + "\n")
    return [out_dir / name for name in (*names, MANIFEST_NAME)]


def check_size(params: TopParams) -> None:
    """Refuse parameters whose elaboration would take hours or exhaust memory (limits in the message).

    Amaranth's elaboration time grows with the processing elements: about 80 s for a 32x32 top
    on the development machine, so the 64x64 limit stands for several minutes.
    """
    pes = params.rows * params.cols
    if pes > MAX_PES:
        raise IntVitError(f"a {params.rows}x{params.cols} array has {pes:,} processing elements; "
                          f"the RTL is elaborated for at most {MAX_PES:,} (64x64)")
    for name in ("requant_lanes", "softmax_lanes", "gelu_lanes", "layernorm_lanes"):
        if getattr(params, name) > MAX_LANES:
            raise IntVitError(f"{name} is {getattr(params, name):,}; the RTL is elaborated for at most {MAX_LANES}")
    for name in ("max_length", "width"):
        if getattr(params, name) > MAX_ROW:
            raise IntVitError(f"{name} is {getattr(params, name):,}; the RTL's row buffers hold at most {MAX_ROW:,}")


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
