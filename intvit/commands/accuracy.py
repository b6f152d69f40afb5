"""``intvit accuracy``: float against integer inference on real images."""

from __future__ import annotations

import argparse
import os

from intvit.quant.atomic import atomic_file
from intvit.quant.errors import IntVitError
from intvit.cluster.engine import add_cluster_arguments, cluster_mapper
from intvit.commands.common import (add_calib_data_argument, add_calibration_arguments, add_model_arguments,
                                    build_program, check_output_file, load_images, load_model, model_spec,
                                    positive_int, progress, write_json)
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
                             "are evaluated on their test split and calibrated on their train split, a directory "
                             "on four fifths of each class, the other fifth held apart for calibration)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate at most N images")
    add_calib_data_argument(parser)
    add_calibration_arguments(parser)
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write results as JSON (stdout: -)")
    parser.add_argument("--logits", action="store_true",
                        help="with --json: add each evaluated image's float logits (and file, for a directory), "
                             "to check them against the framework's")
    parser.add_argument("--plot", metavar="FILE.png", help="write a per-layer SQNR chart")
    add_cluster_arguments(parser, "image batches (--batch-size each)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Idle OpenMP workers (torch's and numba's) sleep instead of spinning. The comparison runs
    # thousands of short parallel regions; with other jobs on the cores, spinning workers took
    # the CPU the next region needed: the demo measured 22.6 s wall, 13.5 s CPU spinning against
    # 8.4 s, 5.0 s passive (loaded 2-core machine). Read once, when torch first loads: set here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from intvit.quant.evaluate import compare

    # Output paths and the evaluation set are checked before calibration, the long part.
    if args.plot:
        check_output_file(check_plot_path(args.plot))
    if args.json not in (None, "-"):
        check_output_file(args.json)
    if args.logits and not args.json:
        raise IntVitError("--logits adds to the --json output; give --json too")
    spec = model_spec(args)
    model = load_model(args, spec)
    images, labels, classes = load_images(args.data, model.config, "test", args.limit)
    if len(classes) != model.config.num_classes:
        raise IntVitError(f"{args.data}: {len(classes)} classes but model {model.config.name!r} "
                          f"has num_classes {model.config.num_classes}")
    # The cluster starts first: a missing engine or a wrong address fails before calibration.
    with cluster_mapper(args, "evaluate", "batch") as map_batches:
        program = build_program(args, model, args.data)
        result = compare(model, program, images, labels, batch_size=args.batch_size, map_batches=map_batches,
                         progress=lambda it: progress(it, "evaluate", -(-len(images) // args.batch_size)))
    header = {"model": model.config.name, "checkpoint": spec.source, "data": args.data,
              "normalization": spec.normalization, "calibration": program.calibration.get("source", "program file"),
              "notes": list(spec.notes)}
    if args.json:
        extra = _logits(args, model, images) if args.logits else {}
        write_json({**header, **result.as_dict(), **extra}, args.json)
    if args.json != "-":
        print(_summary(header, result))
    if args.plot:
        _plot(result.layer_sqnr_db, args.plot, f"{model.config.name} on {args.data}")
    return 0


def _logits(args: argparse.Namespace, model, images) -> dict:
    """Per-image float logits (and files of a directory), in evaluation order."""
    import torch

    from intvit.quant.data import BUILTIN, folder_files

    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(images[i:i + args.batch_size]))
                            for i in range(0, len(images), args.batch_size)])
    extra = {"float_logits": logits.numpy().astype(float).tolist()}
    if args.data not in BUILTIN:
        extra["files"] = [str(path) for path in folder_files(args.data, model.config, "test", args.limit)[0]]
    return extra


def _summary(header: dict, r) -> str:
    from intvit.sim.report import format_table

    head = format_table(
        ["", "top-1 %", "top-5 %"],
        [["float", f"{r.float_top1:.2f}", f"{r.float_top5:.2f}"],
         ["integer", f"{r.int_top1:.2f}", f"{r.int_top5:.2f}"]])
    layers = format_table(["tensor", "SQNR dB"], [[name, f"{db:.1f}"] for name, db in r.layer_sqnr_db.items()])
    return "\n".join([
        f"{header['checkpoint']} on {header['data']}: {r.images} images",
        f"normalisation: {header['normalization']}",
        f"calibration: {header['calibration']}",
        *[f"note: {note}" for note in header["notes"]],
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
