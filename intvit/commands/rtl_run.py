"""``intvit rtl-run``: a compiled model on the accelerator's RTL (Verilator, cocotb, cocotbext-axi's AxiRam).

Quantises the model (or loads ``--program``), compiles it for ``--config``, builds
``rtl.system.System`` with Verilator and runs ``--images`` test images on it, external memory
being an ``AxiRam`` slowed to the config's memory latencies. For each image it prints the RTL's
INT32 logits and predicted class, the golden executor's verdict, the RTL's cycle counter and
``sim.schedule``'s prediction for the same config; then the predicted busy cycles per
instruction class. ``--json`` holds ``images``: per image ``logits``, ``golden_logits``,
``rtl_cycles`` and ``sim_cycles``; it holds no wall-clock times (printed with the text), so a
run gives the same file on any number of workers.

``--batch B`` compiles one program for ``B`` images (``compiler.codegen.compile_program``: each
weight loaded once for all of them) and runs the ``--images`` in runs of ``B``; an image's
``rtl_cycles`` and ``sim_cycles`` are then its run's, for ``B`` images.

``--workers N``/``--cluster ADDRESS`` run the images on a Dask cluster (``intvit.cluster``):
the model is built once here and every worker runs images on it, each in its own folder of
the work folder, which the workers must see at the same path (a shared file system for
``--cluster``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np

from intvit.cluster.engine import add_cluster_arguments, cluster_mapper, uses_cluster
from intvit.commands.common import (
    add_compile_arguments, compile_model, positive_int, progress, quantized_test_images,
    write_json,
)
from intvit.quant.atomic import check_output_file
from intvit.quant.errors import IntVitError
from intvit.sim.config import load_config

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rtl-run",
        help="run a compiled model on the accelerator's RTL (Verilator + cocotb + AxiRam)",
        description="Compile a model for --config, build the whole accelerator with Verilator and run test "
        "images on it with cocotbext-axi's AxiRam as external memory: logits, class, RTL cycles against the "
        "cycle model's prediction.",
    )
    add_compile_arguments(parser)
    parser.add_argument("--images", type=positive_int, metavar="N",
                        help="test images to run, a multiple of --batch (default: one batch)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B",
                        help="images per compiled program and RTL run, weights loaded once for all (default: 1)")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="build and run folder, kept: a later run with the same accelerator skips the build "
                             "(default: a temporary one; needed with --cluster, on a file system the workers share)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE, or alone: print them instead of the text")
    add_cluster_arguments(parser, "images")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from intvit.harness.run import build_system, run_images
    from intvit.harness.runner import verilator_missing
    from intvit.quant.executor import run_program
    from intvit.sim.schedule import program_macs, schedule

    if args.json not in (None, "-"):
        check_output_file(args.json)
    if uses_cluster(args) and args.cluster is not None and not args.work_dir:
        raise IntVitError("--cluster needs --work-dir: a folder the cluster's workers see at the same path")
    batch = args.batch
    count = args.images or batch
    if count % batch:
        raise IntVitError(f"--images {count} is not a multiple of --batch {batch}")
    config = load_config(args.config)
    reason = verilator_missing()
    if reason is not None:
        raise IntVitError(reason)
    program, compiled = compile_model(args, config, args.data, batch)
    report = schedule(compiled.instructions, config, macs=batch * program_macs(program))
    images, labels = quantized_test_images(program, args.data, count)
    xs = [np.concatenate(images[i:i + batch]) for i in range(0, count, batch)]
    with tempfile.TemporaryDirectory(prefix="intvit-rtl-") as scratch, \
            cluster_mapper(args, "rtl", "image") as map_images:
        work = args.work_dir or scratch
        model = build_system(compiled, config, work)
        results = run_images(compiled, config, xs, work, model=model, map_images=map_images,
                             progress=lambda it: progress(it, "rtl", len(xs), unit="batch" if batch > 1 else "image"))
    rows = []
    for run_index, (x, result) in enumerate(zip(xs, results)):
        golden = run_program(program, x)
        for j in range(batch):
            i = run_index * batch + j
            logits, expected = result.logits[j:j + 1], golden[j:j + 1]
            rows.append({"image": i, "label": int(labels[i]), "logits": logits.tolist(),
                         "golden_logits": expected.tolist(), "bit_exact": bool(np.array_equal(logits, expected)),
                         "predicted_class": int(np.argmax(logits[0])), "rtl_cycles": result.cycles,
                         "sim_cycles": report.total_cycles})
    data = {"model": program.config.name, "batch": batch, "instructions": len(compiled.instructions), "images": rows,
            "classes": report.classes, "config": dataclasses.asdict(config)}
    if args.json:
        write_json(data, args.json)
    if args.json != "-":
        print(f"{program.config.name} on the RTL: {len(compiled.instructions):,} instructions, "
              f"Verilator build {model.build_s:.0f} s")
        for row in rows:
            result = results[row["image"] // batch]
            error = 100 * (row["rtl_cycles"] - row["sim_cycles"]) / row["sim_cycles"]
            print(f"image {row['image']} (label {row['label']}): class {row['predicted_class']}, logits "
                  f"{row['logits'][0]}, bit-exact vs golden: {'yes' if row['bit_exact'] else 'NO'}; "
                  f"RTL {row['rtl_cycles']:,} cycles, predicted {row['sim_cycles']:,} ({error:+.2f}%), "
                  f"{result.wall_s:.1f} s")
        print("predicted busy cycles per instruction class: " + ", ".join(
            f"{name} {entry['busy_cycles']:,} ({entry['count']:,})" for name, entry in report.classes.items()))
    if not all(row["bit_exact"] for row in rows):
        raise IntVitError("the RTL's logits differ from the golden executor's")
    return 0
