"""Size an accelerator for DeiT-Tiny: cycles, latency and utilisation across array sizes.

    python examples/accelerator_sizing.py [--model deit-tiny]

Builds the integer program from seeded random weights (cycles depend only on shapes) and runs
the simulator's cycle model, without functional execution, on a few configurations.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from intvit.quant.config import get_config
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.sim.config import AcceleratorConfig
from intvit.sim.simulator import simulate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit-tiny")
    args = parser.parse_args(argv)

    config = get_config(args.model)
    torch.manual_seed(0)
    images = np.random.default_rng(0).normal(size=(2, config.in_chans, config.img_size, config.img_size))
    program = quantize_model(ViT(config).eval(), images.astype(np.float32))

    big_buffers = dict(buffers__ifmap_bytes=1 << 20, buffers__weight_bytes=1 << 20, buffers__ofmap_bytes=1 << 18)
    print(f"{'array':>7} {'dataflow':>8} {'cycles':>12} {'latency us':>11} {'img/s':>8} {'MAC util':>8}")
    for size in (8, 16, 32, 64):
        for dataflow in ("os", "ws"):
            accel = AcceleratorConfig().with_(matmul__rows=size, matmul__cols=size, matmul__dataflow=dataflow,
                                              **big_buffers)
            report = simulate(program, accel, functional=False)
            print(f"{size:>3}x{size:<3} {dataflow:>8} {report.total_cycles:>12,} {report.latency_us:>11.1f} "
                  f"{report.images_per_second:>8.1f} {report.utilization:>8.1%}")


if __name__ == "__main__":
    main()
