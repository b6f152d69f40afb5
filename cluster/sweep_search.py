"""``intvit sweep --search``: the options, the run and the report (table, CSV, plot) of a design-space search."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from intvit.cluster.search import (DERIVED, SAMPLERS, SEARCH_COLUMNS, SearchSpace, check_objectives,
                                   objective_values, search)
from intvit.quant.errors import IntVitError

__all__ = ["DEFAULT_OBJECTIVES", "add_search_arguments", "run_search", "parse_sizes"]

# Speed against hardware cost: the area model's figure where the sweep reports one, else the
# array's MACs as a stand-in.
DEFAULT_OBJECTIVES = ("latency_us,area_mm2", "latency_us,macs")


def parse_sizes(option: str, text: str) -> list[int]:
    """``"4,8"`` -> ``[4, 8]``, positive integers, for ``option``'s one-line error."""
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value <= 0:
            raise IntVitError(f"{option}: {item.strip()!r} is not a positive integer")
        values.append(value)
    return values


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "search", "--search explores --arrays x --dataflows x --bandwidths x --lanes x --buffers with Optuna "
                  "instead of simulating every point, and reports the Pareto front of --objectives")
    group.add_argument("--search", action="store_true", help="search the space instead of sweeping the grid")
    group.add_argument("--lanes", metavar="LIST",
                       help="lanes of every element-wise unit (default: the config's requantiser lanes)")
    group.add_argument("--buffers", metavar="LIST",
                       help="bytes of each on-chip buffer (default: the config's ifmap buffer)")
    group.add_argument("--objectives", metavar="LIST",
                       help="quantities to minimise: result columns (latency_us, cycles, dram_bytes, ...) or "
                            f"{', '.join(DERIVED)} (default: {DEFAULT_OBJECTIVES[0]} where the sweep reports "
                            f"area, else {DEFAULT_OBJECTIVES[1]})")
    from intvit.commands.common import positive_int

    group.add_argument("--trials", type=positive_int, metavar="N",
                       help="most distinct configurations to evaluate (default: a quarter of the space; "
                            "the whole space if N covers it)")
    group.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                       help="Optuna sampler: multi-objective TPE or NSGA-II (default: %(default)s)")
    group.add_argument("--search-seed", type=int, default=0, metavar="N", help="sampler seed (default: 0)")


def run_search(args: argparse.Namespace, program, base, arrays, dataflows, bandwidths, map_configs) -> int:
    """Search, print the Pareto front, write ``--out``/``--plot``; returns the exit status."""
    from intvit.commands.common import progress
    from intvit.commands.sweep import COLUMNS, simulate_point
    from intvit.sim.report import format_table

    text = args.objectives or DEFAULT_OBJECTIVES[0 if "area_mm2" in COLUMNS else 1]
    objectives = [name.strip() for name in text.split(",")]
    check_objectives(objectives, COLUMNS)
    if args.plot and len(objectives) < 2:
        raise IntVitError("--plot: a Pareto plot needs two --objectives")
    space = SearchSpace(
        arrays=tuple(arrays), dataflows=tuple(dataflows), bandwidths=tuple(bandwidths),
        lanes=tuple(parse_sizes("--lanes", args.lanes) if args.lanes else [base.requant.lanes]),
        buffers=tuple(parse_sizes("--buffers", args.buffers) if args.buffers else [base.buffers.ifmap_bytes]))
    budget = args.trials or max(1, space.size // 4)
    shared = (program, args.mode, args.batch)
    bar = None if map_configs else progress(None, "search", total=min(budget, space.size), unit="config")

    def evaluate(points: list[dict]) -> list[dict]:
        configs = [SearchSpace.config(base, point) for point in points]
        if map_configs:
            return map_configs(simulate_point, shared, configs)
        results = []
        for config in configs:
            results.append(simulate_point(*shared, config))
            bar.update()
        return results

    try:
        rows = search(space, evaluate, objectives, budget=budget, seed=args.search_seed, sampler=args.sampler)
    finally:
        if bar is not None:
            bar.close()
    front = sorted((row for row in rows if row["pareto"]), key=lambda row: objective_values(row, objectives))
    if not front:
        raise IntVitError(f"no evaluated configuration fits: array {rows[0]['array']}, "
                          f"{rows[0]['dataflow']}: {rows[0]['note']}")
    how = "every point" if budget >= space.size else f"{args.sampler}, seed {args.search_seed}"
    print(f"{program.config.name}: {len(rows)} of {space.size} configurations evaluated ({how}), "
          f"{args.mode} cycles, batch {args.batch}; Pareto front of {', '.join(objectives)}: "
          f"{len(front)} configurations\n")
    print(format_table(
        ["array", "dataflow", "B/cycle", "lanes", "buffer B", *objectives],
        [[row["array"], row["dataflow"], f"{row['bandwidth']:g}", str(row["lanes"]), str(row["buffer_bytes"]),
          *(f"{value:,.6g}" for value in objective_values(row, objectives))] for row in front],
        align="llrrr" + "r" * len(objectives)))
    if args.out:
        _write_csv(args.out, rows, [*SEARCH_COLUMNS, *(c for c in COLUMNS if c not in SEARCH_COLUMNS), "pareto"])
        print(f"\nwrote {args.out}")
    if args.plot:
        _plot(rows, objectives[:2], args.plot, f"{program.config.name}: {len(rows)} of {space.size} evaluated")
        print(f"wrote {args.plot}")
    return 0


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _plot(rows: list[dict], objectives: list[str], path: str, title: str) -> None:
    # A bare Figure draws on the Agg canvas without touching pyplot's global backend.
    from matplotlib.figure import Figure

    points = [(objective_values(row, objectives), row["pareto"]) for row in rows if not row["note"]]
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    others = [v for v, on_front in points if not on_front]
    if others:
        ax.scatter(*zip(*others), s=12, color="0.6", label="evaluated")
    front = sorted(v for v, on_front in points if on_front)
    ax.step(*zip(*front), where="post", color="tab:red", marker="o", label="Pareto front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(objectives[0])
    ax.set_ylabel(objectives[1])
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
