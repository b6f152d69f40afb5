"""Golden integer executor vs float torch on DeiT-Tiny shapes, on the same CPU in one run.

Random timm-initialised weights, calibrated on a few random images. For each thread count and
batch size the float model and the integer program run a warm-up pass, then ``--repeats`` timed
passes, interleaved so that a neighbour's load hits both alike; the median per image is printed
with the integer/float ratio (target: <= 1.2x). ``--profile`` also splits one integer pass by op
kind and lists the slowest ops, to show which kernel dominates.

    python benchmarks/executor.py                    # 1 and 2 threads, batch 1 and 16
    python benchmarks/executor.py --profile --threads 1 --batches 16
    python benchmarks/executor.py --isa avx2         # torch, oneDNN, MKL and OpenBLAS held to AVX2

Both sides get the same threads: torch's intra-op pool, numba's prange pool and numpy's BLAS
(OpenBLAS, through threadpoolctl). ``--isa avx2`` re-runs the script with every library held to
AVX2 (no AVX-512, no VNNI/AMX), numba's integer kernels included, the instruction set of the AMD
EPYC machines this project also runs on. On a shared machine a busy core stalls every multi-threaded op, so say how loaded it was:
the load average is printed before and after, and the CPU time of each side next to its wall time.
There, OpenMP workers that spin while they wait (torch's and numba's pools take turns) burn the
other core: ``OMP_WAIT_POLICY=PASSIVE`` (as ``intvit accuracy`` sets) holds both sides to the
same sleeping wait; the header names the policy in force.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

MODEL = "deit-tiny"
TARGET_RATIO = 1.2
CALIBRATION_IMAGES = 4
CALIBRATION_TIMED_IMAGES = 32            # calibration pass vs plain forward, batches of 16
SLOWEST_OPS = 12
# Environment that holds torch (ATen, oneDNN, MKL), numpy's OpenBLAS and numba's LLVM to AVX2 code
# (numba compiles for a Haswell, AVX2 + FMA, and caches those kernels apart from the host's).
AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell"}


def cpu_name() -> str:
    """The CPU model and its vector extensions that matter here, from /proc/cpuinfo."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("flags\t\t", fields.get("flags", "")).split()
    name = fields.get("model name\t", fields.get("model name", "unknown CPU")).strip()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def median_seconds(runs: dict[str, Callable[[], object]], repeats: int,
                   cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall time of each callable, the callables taking turns within every repeat.

    With ``cpu``, also fills it with each callable's median CPU time (this process, all threads),
    which a neighbour's load moves far less than the wall time.
    """
    for run in runs.values():
        run()                                       # warm-up: numba cache load, allocator, torch kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: statistics.median(values) for name, values in cpu_times.items()})
    return {name: statistics.median(values) for name, values in times.items()}


def profile(program, x) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Seconds per op kind (or fused chain) and per op for one ``run_program`` pass, timed kernel by kernel.

    The kernels and fused chains are wrapped in place for the one pass, so tensors are freed as
    in a normal run; a fused chain is named by its kinds joined with ``+`` and by its matmul.
    """
    from intvit.quant.executor import FUSED, KERNELS, run_program

    by_kind: dict[str, float] = defaultdict(float)
    by_op = []
    tables = (KERNELS, FUSED)
    originals = [dict(table) for table in tables]

    def timed(kind, kernel):
        def run(op, *args):                     # op: an Op, or a fused chain's list of them
            start = time.perf_counter()
            result = kernel(op, *args)
            elapsed = time.perf_counter() - start
            by_kind[kind] += elapsed
            by_op.append((elapsed, op.name if isinstance(kind, str) else op[0].name))
            return result
        return run

    for table, original in zip(tables, originals):
        table.update({kind: timed(kind, kernel) for kind, kernel in original.items()})
    try:
        run_program(program, x)
    finally:
        for table, original in zip(tables, originals):
            table.update(original)
    return dict(by_kind), sorted(by_op, reverse=True)


def main(argv: list[str] | None = None) -> dict[tuple[int, int], tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: hold torch and OpenBLAS to AVX2 kernels (re-runs this script)")
    parser.add_argument("--profile", action="store_true", help="time one integer pass op by op")
    args = parser.parse_args(argv)
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENVIRONMENT.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENVIRONMENT})

    import numba
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from intvit.quant.config import get_config
    from intvit.quant.executor import run_program
    from intvit.quant.model import ViT
    from intvit.quant.ptq import quantize_model

    torch.manual_seed(0)
    config = get_config(MODEL)
    model = ViT(config).eval()
    rng = np.random.default_rng(0)
    shape = (config.in_chans, config.img_size, config.img_size)
    program = quantize_model(model, rng.normal(size=(CALIBRATION_IMAGES, *shape)).astype(np.float32))

    print(f"{MODEL} on {cpu_name()}, kernels {args.isa} (torch: {torch.backends.cpu.get_cpu_capability()}, "
          f"numba: {numba.config.CPU_NAME or 'host'}), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"median of {args.repeats} after a warm-up; load average {os.getloadavg()[0]:.2f} before")
    print(f"{'threads':>7}  {'batch':>5}  {'float ms/img':>12}  {'integer ms/img':>14}  {'ratio':>6}  "
          f"{'':<13}  {'CPU ms/img: float':>17}  {'integer':>7}  {'ratio':>6}")
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        with threadpool_limits(threads):
            for batch in args.batches:
                images = rng.normal(size=(batch, *shape)).astype(np.float32)
                x_float = torch.from_numpy(images)
                x_int = program.quantize_input(images)

                def run_float():
                    with torch.no_grad():
                        return model(x_float)

                cpu: dict[str, float] = {}
                seconds = median_seconds({"float": run_float, "integer": lambda: run_program(program, x_int)},
                                         args.repeats, cpu)
                float_s, int_s = seconds["float"] / batch, seconds["integer"] / batch
                results[threads, batch] = (float_s, int_s)
                verdict = "ok" if int_s <= TARGET_RATIO * float_s else f"misses {TARGET_RATIO:g}x"
                print(f"{threads:>7}  {batch:>5}  {float_s * 1e3:>12.2f}  {int_s * 1e3:>14.2f}  "
                      f"{int_s / float_s:>5.2f}x  {verdict:<13}  {cpu['float'] / batch * 1e3:>17.2f}  "
                      f"{cpu['integer'] / batch * 1e3:>7.2f}  {cpu['integer'] / cpu['float']:>5.2f}x", flush=True)
                if args.profile:
                    by_kind, by_op = profile(program, x_int)
                    total = sum(by_kind.values())
                    print(f"  profile, {threads} threads, batch {batch}: {total * 1e3:.1f} ms per pass")
                    for kind, spent in sorted(by_kind.items(), key=lambda item: -item[1]):
                        kind = kind if isinstance(kind, str) else "+".join(kind)
                        print(f"    {kind:<28} {spent * 1e3:8.1f} ms  {100 * spent / total:5.1f}%")
                    for spent, name in by_op[:SLOWEST_OPS]:
                        print(f"    {name:<28} {spent * 1e3:8.1f} ms")
    calibration_vs_forward(model, rng.normal(size=(CALIBRATION_TIMED_IMAGES, *shape)).astype(np.float32),
                           args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f} after")
    return results


def calibration_vs_forward(model, images, repeats: int) -> tuple[float, float]:
    """Seconds of a minmax calibration pass (forward hooks + running max) and of a plain forward."""
    import torch

    from intvit.quant.calibrate import ActivationRanges, batches, record_activations

    def plain():
        with torch.no_grad():
            for chunk in batches(images, 16):
                model(torch.from_numpy(chunk))

    def calibrate():
        ranges = ActivationRanges()
        for chunk in batches(images, 16):
            record_activations(model, chunk, ranges)

    seconds = median_seconds({"calibrate": calibrate, "plain": plain}, repeats)
    print(f"calibration pass vs plain float forward, {len(images)} images, {torch.get_num_threads()} threads: "
          f"{seconds['calibrate']:.2f} s vs {seconds['plain']:.2f} s ({seconds['calibrate'] / seconds['plain']:.2f}x)")
    return seconds["calibrate"], seconds["plain"]


if __name__ == "__main__":
    main()
