"""``intvit compile``: an integer program to the accelerator's instruction stream and memory image.

Writes, into one folder and all or none (``quant.atomic.atomic_folder``):

* ``program.bin``: the instructions, 32 bytes each (``docs/isa.md``);
* ``image.bin``: external memory from address 0: weights, parameter records, a zero input;
* ``manifest.json``: the address of every region, the input and output, the scratchpad
  geometry, the accelerator config, instruction counts and the predicted cycles.

With ``--check`` it also proves the stream race-free (``compiler.verify.check_hazards``) and
runs the first test image through the instruction-level executor, in program order and in the
schedule's overlapped order, comparing the logits with the golden executor's. ``--batch B``
compiles one program for ``B`` images (``docs/isa.md``, "Batches"); ``--check`` then runs the
first ``B`` test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from intvit.commands.common import (
    add_compile_arguments, compile_model, positive_int, progress, quantized_test_images, write_json,
)
from intvit.quant.atomic import atomic_folder, check_output_file, check_output_folder
from intvit.quant.errors import IntVitError
from intvit.sim.config import load_config

__all__ = ["register", "run", "write_compiled"]

STREAM_NAME, IMAGE_NAME, MANIFEST_NAME = "program.bin", "image.bin", "manifest.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile a model for the accelerator: instruction stream, memory image, manifest",
        description="Quantise a model (or load --program) and compile it for the accelerator of --config: "
        "the binary instruction stream, the external-memory image and a JSON manifest of addresses, "
        "with the predicted cycles of one inference.",
    )
    add_compile_arguments(parser, "calibration and --check images")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for program.bin, image.bin, manifest.json")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B",
                        help="compile for B images at once, each weight loaded once for all of them (default: 1)")
    parser.add_argument("--check", action="store_true",
                        help="prove the stream race-free, run the first test image(s) through it and compare with "
                             "the golden executor")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the summary as JSON to FILE, or alone: print it instead of the text")
    parser.set_defaults(run=run)


def write_compiled(compiled, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``program.bin``, ``image.bin`` and ``manifest.json`` (plus ``extra`` keys) atomically."""
    with atomic_folder(folder) as staging:
        (staging / STREAM_NAME).write_bytes(compiled.stream())
        (staging / IMAGE_NAME).write_bytes(compiled.image.tobytes())
        manifest = {**compiled.manifest, "files": {"stream": STREAM_NAME, "image": IMAGE_NAME}, **(extra or {})}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(folder)


def run(args: argparse.Namespace) -> int:
    from intvit.compiler.executor import execute
    from intvit.compiler.verify import check_hazards
    from intvit.quant.executor import run_program
    from intvit.sim.schedule import program_macs, schedule

    check_output_folder(args.out)
    if args.json not in (None, "-"):
        check_output_file(args.json)
    config = load_config(args.config)
    program, compiled = compile_model(args, config, args.data, args.batch)
    report = schedule(compiled.instructions, config, macs=args.batch * program_macs(program))
    summary = {
        "model": program.config.name, "out": str(args.out), "instructions": len(compiled.instructions),
        "stream_bytes": len(compiled.instructions) * 32, "image_bytes": int(compiled.image.size),
        "memory_bytes": compiled.memory_bytes, "sim_cycles": report.total_cycles,
        "classes": report.classes, "config": dataclasses.asdict(config),
    }
    if args.check:
        check_hazards(compiled.instructions, compiled.geometry)      # raises on a race the tokens allow
        images, _ = quantized_test_images(program, args.data, args.batch)
        x = np.concatenate(images)
        golden = run_program(program, x)
        logits = execute(compiled, x, progress=lambda it: progress(it, "execute", len(compiled.instructions),
                                                                   unit="instr"))
        timed = execute(compiled, x, timing=(report.start, report.end))
        summary["check"] = {"logits": logits.tolist(), "golden_logits": golden.tolist(),
                            "bit_exact": bool(np.array_equal(logits, golden) and np.array_equal(timed, golden))}
    write_compiled(compiled, args.out, {"sim_cycles": report.total_cycles, "config": summary["config"]})
    if args.json:
        write_json(summary, args.json)
        if args.json == "-":
            return 0 if not args.check or summary["check"]["bit_exact"] else 1
    print(f"{program.config.name}: {len(compiled.instructions):,} instructions "
          f"({summary['stream_bytes']:,} bytes), image {compiled.image.size:,} bytes, "
          f"external memory {compiled.memory_bytes:,} bytes -> {args.out}/")
    print("  " + ", ".join(f"{name} {entry['count']:,}" for name, entry in report.classes.items()))
    print(f"  predicted: {report.total_cycles:,} cycles ({report.latency_us:,.1f} µs at {config.clock_mhz:g} MHz), "
          f"MAC utilisation {100 * report.mac_utilization:.1f}%")
    if args.check:
        check = summary["check"]
        print("  hazards: every conflicting access ordered by tokens")
        for logits, golden in zip(check["logits"], check["golden_logits"]):
            print(f"  logits {logits}\n  golden {golden}")
        print(f"  bit-exact (program order and overlapped schedule): {'yes' if check['bit_exact'] else 'NO'}")
        if not check["bit_exact"]:
            raise IntVitError("the compiled stream's logits differ from the golden executor's")
    return 0
