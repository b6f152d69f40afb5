"""``intvit accuracy``: float against integer inference on real images."""

from __future__ import annotations

import argparse

from intvit.quant.atomic import atomic_file
from intvit.quant.errors import IntVitError
from intvit.cluster.engine import add_cluster_arguments, cluster_mapper
from intvit.commands.common import (add_calibration_arguments, add_model_arguments, build_program,
                                 check_output_file, load_images, load_model, positive_int, progress, write_json)
from intvit.sim.report import check_plot_path

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "accuracy", help="compare float and integer top-1/top-5, agreement and per-layer SQNR",
        description="Quantise the model (or load --program), run float and integer inference on a labelled "
                    "set and compare them: top-1/top-5, top-1 agreement, per-layer SQNR and logit error.")
    add_model_arguments(parser)
    parser.add_argument("--data", default="mnist",
                        help="mnist, digits or an ImageFolder directory (default: %(default)s; built-in sets "
                             "are evaluated on their test split and calibrated on their train split)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate at most N images")
    add_calibration_arguments(parser)
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write results as JSON (stdout: -)")
    parser.add_argument("--plot", metavar="FILE.png", help="write a per-layer SQNR chart")
    add_cluster_arguments(parser, "image batches (--batch-size each)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from intvit.quant.evaluate import compare

    # Output paths and the evaluation set are checked before calibration, the long part.
    if args.plot:
        check_output_file(check_plot_path(args.plot))
    if args.json not in (None, "-"):
        check_output_file(args.json)
    model = load_model(args)
    images, labels, classes = load_images(args.data, model.config, "test", args.limit)
    if len(classes) != model.config.num_classes:
        raise IntVitError(f"{args.data}: {len(classes)} classes but model {model.config.name!r} "
                          f"has num_classes {model.config.num_classes}")
    # The cluster starts first: a missing engine or a wrong address fails before calibration.
    with cluster_mapper(args, "evaluate", "batch") as map_batches:
        program = build_program(args, model, args.data)
        result = compare(model, program, images, labels, batch_size=args.batch_size, map_batches=map_batches,
                         progress=lambda it: progress(it, "evaluate", -(-len(images) // args.batch_size)))
    if args.json:
        write_json({"model": model.config.name, "data": args.data, **result.as_dict()}, args.json)
    if args.json != "-":
        print(_summary(model.config.name, args.data, result))
    if args.plot:
        _plot(result.layer_sqnr_db, args.plot, f"{model.config.name} on {args.data}")
    return 0


def _summary(model: str, data: str, r) -> str:
    from intvit.sim.report import format_table

    head = format_table(
        ["", "top-1 %", "top-5 %"],
        [["float", f"{r.float_top1:.2f}", f"{r.float_top5:.2f}"],
         ["integer", f"{r.int_top1:.2f}", f"{r.int_top5:.2f}"]])
    layers = format_table(["tensor", "SQNR dB"], [[name, f"{db:.1f}"] for name, db in r.layer_sqnr_db.items()])
    return "\n".join([
        f"{model} on {data}: {r.images} images",
        head,
        f"top-1 agreement float vs integer: {r.agreement:.2f} %",
        f"logits: SQNR {r.logit_sqnr_db:.1f} dB, mean |error| {r.logit_mean_abs_error:.4f}, "
        f"max |error| {r.logit_max_abs_error:.4f}",
        _saturation_line(r.saturation),
        "",
        "per-layer SQNR of integer vs float activations:",
        layers,
    ])


def _saturation_line(saturation: dict[str, float]) -> str:
    if not saturation:
        return "saturation: no element of any requantised tensor reached its bound"
    worst = max(saturation, key=saturation.get)
    return (f"saturation: {len(saturation)} tensors have elements at their bound; "
            f"most in {worst} ({saturation[worst]:.3f} % of its elements)")


def _plot(layer_sqnr: dict[str, float], path: str, title: str) -> None:
    # A bare Figure draws on the Agg canvas without touching pyplot's global backend.
    from matplotlib.figure import Figure

    names = list(layer_sqnr)
    values = [min(v, 100.0) for v in layer_sqnr.values()]
    fig = Figure(figsize=(max(8, 0.18 * len(names)), 4.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"Integer vs float activations: {title}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as temp:
        fig.savefig(temp, dpi=120, format="png")
