"""``intvit topology``: write a ViT as a SCALE-Sim GEMM topology CSV, one row per matmul."""

from __future__ import annotations

import argparse

from intvit.quant.config import PRESETS, get_config
from intvit.commands.common import model_spec, positive_int
from intvit.quant.atomic import check_output_file
from intvit.sim.scalesim import write_topology
from intvit.sim.topology import vit_gemms

__all__ = ["register", "run"]

DEFAULT_TOPOLOGY_MODEL = "deit-tiny"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "topology",
        help="write a ViT as a SCALE-Sim GEMM topology (Layer, M, N, K)",
        description="Write every matmul of a ViT forward pass (batch 1, attention heads expanded) "
        "as a SCALE-Sim GEMM topology CSV, readable by `scalesim -i gemm` and `intvit simulate`.",
    )
    parser.add_argument("--model", choices=sorted(PRESETS),
                        help=f"model preset (default: {DEFAULT_TOPOLOGY_MODEL}; with --weights a shortcut that "
                             "must agree with the checkpoint)")
    parser.add_argument("--weights", metavar="PATH",
                        help="take the shapes from this checkpoint instead (architecture from the checkpoint)")
    parser.add_argument("--heads", dest="num_heads", type=positive_int, metavar="HEADS",
                        help="attention heads, for a bare state dict (no tensor shape fixes them)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--blocks", type=int, default=None, help="keep only the first N encoder blocks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out)
    # Shapes only: no weights are read. Without --model a checkpoint's own architecture is used.
    config = model_spec(args).config if args.weights else get_config(args.model or DEFAULT_TOPOLOGY_MODEL)
    gemms = vit_gemms(config, blocks=args.blocks)
    write_topology(args.out, gemms)
    macs = sum(g.macs for g in gemms)
    print(f"{args.out}: {len(gemms)} GEMMs, {macs / 1e9:.3f} GMAC ({config.name})")
    return 0
