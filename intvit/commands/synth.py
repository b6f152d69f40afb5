"""``intvit synth``: what the complete accelerator costs, from real tools.

The design synthesised is ``rtl.system.System`` (controller, load/store AXI masters, scratchpads,
compute with the array and the units) for an accelerator config and a model's row lengths,
the same parameters ``intvit compile`` gives it (``rtl.verilog.system_params``). Three targets (``rtl.synth``):

* ``nangate45``: area in µm² per unit and in total on the NanGate 45 nm cells, each distinct
  module synthesised once and counted per instance, the scratchpads from the SRAM model of
  ``sim.energy``; also the per-element energies and per-lane leakage that ``[energy]`` takes;
* ``generic``: the same composition onto Yosys's generic gates (cell and flip-flop counts);
* ``ecp5``: LUTs, flip-flops, DSPs, block RAMs and post-route Fmax on an LFE5U-85F, or one line
  saying which resource the design needs more of than the device has.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time

from intvit.commands.common import check_output_file, progress, write_json
from intvit.commands.verilog import add_top_arguments, top_params
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.sim.config import load_config
from intvit.sim.energy import ELEMENT_UNITS, derive_unit_costs, sram_area_um2
from intvit.sim.report import format_table

__all__ = ["register", "run", "scratchpad_bits", "composed_report", "UNITS"]

TARGETS = ("generic", "nangate45", "ecp5")
TOP_CELL_TYPES = 4
# The units reported: name -> the System's instances (dotted paths) whose cells it sums. "glue"
# entries are a module's own cells (its children reported apart; the compute module's MATMUL place
# FIFO with it). The ACC lanes (rtl.multiport) are SRAM macros with no cells of their own.
UNITS = {
    "array": ("compute.array",), "requant": ("compute.requant",), "softmax": ("compute.softmax",),
    "gelu": ("compute.gelu",), "layernorm": ("compute.layernorm",), "controller": ("controller",),
    "loadstore": ("load", "store"), "compute_glue": ("compute", "compute.places"), "system_glue": ("",),
}
GLUE = {"compute_glue", "system_glue"}
SUMMED = ("area_um2", "leakage_nw", "cells", "flipflops")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="area (NanGate 45 nm), FPGA resources and Fmax (ECP5), or generic gate counts of the accelerator",
        description="Elaborate the complete accelerator (rtl.system.System) with an accelerator config and a "
        "model's row lengths and synthesise it: --target nangate45 maps every distinct module onto the "
        "NanGate 45 nm cells and composes the area per unit and in total (scratchpads from the SRAM model); "
        "--target generic does the same onto Yosys's generic gates; --target ecp5 places and routes it on an "
        "LFE5U-85F for LUT/FF/DSP/BRAM counts and Fmax.",
    )
    add_top_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, default="generic",
                        help="technology (default: %(default)s)")
    parser.add_argument("--abc", action="store_true",
                        help="generic target: optimise gates with ABC (realistic counts, slower)")
    parser.add_argument("--unit", action="append", default=None,
                        help="generic target: synthesise this unit of the side-by-side units (as intvit verilog "
                             "--units writes them, e.g. intvit_requant, intvit_pe) on its own, flattened, with its "
                             "word-level multipliers and adders counted (repeatable), instead of the System")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="generic and nangate45: Yosys processes at once (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="generic and nangate45: synthesise every module again, even one whose result "
                             "the cache ($XDG_CACHE_HOME/intvit/synth) holds, and store the new results")
    parser.add_argument("--timing-driven", action="store_true",
                        help="ecp5: timing-driven place and route (a higher Fmax, minutes more; the 4x4 System "
                             "26.5 MHz instead of 19.9, about 15.5 instead of 10 minutes)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the report as JSON to FILE, or alone: print it instead of the tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.json not in (None, "-"):
        check_output_file(args.json)
    if args.target != "generic" and (args.abc or args.unit):
        raise IntVitError("--abc and --unit apply to --target generic only")
    if args.timing_driven and args.target != "ecp5":
        raise IntVitError("--timing-driven applies to --target ecp5 only")
    if args.jobs < 1:
        raise IntVitError(f"--jobs must be a positive integer, not {args.jobs}")
    config = load_config(args.config)
    model = get_config(args.model)
    from intvit.rtl.verilog import check_size, system_params

    check_size(top_params(config, model))            # before minutes of synthesis, not after
    start = time.perf_counter()
    if args.unit:
        report = _units(args, top_params(config, model))
    else:
        params = system_params(config, model)
        report = {"generic": _composed, "nangate45": _composed, "ecp5": _ecp5}[args.target](args, config, params)
        report["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        write_json(report, args.json)
    if args.json != "-":
        print(f"synthesis took {time.perf_counter() - start:.1f} s")
    return 0


def _describe(p) -> str:
    return (f"array {p.rows}x{p.cols}, lanes requant {p.requant_lanes} softmax {p.softmax_lanes} gelu {p.gelu_lanes} "
            f"layernorm {p.layernorm_lanes}, softmax rows {p.softmax_max_length}, layernorm width {p.layernorm_width}, "
            f"AXI {p.axi_data_bits} bits")


def scratchpad_bits(params) -> dict[str, int]:
    """Bits of each scratchpad as ``rtl.system`` builds them (A and B: byte lanes of ``W`` per bank)."""
    g = params.sp_geometry
    return {"a": params.rows * g.beat_bytes * g.a_words * 8, "b": params.cols * g.beat_bytes * g.b_words * 8,
            "acc": params.cols * g.acc_words * 32, "param": params.cols * g.param_words * 128}


def composed_report(params, table, *, gates: bool = False, abc: bool = False, jobs: int = 1, cache=None,
                    reuse: bool = True, bar: bool = False) -> dict:
    """``System(params)`` synthesised module by module and reported per unit (``UNITS``) and in total.

    Parameters
    ----------
    params : rtl.system.SystemParams
    table : sim.energy.EnergyTable
        Its SRAM model costs the scratchpads; its PE energy derives the units' ``[energy]`` entries.
    gates, abc, jobs, cache, reuse
        As ``rtl.synth.synth_asic`` takes them (``gates``: Yosys generic gates, no area).
    bar : bool
        Show a progress bar on stderr.

    Returns
    -------
    dict
        ``units`` (each with ``area_um2``, ``leakage_nw``, ``cells``, ``flipflops`` and how it is
        composed; generic gates: cells and flip-flops), ``pe`` (the array's inner PE),
        ``scratchpads`` (bits, area), ``total``, ``energy_table`` (NanGate 45 nm only),
        ``synthesis`` (times, jobs, cached jobs) and every distinct module in ``modules``.
    """
    from intvit.rtl.synth import compose, synth_asic
    from intvit.rtl.system import System
    from intvit.rtl.verilog import SYSTEM_NAME

    result = synth_asic(System(params), SYSTEM_NAME, gates=gates, abc=abc, depth=2, jobs=jobs, cache=cache,
                        reuse=reuse,
                        progress=(lambda items, total: progress(items, "synth", total, unit="module")) if bar else None)
    modules, paths = result["modules"], result["units"]
    fields = [f for f in SUMMED if f in result]
    units = {}
    for unit, members in UNITS.items():
        entries = [modules[paths[path]] for path in members]
        prefix = "own_" if unit in GLUE else ""
        units[unit] = {f: round(sum(entry[prefix + f] for entry in entries), 3) for f in fields}
        units[unit]["composition"] = ("own cells of " + ", ".join(paths[path] for path in members) if unit in GLUE else
                                      "; ".join((f"{path}: " if len(members) > 1 else "") + compose(result, paths[path])
                                                for path in members))
    # The inner PE: the array's most numerous child (edge PEs lose unused forwarding registers).
    array = modules[paths["compute.array"]]
    pe_name = max(array["children"], key=lambda child: array["children"][child])
    bits = scratchpad_bits(params)
    if sum(bits.values()) != result["sram_bits"]:
        raise RuntimeError(f"the RTL's SRAM memories hold {result['sram_bits']:,} bits, the scratchpads "
                           f"{sum(bits.values()):,}: rtl.system and scratchpad_bits disagree")
    report = {"target": "generic" if gates else "nangate45", "top": SYSTEM_NAME, "params": dataclasses.asdict(params),
              "units": units, "pe": {"module": pe_name, **modules[pe_name]}}
    if gates:
        report["scratchpads"] = {name: {"bits": n} for name, n in bits.items()}
        report["total"] = {"cells": result["cells"], "flipflops": result["flipflops"], "sram_bits": result["sram_bits"]}
    else:
        report["scratchpads"] = {name: {"bits": n, "area_um2": round(sram_area_um2(table, n), 1)}
                                 for name, n in bits.items()}
        logic = result["area_um2"]
        sram = sum(entry["area_um2"] for entry in report["scratchpads"].values())
        report["total"] = {"area_um2": round(logic + sram, 1), "logic_area_um2": logic, "sram_area_um2": round(sram, 1),
                           "area_mm2": round((logic + sram) * 1e-6, 4),
                           "leakage_uw": round(result["leakage_nw"] * 1e-3, 2),
                           "cells": result["cells"], "flipflops": result["flipflops"]}
        lanes = {unit: getattr(params, f"{unit}_lanes") for unit in ELEMENT_UNITS}
        report["energy_table"] = derive_unit_costs(table, report["pe"]["area_um2"], {
            unit: (units[unit]["area_um2"], units[unit]["leakage_nw"], lanes[unit]) for unit in ELEMENT_UNITS})
        report["liberty"] = result["liberty"]
    report["synthesis"] = {key: result[key] for key in ("seconds", "yosys_seconds", "jobs", "cached_jobs")}
    report["modules"] = modules
    return report


def _composed(args, config, params) -> dict:
    from intvit.cache import cache_dir

    report = composed_report(params, config.energy, gates=args.target == "generic", abc=args.abc, jobs=args.jobs,
                             cache=cache_dir() / "synth", reuse=not args.no_cache, bar=True)
    if args.json != "-":
        what = "Yosys generic gates" if report["target"] == "generic" else "NanGate 45 nm (typical)"
        _print_composed(report, params, what, config)
    return report


def _print_composed(report: dict, params, what: str, config) -> None:
    gates = report["target"] == "generic"
    print(f"{_describe(params)}; {what}, each distinct module synthesised once\n")
    if gates:
        rows = [[unit, f"{e['cells']:,}", f"{e['flipflops']:,}", e["composition"]]
                for unit, e in report["units"].items()]
        rows += [[f"sram:{name}", "-", "-", f"{e['bits']:,} bits (SRAM macro, not mapped)"]
                 for name, e in report["scratchpads"].items()]
        total = report["total"]
        rows.append(["total", f"{total['cells']:,}", f"{total['flipflops']:,}", f"+ {total['sram_bits']:,} SRAM bits"])
        print(format_table(["unit", "cells", "flip-flops", "composition"], rows, align="lrrl"))
    else:
        bit_area = config.energy.sram_bit_area_um2
        rows = [[unit, f"{e['area_um2']:,.1f}", f"{e['leakage_nw'] * 1e-3:,.1f}", f"{e['cells']:,}", e["composition"]]
                for unit, e in report["units"].items()]
        rows += [[f"sram:{name}", f"{e['area_um2']:,.1f}", "-", "-", f"{e['bits']:,} bits x {bit_area} µm²/bit"]
                 for name, e in report["scratchpads"].items()]
        t = report["total"]
        rows.append(["total", f"{t['area_um2']:,.1f}", f"{t['leakage_uw']:,.1f}", f"{t['cells']:,}",
                     f"{t['area_mm2']:.3f} mm²: logic {t['logic_area_um2']:,.1f} + SRAM {t['sram_area_um2']:,.1f}"])
        print(format_table(["unit", "area µm²", "leakage µW", "cells", "composition"], rows, align="lrrrl"))
        pe = report["pe"]
        print(f"\none 8-bit MAC PE (the array's inner {pe['module']}): {pe['area_um2']:,.1f} µm², "
              f"{pe['cells']} cells "
              f"of which {pe['flipflops']} flip-flops, {pe['leakage_nw'] * 1e-3:.2f} µW leakage")
        print("[energy] entries derived for this configuration: "
              + ", ".join(f"{key} = {value}" for key, value in report["energy_table"].items()))
    s = report["synthesis"]
    print(f"{s['jobs']} Yosys jobs ({s['cached_jobs']} from the cache), {s['yosys_seconds']:.0f} s of Yosys")


def _units(args, params) -> dict:
    from intvit.rtl.synth import synth_generic
    from intvit.rtl.verilog import designs

    available = designs(params)
    unknown = [name for name in args.unit if name not in available]
    if unknown:
        raise IntVitError(f"unknown unit {unknown[0]!r}; choose from {', '.join(available)}")
    report = synth_generic({name: available[name] for name in args.unit}, abc=args.abc)
    if args.json == "-":
        return report
    print(f"{'module':<18} {'cells':>8} {'FFs':>7} {'mults':>5} {'time':>7}  most common gates "
          f"({'ABC-optimised' if args.abc else 'unoptimised, no ABC'})")
    for name, stats in report.items():
        common = sorted(stats["by_type"].items(), key=lambda item: -item[1])[:TOP_CELL_TYPES]
        print(f"{name:<18} {stats['cells']:>8} {stats['flipflops']:>7} {stats['multipliers']:>5} "
              f"{stats['seconds']:>6.1f}s  " + ", ".join(f"{cell} {count}" for cell, count in common))
    return report


def _ecp5(args, config, params) -> dict:
    from intvit.rtl.synth import ECP5_DEVICE, synth_fpga
    from intvit.rtl.system import System
    from intvit.rtl.verilog import SYSTEM_NAME

    # Every PE's 8x8 product takes one MULT18X18D (tests/rtl/test_synth.py): refuse before minutes of
    # synthesis a design that cannot fit on that count alone.
    if params.rows * params.cols > ECP5_DEVICE["dsps"]:
        raise IntVitError(f"the {params.rows}x{params.cols} accelerator does not fit an {ECP5_DEVICE['name']}: at "
                          f"least {params.rows * params.cols} DSPs needed (one MULT18X18D per PE), "
                          f"{ECP5_DEVICE['dsps']} available; try a smaller array, e.g. --config "
                          "docs/configs/fpga_4x4.toml")
    if args.json != "-":
        print(f"{_describe(params)}; synth_ecp5 + nextpnr-ecp5 (the first run compiles the WebAssembly "
              "tools once: about 80 s of CPU)", file=sys.stderr)
    with _step_display() as show:
        fpga = synth_fpga(System(params), SYSTEM_NAME, timing_driven=args.timing_driven, progress=show)
    report = {"target": "ecp5", "top": SYSTEM_NAME, "params": dataclasses.asdict(params), **fpga}
    if args.json == "-":
        return report
    print(f"{_describe(params)} on {fpga['device']}")
    print(f"LUT4 {fpga['luts']:,}, flip-flops {fpga['flipflops']:,}, DSP {fpga['dsps']}, block RAM {fpga['brams']}, "
          f"carry {fpga['carry']:,}, LUT RAM {fpga['lutrams']:,}")
    fmax = "no clock found" if fpga["fmax_mhz"] is None else f"{fpga['fmax_mhz']:.1f} MHz"
    driven = "timing-driven" if fpga["timing_driven"] else "not timing-driven"
    print(f"post-route Fmax: {fmax} (nextpnr {fpga['router']}, {driven}, constraint {fpga['target_mhz']} MHz); synthesis "
          f"{fpga['synth_seconds']:.0f} s, place and route {fpga['pnr_seconds']:.0f} s")
    if path := fpga["critical_path"]:
        print(f"critical path: {path['ns']:.1f} ns (logic {path['logic_ns']:.1f}, routing {path['routing_ns']:.1f}) "
              f"from {path['from']} to {path['to']}")
    return report


@contextlib.contextmanager
def _step_display():
    """A one-line display on stderr of the tool's current step and the time so far (minutes of work)."""
    from tqdm import tqdm

    with tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False, disable=None) as bar:
        yield lambda step: bar.set_description_str(step)
