"""``intvit sweep``: cycle-only simulations of one model over array sizes, dataflows and bandwidths.

Cycles depend only on the program's shapes and bit widths, never on weight or activation
values, so the program is built once from the model's shapes alone (``common.shape_program``:
no weights, data or calibration; or loaded with ``--program``), and every configuration runs
``simulate(..., functional=False)``. A configuration whose buffers cannot hold one tile
(native mode) is a point of the design space, not an error: it is listed as not fitting,
with empty metrics in the CSV; only a sweep where nothing fits fails.
"""

from __future__ import annotations

import argparse
import csv
import functools
import re

from intvit.quant.atomic import atomic_file, check_output_file
from intvit.quant.errors import IntVitError
from intvit.cluster.engine import add_cluster_arguments, cluster_mapper
from intvit.cluster.search import pareto_mask
from intvit.cluster.sweep_search import add_search_arguments, parse_sizes, run_search
from intvit.commands.common import add_model_arguments, positive_int, progress, shape_program
from intvit.sim.config import DATAFLOWS, load_config
from intvit.sim.energy import ELEMENT_UNITS
from intvit.sim.matmul import MODES
from intvit.sim.report import UNIT_ORDER, check_plot_path, format_count, format_table, plot_pareto

__all__ = ["register", "run", "parse_arrays", "parse_bandwidths", "parse_dataflows", "simulate_point", "sweep_rows",
           "COLUMNS"]

ARRAY_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
POINT_COLUMNS = ("array", "rows", "cols", "dataflow", "bandwidth", "lanes", "buffer_bytes")
# Cost columns (sim.energy): energy per image, the linear area model, energy-delay product per
# image, and the latency at the clock the FPGA reaches (min of the config's clock and --fmax-mhz).
COST_COLUMNS = ("energy_uj", "area_mm2", "edp_uj_us", "fmax_latency_us")
METRIC_COLUMNS = ("cycles", "latency_us", "images_per_second", "utilization", "dram_bytes", "memory_bound_share",
                  *(f"{unit}_cycles" for unit in UNIT_ORDER), *COST_COLUMNS)
COLUMNS = (*POINT_COLUMNS, *METRIC_COLUMNS, "note")
# No clock limit unless --fmax-mhz gives one (e.g. the post-route Fmax of `intvit synth --target ecp5`).
ECP5_FMAX_MHZ = 0.0


def parse_arrays(text: str) -> list[tuple[int, int]]:
    """``"8x8,16x32"`` -> ``[(8, 8), (16, 32)]`` (rows x cols)."""
    arrays = []
    for item in text.split(","):
        match = ARRAY_SIZE.match(item)
        if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
            raise IntVitError(f"--arrays: {item.strip()!r} is not ROWSxCOLS with positive integers (e.g. 16x16)")
        arrays.append((int(match.group(1)), int(match.group(2))))
    return arrays


