"""Wall-clock of the commands as a user runs them, cold and warm, in one run.

Each command runs as its own process (``.venv/bin/intvit`` next to this interpreter) with a
private program cache: "cold" starts from an empty cache, "warm" finds the program that the
cold run stored. For every command the median wall time and the CPU time (user + system, of
the process and its children) are printed next to its target. CPU time barely moves when other
jobs share the cores; wall time does, so the load average is printed before and after.

    python benchmarks/commands.py                 # every command, 3 runs of the quick ones
    python benchmarks/commands.py --repeats 5 --only help simulate-cycles
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INTVIT = str(Path(sys.executable).with_name("intvit"))
# (name, argv after intvit, cache state, target seconds, runs at most): a warm run follows its cold one.
COMMANDS = (
    ("help", ["--help"], "cold", 1.0, None),
    ("bad option", ["simulate", "--no-such-option"], "cold", 1.0, None),
    ("simulate deit-tiny --no-functional", ["simulate", "--model", "deit-tiny", "--no-functional"], "cold", 3.0, 1),
    ("simulate deit-tiny --no-functional", ["simulate", "--model", "deit-tiny", "--no-functional"], "warm", 3.0, None),
    ("simulate deit-tiny", ["simulate", "--model", "deit-tiny"], "cold", 10.0, 1),
    ("simulate deit-tiny", ["simulate", "--model", "deit-tiny"], "warm", 5.0, None),
    ("accuracy (demo)", ["accuracy"], "cold", None, 1),
    ("accuracy (demo)", ["accuracy"], "warm", 8.0, None),
)


def run_once(argv: list[str], cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``intvit`` process, its output discarded."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    start = time.perf_counter()
    process = subprocess.Popen([INTVIT, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode()
    process.stderr.close()
    if process.returncode not in (0, 2):
        raise SystemExit(f"intvit {' '.join(argv)} failed ({process.returncode}):\n{error}")
    return wall, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> list[tuple[str, str, float, float, float | None]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each warm or quick command (default: 3)")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only commands whose name contains a WORD")
    args = parser.parse_args(argv)

    print(f"intvit commands, median of up to {args.repeats} runs; load average {os.getloadavg()[0]:.2f} before")
    print(f"{'command':<36}  {'cache':<5}  {'wall s':>7}  {'CPU s':>6}  {'target':>7}")
    results = []
    cache = Path(tempfile.mkdtemp(prefix="intvit-bench-cache-"))
    try:
        for name, command, state, target, most in COMMANDS:
            if args.only and not any(word in name for word in args.only):
                continue
            if state == "cold":
                shutil.rmtree(cache / "intvit", ignore_errors=True)
            runs = [run_once(command, cache) for _ in range(min(args.repeats, most or args.repeats))]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            verdict = "" if target is None else ("ok" if wall <= target else "misses")
            goal = "-" if target is None else f"<= {target:g}"
            print(f"{name:<36}  {state:<5}  {wall:>7.2f}  {cpu:>6.2f}  {goal:>7}  {verdict}", flush=True)
            results.append((name, state, wall, cpu, target))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} after")
    return results


if __name__ == "__main__":
    main()
