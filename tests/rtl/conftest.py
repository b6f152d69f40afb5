"""Fixtures for RTL tests: a cocotb ``bench`` runner that skips without Icarus, and bench timings.

``bench(design, toplevel=..., test_module=..., params=...)`` builds each run in its own
directory under ``tmp_path`` (safe under pytest-xdist) and records the wall time as the
``bench_wall_s`` user property; the terminal summary lists those times, so the cost of each
cocotb bench stays visible (also with ``-n 2``, where the properties travel to the controller). A test may also record a text
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

from runner import iverilog_missing, run_bench  # noqa: E402

BENCH_WALL = "bench_wall_s"
REPORT = "rtl_report"


@pytest.fixture
def bench(tmp_path, record_property):
    reason = iverilog_missing()
    if reason is not None:
        pytest.skip(reason)
    counter = itertools.count()

    def run(design, **kwargs):
        result = run_bench(design, build_dir=tmp_path / f"bench{next(counter)}", **kwargs)
        record_property(BENCH_WALL, round(result.wall_s, 2))
        return result

    return run


def pytest_terminal_summary(terminalreporter):
    timings, texts = [], []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            properties = getattr(report, "user_properties", ())
            walls = [value for name, value in properties if name == BENCH_WALL]
            if walls:
                timings.append((sum(walls), report.nodeid))
            texts += [value for name, value in properties if name == REPORT]
    if timings:
        terminalreporter.write_sep("-", "cocotb bench wall times")
        for wall, nodeid in sorted(timings, reverse=True):
            terminalreporter.write_line(f"{wall:7.2f} s  {nodeid}")
    if texts:
        terminalreporter.write_sep("-", "RTL measurements")
        for text in texts:
            terminalreporter.write_line(text)