def parse_bandwidths(text: str) -> list[int | float]:
    """``"8,16,0.5"`` -> ``[8, 16, 0.5]`` bytes per cycle."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = 0.0
        if not value > 0 or value == float("inf"):
            raise IntVitError(f"--bandwidths: {item.strip()!r} is not a positive number of bytes per cycle")
        values.append(int(value) if value.is_integer() else value)
    return values


def parse_dataflows(text: str) -> list[str]:
    """``"os,ws"`` -> ``["os", "ws"]``, each one of ``sim.config.DATAFLOWS``."""
    flows = [item.strip().lower() for item in text.split(",")]
    for flow in flows:
        if flow not in DATAFLOWS:
            raise IntVitError(f"--dataflows: unknown dataflow {flow!r}; expected {', '.join(DATAFLOWS)}")
    return flows


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="cycle-only simulations over array sizes, dataflows and bandwidths",
        description="Simulate one model (cycles only) on every combination of --arrays, --dataflows and "
        "--bandwidths, starting from --config; print a table, optionally write CSV and a latency plot.",
    )
    add_model_arguments(parser)
    parser.add_argument("--program", metavar="FILE", help="use this integer program instead of quantising")
    parser.add_argument("--config", metavar="FILE", help="base accelerator TOML (default: built-in)")
    parser.add_argument("--arrays", default="8x8,16x16,32x32,64x64", help="ROWSxCOLS list (default: %(default)s)")
    parser.add_argument("--dataflows", default="os,ws,is", help="dataflow list (default: %(default)s)")
    parser.add_argument("--bandwidths", default="8,16,32,64",
                        help="off-chip bytes per cycle list (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="native", help="MatMul cycle convention (default: native)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="N", help="images per inference (default: 1)")
    parser.add_argument("--out", metavar="FILE.csv", help="write one CSV row per configuration")
    parser.add_argument("--plot", metavar="FILE.png", help="Pareto fronts of latency against energy per image "
                        "and against area, over every configuration")
    parser.add_argument("--fmax-mhz", type=float, default=ECP5_FMAX_MHZ, metavar="MHZ",
                        help="clock limit for the fmax_latency_us column, e.g. the post-route Fmax that "
                             "intvit synth --target ecp5 reports (default: %(default)s, no limit)")
    add_cluster_arguments(parser, "configurations")
    add_search_arguments(parser)
    parser.set_defaults(run=run)


def sweep_rows(program, base, arrays, dataflows, bandwidths, mode: str, batch: int, map_configs=None,
               lanes=None, buffers=None, fmax_mhz: float = ECP5_FMAX_MHZ) -> list[dict]:
    """One dict per configuration, keys ``COLUMNS``, in array, dataflow, bandwidth, lanes, buffer order.

    A configuration whose buffers cannot hold one tile (native mode) gets ``None`` metrics
    and the reason in ``note``. ``map_configs(simulate_point, shared, configs)``, if given,
    computes the configurations elsewhere (``intvit.cluster``) and returns them in order.
    ``lanes`` (of every element-wise unit) and ``buffers`` (bytes of each operand buffer) keep
    the base config's when not given.
    """
    grid = [(a, d, b, n, s) for a in arrays for d in dataflows for b in bandwidths
            for n in (lanes or [None]) for s in (buffers or [None])]
    points, configs = [], []
    for (r, c), flow, bandwidth, n, size in grid:
        config = base.with_(matmul__rows=r, matmul__cols=c, matmul__dataflow=flow,
                            memory__bandwidth_bytes_per_cycle=bandwidth,
                            **({f"{unit}__lanes": n for unit in ELEMENT_UNITS} if n else {}),
                            **({f"buffers__{b}_bytes": size for b in ("ifmap", "weight", "ofmap")} if size else {}))
        points.append({"array": f"{r}x{c}", "rows": r, "cols": c, "dataflow": flow, "bandwidth": bandwidth,
                       "lanes": config.requant.lanes, "buffer_bytes": config.buffers.ifmap_bytes})
        configs.append(config)
    shared = (program, mode, batch)
    point = functools.partial(simulate_point, fmax_mhz=fmax_mhz)
    if map_configs is not None:
        metrics = map_configs(point, shared, configs)
    else:
        metrics = [point(*shared, config) for config in progress(configs, "sweep", len(configs), unit="config")]
    return [{**point, **values} for point, values in zip(points, metrics)]


def simulate_point(program, mode: str, batch: int, config, *, fmax_mhz: float = ECP5_FMAX_MHZ) -> dict:
    """The ``METRIC_COLUMNS`` and ``note`` for one accelerator ``config``; ``fmax_mhz`` caps the clock of
    ``fmax_latency_us`` (none when 0)."""
    from intvit.sim.energy import area_um2, energy_report
    from intvit.sim.simulator import simulate

    try:
        report = simulate(program, config, batch=batch, mode=mode, functional=False)
    except IntVitError as exc:     # a tile that does not fit the buffers: a point of the space, not a bug
        return {**dict.fromkeys(METRIC_COLUMNS), "note": str(exc)}
    energy = energy_report(program, report, mode)
    clock = min(config.clock_mhz, fmax_mhz) if fmax_mhz > 0 else config.clock_mhz
    total = report.total_cycles
    units = report.unit_cycles()
    memory = sum(op.exposed_cycles for op in report.ops if op.bound == "memory")
    return {
        "cycles": total, "latency_us": report.latency_us, "images_per_second": report.images_per_second,
        "utilization": report.utilization, "dram_bytes": report.dram_bytes(),
        "memory_bound_share": memory / total,
        **{f"{unit}_cycles": units.get(unit, 0) for unit in UNIT_ORDER},
        "energy_uj": energy.energy_uj, "area_mm2": area_um2(config) * 1e-6,
        "edp_uj_us": energy.energy_uj * report.latency_us / batch, "fmax_latency_us": total / clock, "note": "",
    }


def _table_row(row: dict) -> list[str]:
    head = [row["array"], row["dataflow"], f"{row['bandwidth']:g}"]
    tail = [str(row["lanes"]), f"{row['buffer_bytes'] / 1024:g}"]
    if row["note"]:
        return head + ["does not fit"] + ["-"] * 8 + tail
    return head + [format_count(row["cycles"]), f"{row['latency_us']:,.1f}", f"{row['images_per_second']:,.1f}",
                   f"{100 * row['utilization']:.1f}%", format_count(row["dram_bytes"]),
                   f"{100 * row['memory_bound_share']:.1f}%", f"{row['energy_uj']:,.1f}", f"{row['area_mm2']:.2f}",
                   f"{row['edp_uj_us']:,.4g}"] + tail


def _write_csv(path: str, rows: list[dict]) -> None:
    with atomic_file(path) as temp, temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# The quantities a designer trades: latency against energy per image, latency against area.
PARETO_PAIRS = (("latency_us", "energy_uj"), ("latency_us", "area_mm2"))
AXIS_LABELS = {"latency_us": "latency per batch (µs)", "energy_uj": "energy per image (µJ)",
               "area_mm2": "area, NanGate 45 nm (mm²)"}


def _plot(rows: list[dict], path: str, title: str) -> None:
    """Pareto fronts of ``PARETO_PAIRS`` over the configurations that fit, coloured by array."""
    fits = [row for row in rows if not row["note"]]
    panels = []
    for x, y in PARETO_PAIRS:
        values = [(row[x], row[y]) for row in fits]
        panels.append({"x": AXIS_LABELS[x], "y": AXIS_LABELS[y], "front": pareto_mask(values),
                       "points": [(vx, vy, row["array"]) for (vx, vy), row in zip(values, fits)]})
    plot_pareto(panels, path, title)


def run(args: argparse.Namespace) -> int:
    if not args.fmax_mhz >= 0 or args.fmax_mhz == float("inf"):
        raise IntVitError(f"--fmax-mhz must be a non-negative number of MHz (0: no limit), not {args.fmax_mhz:g}")
    arrays = parse_arrays(args.arrays)
    dataflows = parse_dataflows(args.dataflows)
    bandwidths = parse_bandwidths(args.bandwidths)
    if args.plot:
        check_plot_path(args.plot)
    if args.out:
        check_output_file(args.out)
    base = load_config(args.config)
    with cluster_mapper(args, "sweep", "config") as map_configs:
        program = shape_program(args)
        if args.search:
            return run_search(args, program, base, arrays, dataflows, bandwidths, map_configs)
        rows = sweep_rows(program, base, arrays, dataflows, bandwidths, args.mode, args.batch, map_configs,
                          lanes=parse_sizes("--lanes", args.lanes) if args.lanes else None,
                          buffers=parse_sizes("--buffers", args.buffers) if args.buffers else None,
                          fmax_mhz=args.fmax_mhz)
    if all(row["note"] for row in rows):
        raise IntVitError(f"no configuration fits: array {rows[0]['array']}, {rows[0]['dataflow']}: {rows[0]['note']}")
    print(f"{program.config.name}: {len(rows)} configurations, {args.mode} cycles, batch {args.batch}, "
          f"{base.clock_mhz:g} MHz\n")
    print(format_table(
        ["array", "dataflow", "B/cycle", "cycles", "latency µs", "images/s", "util", "DRAM B", "mem-bound",
         "µJ/image", "mm²", "EDP µJ·µs", "lanes", "buf KiB"],
        [_table_row(row) for row in rows], align="llrrrrrrrrrrrr"))
    for row in rows:
        if row["note"]:
            print(f"{row['array']} {row['dataflow']} {row['bandwidth']:g} B/cycle does not fit: {row['note']}")
    if args.out:
        _write_csv(args.out, rows)
        print(f"\nwrote {args.out}")
    if args.plot:
        _plot(rows, args.plot, f"{program.config.name}: {sum(not row['note'] for row in rows)} configurations, "
                               f"{args.mode} cycles at {base.clock_mhz:g} MHz")
        print(f"wrote {args.plot}")
    return 0
