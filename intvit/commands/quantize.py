"""``intvit quantize``: checkpoint + calibration images -> integer program file."""

from __future__ import annotations

import argparse

from intvit.commands.common import (add_calibration_arguments, add_model_arguments, build_program,
                                 check_output_file, load_model)

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize", help="calibrate and write the integer program (.npz with a JSON manifest)",
        description="Post-training quantisation: calibrate activation ranges on --data and write the integer "
                    "program that the golden executor, the simulator and the RTL tests consume.")
    add_model_arguments(parser)
    parser.add_argument("--data", default="mnist",
                        help="calibration images: mnist, digits (train split) or an ImageFolder directory")
    add_calibration_arguments(parser, program_option=False)
    parser.add_argument("--out", "-o", required=True, metavar="FILE.npz", help="program file to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.out)
    model = load_model(args)
    program = build_program(args, model, args.data, held_apart=False)
    path = program.save(out)
    kinds = {}
    for op in program.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    print(f"wrote {path}: {len(program.ops)} ops ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
          f"{sum(v.nbytes for v in program.constants.values())} bytes of constants, "
          f"calibrated on {program.calibration['images']} images ({program.calibration['method']})")
    return 0
