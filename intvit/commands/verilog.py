"""``intvit verilog``: emit the accelerator's Verilog (one file per unit, the top, a manifest)."""

from __future__ import annotations

import argparse
import json
import sys

from intvit.quant.config import PRESETS, ViTConfig, get_config
from intvit.commands.common import DEFAULT_MODEL, progress
from intvit.quant.atomic import check_output_folder
from intvit.sim.config import AcceleratorConfig, load_config

__all__ = ["register", "run", "add_top_arguments", "top_params", "latency_mismatches"]

UNIT_SECTIONS = ("matmul", "requant", "softmax", "gelu", "layernorm")


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--model``: what fixes the RTL top's parameters (shared with ``intvit synth``)."""
    parser.add_argument("--config", default=None, help="accelerator TOML (default: built-in defaults)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(PRESETS),
                        help="model shape that sizes the softmax row buffer (tokens) and LayerNorm "
                             "(embed_dim) (default: %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verilog",
        help="write the accelerator's Verilog and a manifest",
        description="Elaborate the Amaranth units with the array shape and lane counts of an accelerator "
        "config and the row lengths of a model, and write one Verilog file per unit, intvit_top.v and "
        "manifest.json.",
    )
    add_top_arguments(parser)
    parser.add_argument("--out", required=True, help="directory to write into (created if missing)")
    parser.add_argument("--lint", action="store_true", help="also run verilator --lint-only -Wall on every file")
    parser.set_defaults(run=run)


def top_params(config: AcceleratorConfig, model: ViTConfig):
    """The RTL top's parameters: array and lanes from the accelerator config, row lengths from the model."""
    from intvit.rtl.top import TopParams

    return TopParams(rows=config.matmul.rows, cols=config.matmul.cols, requant_lanes=config.requant.lanes,
                     softmax_lanes=config.softmax.lanes, gelu_lanes=config.gelu.lanes,
                     layernorm_lanes=config.layernorm.lanes, max_length=model.num_tokens, width=model.embed_dim)


def latency_mismatches(config: AcceleratorConfig, manifest: dict) -> list[str]:
    """Units whose config ``latency`` differs from the RTL's, one line each.

    The simulator's cycle counts then describe other hardware than the Verilog written.
    """
    lines = []
    for section in UNIT_SECTIONS:
        rtl_latency = manifest["modules"][f"intvit_{section}"]["latency_cycles"]
        configured = getattr(config, section).latency
        if rtl_latency is not None and rtl_latency != configured:
            lines.append(f"{section}.latency is {configured} in the config, {rtl_latency} in the RTL")
    return lines


def run(args: argparse.Namespace) -> int:
    from intvit.rtl.verilog import generate, lint

    check_output_folder(args.out)
    config = load_config(args.config)
    paths = generate(top_params(config, get_config(args.model)), args.out,
                     progress=lambda items: progress(items, "verilog", len(items), unit="module"))
    for path in paths:
        print(path)
    manifest = json.loads(paths[-1].read_text())
    for line in latency_mismatches(config, manifest):
        print(f"warning: {line}; simulated cycles will not match this RTL", file=sys.stderr)
    if args.lint:
        problems = lint(paths)
        for problem in problems:
            print(problem)
        print(f"lint: {'clean' if not problems else f'{len(problems)} file(s) with warnings'}")
        return 1 if problems else 0
    return 0
