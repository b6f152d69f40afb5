"""``intvit synth``: what the RTL costs, from real tools.

Three targets (``rtl.synth``):

* ``generic``: Yosys's generic gate and flip-flop counts per unit (no technology);
* ``nangate45``: area in µm² per unit and for the whole accelerator on the NanGate 45 nm cells,
  each distinct module synthesised once and counted per instance, the on-chip buffers added
  from the SRAM model of ``sim.energy``; also the per-element energies and per-lane leakage
  that ``[energy]`` takes, derived for this configuration;
* ``ecp5``: LUTs, flip-flops, DSPs, block RAMs and post-route Fmax on an LFE5U-85F.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from intvit.commands.common import check_output_file, progress, write_json
from intvit.commands.verilog import add_top_arguments, top_params
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.sim.config import load_config
from intvit.sim.energy import ELEMENT_UNITS, derive_unit_costs, sram_area_um2
from intvit.sim.report import format_table

__all__ = ["register", "run"]

TOP_CELL_TYPES = 4
TARGETS = ("generic", "nangate45", "ecp5")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="area (NanGate 45 nm), FPGA resources and Fmax (ECP5), or generic gate counts of the RTL",
        description="Elaborate the accelerator with an accelerator config and a model's row lengths and "
        "synthesise it: --target nangate45 maps every distinct module onto the NanGate 45 nm cells and "
        "composes the area per unit and in total (buffers from the SRAM model); --target ecp5 places and "
        "routes it on an LFE5U-85F for LUT/FF/DSP/BRAM counts and Fmax; --target generic counts Yosys's "
        "generic gates per unit.",
    )
    add_top_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, default="generic",
                        help="technology (default: %(default)s)")
    parser.add_argument("--unit", action="append", default=None,
                        help="generic target: module to synthesise (repeatable), e.g. intvit_requant; default: all")
    parser.add_argument("--abc", action="store_true",
                        help="generic target: optimise gates with ABC (realistic counts; minutes for the requantiser)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the report as JSON to FILE, or alone: print it instead of the tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.json not in (None, "-"):
        check_output_file(args.json)
    config = load_config(args.config)
    params = top_params(config, get_config(args.model))
    from intvit.rtl.verilog import check_size

    check_size(params)                 # before minutes of synthesis, not after
    if args.target != "generic" and (args.unit or args.abc):
        raise IntVitError("--unit and --abc apply to --target generic only")
    start = time.perf_counter()
    report = {"generic": _generic, "nangate45": _nangate45, "ecp5": _ecp5}[args.target](args, config, params)
    if args.json:
        write_json(report, args.json)
    if args.json != "-":
        print(f"synthesis took {time.perf_counter() - start:.1f} s")
    return 0


def _describe(params) -> str:
    return (f"array {params.rows}x{params.cols}, lanes requant {params.requant_lanes} softmax {params.softmax_lanes} "
            f"gelu {params.gelu_lanes} layernorm {params.layernorm_lanes}, softmax rows {params.max_length}, "
            f"layernorm width {params.width}")


def _generic(args, config, params) -> dict:
    from intvit.rtl.synth import synth_generic
    from intvit.rtl.verilog import designs

    available = designs(params)
    chosen = list(available) if args.unit is None else args.unit
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise IntVitError(f"unknown unit {unknown[0]!r}; choose from {', '.join(available)}")
    report = synth_generic({name: available[name] for name in chosen}, abc=args.abc)
    if args.json == "-":
        return report
    print(f"{_describe(params)}, {'ABC-optimised' if args.abc else 'unoptimised (no ABC)'} gates")
    print(f"{'module':<18} {'cells':>8} {'FFs':>7} {'mults':>5} {'time':>7}  most common gates")
    for name, stats in report.items():
        common = sorted(stats["by_type"].items(), key=lambda item: -item[1])[:TOP_CELL_TYPES]
        print(f"{name:<18} {stats['cells']:>8} {stats['flipflops']:>7} {stats['multipliers']:>5} "
              f"{stats['seconds']:>6.1f}s  " + ", ".join(f"{cell} {count}" for cell, count in common))
    return report


def _nangate45(args, config, params) -> dict:
    from intvit.rtl.synth import compose, synth_asic
    from intvit.rtl.verilog import TOP_NAME, designs

    top = designs(params)[TOP_NAME]()
    asic = synth_asic(top, TOP_NAME, progress=lambda items: progress(items, "synth", unit="module"))
    modules = asic["modules"]
    units = {unit: {**modules[cls], "composition": compose(asic, cls)} for unit, cls in asic["units"].items()}
    pe = next((entry for name, entry in modules.items() if name == "pe"), None)
    # Buffers: the RTL's own SRAM macros when the top has them, else the config's buffers.
    table = config.energy
    if asic["sram_bits"]:
        buffer_bits = {"rtl_memories": asic["sram_bits"]}
    else:
        buffer_bits = {name: 8 * size for name, size in dataclasses.asdict(config.buffers).items()}
    buffers = {name: {"bits": bits, "area_um2": round(sram_area_um2(table, bits), 1)} for name, bits in buffer_bits.items()}
    logic = asic["area_um2"]
    sram = sum(entry["area_um2"] for entry in buffers.values())
    lanes = {unit: getattr(params, f"{unit}_lanes") for unit in ELEMENT_UNITS}
    derived = None
    if pe is not None and all(unit in units for unit in ELEMENT_UNITS):
        derived = derive_unit_costs(table, pe["area_um2"], {unit: (units[unit]["area_um2"], units[unit]["leakage_nw"],
                                                                   lanes[unit]) for unit in ELEMENT_UNITS})
    report = {
        "target": "nangate45", "params": dataclasses.asdict(params), "liberty": asic["liberty"],
        "units": units, "pe": pe, "buffers": buffers,
        "total": {"area_um2": round(logic + sram, 1), "logic_area_um2": logic, "sram_area_um2": round(sram, 1),
                  "area_mm2": round((logic + sram) * 1e-6, 4), "leakage_uw": round(asic["leakage_nw"] * 1e-3, 2)},
        "energy_table": derived, "modules": modules, "seconds": asic["seconds"],
    }
    if args.json == "-":
        return report
    print(f"{_describe(params)}; NanGate 45 nm (typical), each distinct module synthesised once\n")
    rows = [[unit, f"{entry['area_um2']:,.1f}", f"{entry['leakage_nw'] * 1e-3:,.1f}", f"{entry['cells']:,}",
             entry["composition"]] for unit, entry in units.items()]
    rows += [[f"sram:{name}", f"{entry['area_um2']:,.1f}", "-", "-",
              f"{entry['bits']:,} bits x {table.sram_bit_area_um2} µm²/bit"] for name, entry in buffers.items()]
    rows.append(["total", f"{logic + sram:,.1f}", f"{asic['leakage_nw'] * 1e-3:,.1f}", "-",
                 f"{(logic + sram) * 1e-6:.3f} mm²: logic {logic:,.1f} + SRAM {sram:,.1f}"])
    print(format_table(["unit", "area µm²", "leakage µW", "cells", "composition"], rows, align="lrrrl"))
    if pe is not None:
        print(f"\none 8-bit MAC PE: {pe['area_um2']:,.1f} µm², {pe['cells']} cells of which "
              f"{pe['flipflops']} flip-flops, {pe['leakage_nw'] * 1e-3:.2f} µW leakage")
    if derived:
        print("[energy] entries derived for this configuration: "
              + ", ".join(f"{key} = {value}" for key, value in derived.items()))
    return report


def _ecp5(args, config, params) -> dict:
    from intvit.rtl.synth import synth_fpga
    from intvit.rtl.verilog import TOP_NAME, designs

    if args.json != "-":
        print(f"{_describe(params)}; synth_ecp5 + nextpnr-ecp5 (the first run compiles the WebAssembly "
              "tools once, tens of seconds)", file=sys.stderr)
    fpga = synth_fpga(designs(params)[TOP_NAME](), TOP_NAME)
    report = {"target": "ecp5", "params": dataclasses.asdict(params), **fpga}
    if args.json == "-":
        return report
    print(f"{_describe(params)} on {fpga['device']}")
    print(f"LUT4 {fpga['luts']:,}, flip-flops {fpga['flipflops']:,}, DSP {fpga['dsps']}, block RAM {fpga['brams']}, "
          f"carry {fpga['carry']:,}")
    fmax = "no clock found" if fpga["fmax_mhz"] is None else f"{fpga['fmax_mhz']:.1f} MHz"
    print(f"post-route Fmax: {fmax} (constraint {fpga['target_mhz']} MHz); synthesis {fpga['synth_seconds']:.0f} s, "
          f"place and route {fpga['pnr_seconds']:.0f} s")
    return report
