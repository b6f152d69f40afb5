"""Quantise the embedded MNIST ViT and run it bit-exactly in integers, from Python.

    python examples/integer_inference.py [--images 200] [--out mnist_int8.npz]

Shows the library path the ``intvit`` command wraps: calibrate on training images, build the
integer program, save and reload it, run the golden executor and compare with float.
"""

from __future__ import annotations

import argparse

import numpy as np

from intvit.quant.checkpoint import load_embedded
from intvit.quant.data import load_dataset, normalize
from intvit.quant.evaluate import compare
from intvit.quant.executor import run_program
from intvit.quant.program import load_program
from intvit.quant.ptq import quantize_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="test images to compare on")
    parser.add_argument("--out", default="mnist_int8.npz", help="where to write the integer program")
    args = parser.parse_args(argv)

    model = load_embedded()
    config = model.config
    calibration, _, _ = load_dataset("mnist", config, split="train", limit=256)
    program = quantize_model(model, normalize(calibration, config))
    program.save(args.out)
    program = load_program(args.out)                 # what the simulator and the RTL tests read
    print(f"{args.out}: {len(program.ops)} integer ops, input scale {program.input_scale:.5f}")

    images, labels, _ = load_dataset("mnist", config, split="test", limit=args.images)
    images = normalize(images, config)
    logits = run_program(program, program.quantize_input(images))          # INT32 logits
    print(f"integer top-1 on {len(images)} test images: {100 * np.mean(logits.argmax(1) == labels):.1f} %")

    result = compare(model, program, images, labels)
    print(f"float top-1 {result.float_top1:.1f} %, top-1 agreement {result.agreement:.1f} %, "
          f"logit SQNR {result.logit_sqnr_db:.1f} dB")


if __name__ == "__main__":
    main()
