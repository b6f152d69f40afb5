"""One process against a local Dask cluster: same bytes out, and the wall-clock ratio, measured in one run.

    python benchmarks/cluster.py [--workers 2]

1. ``intvit accuracy --model deit-tiny --limit 64 --batch-size 8`` on a seeded synthetic
   ImageFolder (1,000 class folders, as DeiT's head needs; nothing is downloaded), with
   ``--workers 1`` and ``--workers N``: the two ``--json`` files must be byte-identical.
2. ``intvit sweep`` of 64 configurations of DeiT-Small, ``--workers 1`` and ``--workers N``: the
   two ``--out`` CSV files must be byte-identical.

Each command runs as a fresh ``intvit`` process with its own empty program cache, so both
sides calibrate and the cluster side pays for starting its workers: the ratio is what a user
sees. Exit status 1 if any output differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 1000
IMAGES_PER_CLASS, CLASSES_WITH_IMAGES = 5, 32
ACCURACY = ["accuracy", "--model", "deit-tiny", "--limit", "64", "--batch-size", "8", "--calib-size", "16"]
SWEEP = ["sweep", "--model", "deit-small", "--arrays", "8x8,16x16,32x32,64x64", "--dataflows", "os,ws",
         "--bandwidths", "4,8,16,32,64,128,256,512"]


def make_image_folder(root: Path, seed: int = 0) -> Path:
    """1,000 class folders, the first 32 with 5 smooth random 256x256 RGB images each."""
    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True)
        if label < CLASSES_WITH_IMAGES:
            for i in range(IMAGES_PER_CLASS):
                coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(coarse).resize((256, 256), Image.BICUBIC).save(folder / f"{i}.png")
    return root


def timed(args: list[str], scratch: Path) -> float:
    """Run ``intvit ARGS`` in a fresh process with an empty program cache; wall seconds."""
    cache = Path(tempfile.mkdtemp(dir=scratch, prefix="cache"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "intvit.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"intvit {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def compare(name: str, args: list[str], output_option: str, suffix: str, workers: int, scratch: Path) -> bool:
    one, many = scratch / f"{name}-1{suffix}", scratch / f"{name}-{workers}{suffix}"
    t1 = timed([*args, "--workers", "1", output_option, str(one)], scratch)
    tn = timed([*args, "--workers", str(workers), output_option, str(many)], scratch)
    same = one.read_bytes() == many.read_bytes()
    print(f"{name:9s} --workers 1: {t1:6.1f} s   --workers {workers}: {tn:6.1f} s   "
          f"speed-up {t1 / tn:.2f}x   {output_option} byte-identical: {'yes' if same else 'NO'}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the cluster side (default: 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="intvit-cluster-bench") as tmp:
        scratch = Path(tmp)
        data = make_image_folder(scratch / "images")
        print(f"{os.cpu_count()} CPUs; each side a fresh process, its own empty program cache")
        same = compare("accuracy", [*ACCURACY, "--data", str(data)], "--json", ".json", args.workers, scratch)
        same &= compare("sweep", SWEEP, "--out", ".csv", args.workers, scratch)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
