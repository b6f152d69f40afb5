"""Time the whole-model simulator: functional + cycle runs of DeiT images, and a config sweep.

Prints, in one run (random weights; quantisation timed separately and excluded from the
simulation figures; numba compilation paid once on a small warm-up model first):

* one DeiT-Tiny image, functional + cycle simulation (target <= 10 s),
* one DeiT-Base image, functional + cycle simulation (target <= 60 s),
* a 16-configuration cycle-only sweep over DeiT-Small (4 arrays x 2 dataflows x 2
  bandwidths, 256 KiB buffers, target <= 2 min), and the cycle-model time per configuration (milliseconds)::

    .venv/bin/python benchmarks/simulator.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from intvit.quant.config import get_config
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.commands.sweep import sweep_rows
from intvit.sim.config import AcceleratorConfig, load_config
from intvit.sim.report import format_table
from intvit.sim.simulator import simulate

CALIBRATION_IMAGES = 2
SWEEP_ARRAYS = ((8, 8), (16, 16), (32, 32), (64, 64))
SWEEP_DATAFLOWS = ("os", "ws")
SWEEP_BANDWIDTHS = (16, 64)
# DeiT-Small's MLP tiles on a 64x64 array need more than the default 64 KiB per buffer.
SWEEP_BUFFER_BYTES = 256 * 1024
TARGET_SECONDS = {"deit-tiny": 10, "deit-base": 60, "sweep": 120}


def random_images(config, count: int, seed: int) -> np.ndarray:
    shape = (count, config.in_chans, config.img_size, config.img_size)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def quantised(name: str) -> tuple[object, float]:
    """Program of a seeded random-weight model and the seconds quantisation took."""
    torch.manual_seed(0)
    model = ViT(get_config(name)).eval()
    start = time.perf_counter()
    program = quantize_model(model, random_images(model.config, CALIBRATION_IMAGES, 0))
    return program, time.perf_counter() - start


def time_functional(name: str, config: AcceleratorConfig) -> list:
    program, quantise_s = quantised(name)
    x = program.quantize_input(random_images(program.config, 1, 1))
    start = time.perf_counter()
    report = simulate(program, config, x)
    simulate_s = time.perf_counter() - start
    return [name, f"{quantise_s:.2f}", f"{simulate_s:.2f}", f"{TARGET_SECONDS[name]}",
            "yes" if simulate_s <= TARGET_SECONDS[name] else "NO", f"{report.total_cycles:,}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="accelerator TOML for the functional runs (default: built-in)")
    args = parser.parse_args()
    config = load_config(args.config)

    start = time.perf_counter()
    warm, _ = quantised("mnist")
    simulate(warm, config, warm.quantize_input(random_images(warm.config, 1, 1)))
    print(f"warm-up (numba compilation, MNIST-sized model): {time.perf_counter() - start:.2f} s\n")

    rows = [time_functional(name, config) for name in ("deit-tiny", "deit-base")]
    print("one image, functional + cycle simulation (quantisation excluded, shown apart)")
    print(format_table(["model", "quantise s", "simulate s", "target s", "met", "cycles"], rows,
                       align="lrrrlr"))

    start = time.perf_counter()
    program, quantise_s = quantised("deit-small")
    sweep_config = config.with_(buffers__ifmap_bytes=SWEEP_BUFFER_BYTES, buffers__weight_bytes=SWEEP_BUFFER_BYTES,
                                buffers__ofmap_bytes=SWEEP_BUFFER_BYTES)
    cycles_start = time.perf_counter()
    rows = sweep_rows(program, sweep_config, SWEEP_ARRAYS, SWEEP_DATAFLOWS, SWEEP_BANDWIDTHS, "native", 1)
    end = time.perf_counter()
    total_s, per_config_ms = end - start, (end - cycles_start) * 1e3 / len(rows)
    print(f"\nsweep over deit-small: {len(rows)} configs in {total_s:.2f} s (target {TARGET_SECONDS['sweep']} s: "
          f"{'met' if total_s <= TARGET_SECONDS['sweep'] else 'NOT met'}), including the model and its shape "
          f"program (quantisation {quantise_s:.2f} s)")
    print(f"cycle model only: {per_config_ms:.1f} ms per config ({len(program.ops)} ops each)")
    unfit = [row for row in rows if row["note"]]
    if unfit:
        print(f"{len(unfit)} configs did not fit their buffers: {unfit[0]['note']}")


if __name__ == "__main__":
    main()
