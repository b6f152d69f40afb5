"""Golden integer executor vs float torch on DeiT-Tiny shapes, on the same CPU in one run.

Random timm-initialised weights, calibrated on a few random images. For each batch size the
float model and the integer program run a warm-up pass, then ``--repeats`` timed passes; the
median per image is printed with the integer/float ratio (target: <= 2x). ``--profile`` also
splits one integer pass by op kind and lists the slowest ops, to show which kernel dominates.

    python benchmarks/executor.py                    # batch 1 and 16, all cores
    python benchmarks/executor.py --profile --batches 16
    python benchmarks/executor.py --threads 1        # fair on a machine shared with other jobs

On a shared machine a busy core stalls every multi-threaded op (torch's and numba's pools wait
for a scheduler slice, ~8 ms per op), which swamps batch-1 figures; one thread avoids that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numba
import numpy as np
import torch

from intvit.quant.config import get_config
from intvit.quant.executor import KERNELS, run_program
from intvit.quant.model import ViT
from intvit.quant.program import IntProgram
from intvit.quant.ptq import quantize_model

MODEL = "deit-tiny"
TARGET_RATIO = 2.0
CALIBRATION_IMAGES = 4
SLOWEST_OPS = 12


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()                                            # warm-up: numba cache load, allocator, torch kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(program: IntProgram, x: np.ndarray) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Seconds per op kind and per op for one ``run_program`` pass, timed kernel by kernel.

    The kernels are wrapped in place for the one pass, so tensors are freed as in a normal run.
    """
    by_kind: dict[str, float] = defaultdict(float)
    by_op = []
    original = dict(KERNELS)

    def timed(kind, kernel):
        def run(op, *args):
            start = time.perf_counter()
            result = kernel(op, *args)
            elapsed = time.perf_counter() - start
            by_kind[kind] += elapsed
            by_op.append((elapsed, op.name))
            return result
        return run

    KERNELS.update({kind: timed(kind, kernel) for kind, kernel in original.items()})
    try:
        run_program(program, x)
    finally:
        KERNELS.update(original)
    return dict(by_kind), sorted(by_op, reverse=True)


def main(argv: list[str] | None = None) -> dict[int, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--profile", action="store_true", help="time one integer pass op by op")
    args = parser.parse_args(argv)

    # Both runtimes get the same cores: torch's intra-op pool and numba's prange pool.
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config(MODEL)
    model = ViT(config).eval()
    rng = np.random.default_rng(0)
    shape = (config.in_chans, config.img_size, config.img_size)
    program = quantize_model(model, rng.normal(size=(CALIBRATION_IMAGES, *shape)).astype(np.float32))

    print(f"{MODEL}, {args.threads} threads, median of {args.repeats} after a warm-up")
    print(f"{'batch':>5}  {'float ms/img':>12}  {'integer ms/img':>14}  {'ratio':>6}")
    results = {}
    for batch in args.batches:
        images = rng.normal(size=(batch, *shape)).astype(np.float32)
        x_float = torch.from_numpy(images)
        x_int = program.quantize_input(images)

        def run_float():
            with torch.no_grad():
                return model(x_float)

        float_s = median_seconds(run_float, args.repeats) / batch
        int_s = median_seconds(lambda: run_program(program, x_int), args.repeats) / batch
        results[batch] = (float_s, int_s)
        verdict = "ok" if int_s <= TARGET_RATIO * float_s else f"misses {TARGET_RATIO:g}x"
        print(f"{batch:>5}  {float_s * 1e3:>12.2f}  {int_s * 1e3:>14.2f}  {int_s / float_s:>5.2f}x  {verdict}")
        if args.profile:
            by_kind, by_op = profile(program, x_int)
            total = sum(by_kind.values())
            print(f"  profile, batch {batch}: {total * 1e3:.1f} ms per pass")
            for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
                print(f"    {kind:<13} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f}%")
            for seconds, name in by_op[:SLOWEST_OPS]:
                print(f"    {name:<28} {seconds * 1e3:8.1f} ms")
    return results


if __name__ == "__main__":
    main()
