"""``intvit simulate``: one inference on the accelerator model, per-layer cycles and totals.

Three paths:

* a model (default): quantise it (or load ``--program``), run a batch of images through
  ``sim.simulator.simulate`` and print a per-op table, totals, cycles per unit and the
  predicted classes; ``--json`` and ``--plot`` write the report and a chart;
* ``--compiled``: compile the model (``compiler.codegen``) for ``--batch`` images (their
  token rows stacked, so that each weight is loaded once for all of them) and evaluate the
  instruction stream's schedule (``sim.schedule``), the cycles the RTL counts, per image;
* a SCALE-Sim topology (``--topology``, with ``--scalesim-config`` or ``--config``): run the
  MatMul model over its GEMMs and write SCALE-Sim's three reports plus intvit's own.

Both model paths print per unit busy, exposed (busy while the array idles) and critical-path
cycles, and the critical path per model part (``sim.timeline``); ``--plot`` draws the Gantt
chart of the units (``sim.report.plot_timeline``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from intvit.quant.errors import IntVitError
from intvit.commands.common import (
    add_compile_arguments, build_program, calibrated_program, compile_batch, compile_model, load_images,
    load_model, model_spec, positive_int, progress, shape_program, write_json,
)
from intvit.quant.atomic import check_output_file, check_output_folder
from intvit.sim.config import load_config
from intvit.sim.matmul import MODES
from intvit.sim.report import UNIT_ORDER, check_plot_path, format_count, format_table, op_groups, plot_timeline

__all__ = ["register", "run"]

INPUT_TYPES = ("auto", "gemm", "conv")
# Size guard: a functional run holds the batch's activations (DeiT-Base: about 2.5 MB an image per tensor).
MAX_FUNCTIONAL_BATCH = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate one inference on the accelerator: cycles per layer and unit, latency, prediction",
        description="Quantise a model (or load --program), run images through the accelerator's cycle "
        "models and, unless --no-functional, through its integer datapath; print per-op cycles, totals "
        "and the predicted class. With --topology, run a SCALE-Sim GEMM/conv topology instead and write "
        "SCALE-Sim's reports.",
    )
    add_compile_arguments(parser)
    parser.add_argument("--image", metavar="FILE",
                        help="simulate this image file (default: the first test image(s) of --data)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="N",
                        help="images per simulated inference; --image is repeated N times (default: 1)")
    parser.add_argument("--mode", choices=MODES,
                        help="MatMul cycle convention (default: native for a model, scalesim for --topology)")
    parser.add_argument("--no-functional", dest="functional", action="store_false",
                        help="cycles only: skip computing the tensors (no prediction)")
    parser.add_argument("--compiled", action="store_true",
                        help="model the compiled instruction stream instead (sim.schedule: AXI bursts, "
                             "scratchpads, the controller's overlap), as the RTL runs it; --batch N compiles one "
                             "program for N images (weights loaded once for all) and reports cycles per image")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the report as JSON to FILE, or alone: print it instead of the tables")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="Gantt chart of the units over one inference, the critical path and its cycles per "
                             "block")
    topo = parser.add_argument_group("SCALE-Sim topology")
    topo.add_argument("--topology", metavar="FILE", help="SCALE-Sim topology CSV to run instead of a model")
    topo.add_argument("--scalesim-config", metavar="FILE", help="SCALE-Sim scale.cfg for --topology")
    topo.add_argument("-i", "--input-type", choices=INPUT_TYPES, default="auto",
                      help="topology rows: gemm (Layer, M, N, K), conv, or auto from the header (default: auto)")
    topo.add_argument("--out-dir", metavar="DIR",
                      help="directory for the CSV reports (default: the scale.cfg run_name, else the "
                           "topology file's name)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Output paths are checked before any work; the writes themselves are atomic.
    if args.json not in (None, "-"):
        check_output_file(args.json)
    if args.topology or args.scalesim_config:
        return _run_topology(args)
    if args.out_dir:
        raise IntVitError("--out-dir applies to --topology runs only")
    if args.plot:
        check_plot_path(args.plot)
    if args.functional and args.batch > MAX_FUNCTIONAL_BATCH:
        raise IntVitError(f"--batch {args.batch}: a functional simulation keeps every image's tensors; at most "
                          f"{MAX_FUNCTIONAL_BATCH} (--no-functional costs larger batches from shapes alone)")
    if args.compiled:
        return _run_compiled(args)
    return _run_model(args)


# ----------------------------------------------------------------------------- model path
def _input_images(args: argparse.Namespace, config) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Normalised float images for the simulated batch, their labels (if known) and class names."""
    from intvit.quant.data import load_image, normalize

    if args.image:
        image = load_image(args.image, config)[None]
        return normalize(np.repeat(image, args.batch, axis=0), config), None, []
    images, labels, classes = load_images(args.data, config, "test", args.batch)
    if len(images) < args.batch:
        raise IntVitError(f"--batch {args.batch}: {args.data} has only {len(images)} test images")
    return images, labels, classes


def _warm_up(args: argparse.Namespace) -> None:
    """Load the simulator and the integer kernels (numba's cache) while calibration runs apart.

    One block of the model's shape program on a zero image calls every kernel that the real run
    calls, with the same types and operand shapes, so the run after calibration finds them loaded
    (1.3 s of a cold DeiT-Tiny run) at a twelfth of DeiT-Tiny's compute.
    """
    from intvit.quant.ptq import shape_program as program_of_shapes
    from intvit.sim.simulator import simulate

    program = program_of_shapes(dataclasses.replace(model_spec(args).config, depth=1))
    c = program.config
    simulate(program, load_config(args.config), np.zeros((1, c.in_chans, c.img_size, c.img_size), np.int8), batch=1)


def _simulate_model(args: argparse.Namespace):
    if not args.functional:                  # cycles need shapes only: no weights, no data, no calibration
        program = shape_program(args)
    elif args.program:
        program = build_program(args, load_model(args), args.data)
    else:                                    # the config loads (numba with it) beside a calibration, if one runs
        program = calibrated_program(args, args.data, lambda: load_model(args), meanwhile=lambda: _warm_up(args))
    config = load_config(args.config)
    from intvit.sim.simulator import simulate

    x, labels, classes = None, None, []
    if args.functional:
        images, labels, classes = _input_images(args, program.config)
        x = program.quantize_input(images)
    report = simulate(program, config, x, batch=args.batch, mode=args.mode or "native",
                      functional=args.functional,
                      progress=lambda ops: progress(ops, "simulate", len(program.ops), unit="op"))
    return report, labels, classes, program


def _op_rows(report) -> list[list]:
    total = report.total_cycles
    return [
        [op.name, op.unit, format_count(op.cycles), format_count(op.exposed_cycles),
         f"{100 * op.exposed_cycles / total:.1f}%", f"{100 * op.utilization:.1f}%" if op.unit == "matmul" else "-",
         format_count(op.sram_bytes), format_count(op.dram_bytes), op.bound]
        for op in report.ops if op.unit != "none"
    ]


def _totals_rows(report) -> list[list]:
    clock = report.config.clock_mhz
    return [
        ["cycles", format_count(report.total_cycles)],
        ["latency", f"{report.latency_us:,.2f} µs at {clock:g} MHz"],
        ["throughput", f"{report.images_per_second:,.1f} images/s"],
        ["MACs", format_count(report.total_macs)],
        ["MACs/cycle", f"{report.macs_per_cycle:,.2f}"],
        ["MAC utilisation", f"{100 * report.utilization:.2f}%"],
        ["DRAM bytes", format_count(report.dram_bytes())],
    ]


def _predictions(report, labels, classes: list[str]) -> list[dict]:
    predicted = np.argmax(report.logits, axis=-1)
    named = len(classes) == report.logits.shape[-1]
    out = []
    for i, index in enumerate(predicted.tolist()):
        entry = {"image": i, "class": index}
        if named:
            entry["name"] = classes[index]
        if labels is not None:
            entry["label"] = int(labels[i])
        out.append(entry)
    return out


def _print_timeline(timeline) -> None:
    """Per unit busy, exposed (busy while the array idles) and critical-path cycles; the path per model part."""
    total = timeline.total_cycles
    share = lambda cycles: f"{100 * cycles / total:.1f}%"
    rows = [[unit, "-" if e["busy_cycles"] is None else format_count(e["busy_cycles"]),
             "-" if e["busy_cycles"] is None else share(e["busy_cycles"]),
             "-" if e["exposed_cycles"] is None else format_count(e["exposed_cycles"]),
             format_count(e["critical_cycles"]), share(e["critical_cycles"])]
            for unit, e in timeline.units().items()]
    array_idle = total - timeline.busy_cycles("array")
    print(f"units (exposed: busy while the array idles; the array idles {format_count(array_idle)} cycles, "
          f"{share(array_idle)})")
    print(format_table(["unit", "busy", "util", "exposed", "critical", "of path"], rows, align="lrrrrr"))
    print(f"\ncritical path: {timeline.stretches():,} stretches; cycles per model part and bounding resource")
    by_part = timeline.critical_by_part()
    units = [u for u in timeline.critical_cycles() if any(cycles[u] for _, cycles in by_part)]
    rows = [[part, format_count(sum(cycles.values())),
             *(f"{100 * cycles[u] / max(sum(cycles.values()), 1):.0f}%" for u in units)] for part, cycles in by_part]
    print(format_table(["part", "cycles", *units], rows, align="l" + "r" * (len(units) + 1)))


def _print_model_report(report, predictions: list[dict], classes: list[str]) -> None:
    m = report.config.matmul
    print(f"{report.model} on a {m.rows}x{m.cols} {m.dataflow} array, batch {report.batch}\n")
    print(format_table(["op", "unit", "cycles", "exposed", "share", "util", "on-chip B", "off-chip B", "bound"],
                       _op_rows(report), align="llrrrrrrl"))
    print()
    print(format_table(["total", "value"], _totals_rows(report), align="lr"))
    print()
    _print_timeline(report.timeline())
    if predictions:
        print()
    for entry in predictions:
        name = f" ({entry['name']})" if "name" in entry and entry["name"] != str(entry["class"]) else ""
        label = f", label {entry['label']}" if "label" in entry else ""
        print(f"image {entry['image']}: predicted class {entry['class']}{name}{label}")


def _energy_rows(energy, groups: list[str]) -> tuple[list[list], list[list]]:
    """Rows of the energy tables: per unit (with leakage) and per model part, µJ per image and share."""
    total = energy.total_pj * 1e-6
    per_image = 1 / energy.batch

    def rows(values: dict) -> list[list]:
        return [[name, f"{value * per_image:,.3f}", f"{100 * value / total:.1f}%"] for name, value in values.items()]

    units = energy.by_unit()
    ordered = {unit: units[unit] for unit in (*UNIT_ORDER, "leakage") if unit in units}
    return rows(ordered), rows(energy.by_layer(groups))


def _print_energy(energy, groups: list[str]) -> None:
    print(f"\nenergy: {energy.energy_uj:,.2f} µJ per image, average power {energy.average_power_mw:,.1f} mW "
          f"(leakage {energy.leakage_mw:,.1f} mW); table: [energy] of the accelerator config (sim.energy)")
    by_unit, by_layer = _energy_rows(energy, groups)
    print(format_table(["unit", "µJ/image", "share"], by_unit, align="lrr"))
    print()
    print(format_table(["layer (dynamic)", "µJ/image", "share"], by_layer, align="lrr"))


def _run_model(args: argparse.Namespace) -> int:
    from intvit.sim.energy import energy_report

    report, labels, classes, program = _simulate_model(args)
    energy = energy_report(program, report, args.mode or "native")
    groups = op_groups([op.name for op in report.ops])
    predictions = _predictions(report, labels, classes) if args.functional else []
    if args.json:
        data = report.as_dict()
        data["energy_uj"] = energy.energy_uj
        data["energy"] = energy.as_dict(groups)
        data["accelerator"] = dataclasses.asdict(report.config)
        data["mode"] = args.mode or "native"
        data["predictions"] = predictions
        data["logits"] = report.logits
        data["timeline"] = report.timeline().as_dict()
        write_json(data, args.json)
    if args.json != "-":
        _print_model_report(report, predictions, classes)
        _print_energy(energy, groups)
    if args.plot:
        m = report.config.matmul
        plot_timeline(report.timeline(), args.plot,
                      title=f"{report.model} (op-level model): {m.rows}x{m.cols} {m.dataflow}, "
                            f"{report.total_cycles:,} cycles, MAC utilisation {100 * report.utilization:.1f}%")
    return 0


# -------------------------------------------------------------------------- compiled path
def _run_compiled(args: argparse.Namespace) -> int:
    """The cycle model of the compiled schedule (``sim.schedule``), as the RTL runs it.

    Prints total cycles (and, for a batch, cycles per image), cycles per instruction class, per
    unit busy, exposed and critical-path cycles; unless ``--no-functional``, also runs the first
    ``--batch`` test images through the instruction-level executor, checks their logits against
    the golden executor's bit for bit and prints the predicted classes.
    """
    from intvit.compiler.executor import execute
    from intvit.quant.executor import run_program
    from intvit.sim.schedule import program_macs, schedule

    if args.image:
        raise IntVitError("--compiled simulates test images of --data: --image does not apply")
    batch = args.batch
    config = load_config(args.config)
    # Cycles depend on shapes only: a cycle-only run compiles the uncalibrated shape program.
    if args.functional:
        program, compiled = compile_model(args, config, args.data, batch)
    else:
        program = shape_program(args)
        compiled = compile_batch(program, config, batch)
    report = schedule(compiled.instructions, config, macs=batch * program_macs(program))
    timeline = report.timeline(compiled.origins)
    data = {"model": program.config.name, "compiled": True, "batch": batch, **report.as_dict(),
            "cycles_per_image": report.total_cycles / batch, "timeline": timeline.as_dict(),
            "accelerator": dataclasses.asdict(config)}
    if args.functional:
        images, _, _ = load_images(args.data, program.config, "test", batch)
        if len(images) < batch:
            raise IntVitError(f"--batch {batch}: {args.data} has only {len(images)} test images")
        x = program.quantize_input(images[:batch])
        logits = execute(compiled, x,
                         progress=lambda it: progress(it, "execute", len(compiled.instructions), unit="instr"))
        golden = run_program(program, x)
        if not np.array_equal(logits, golden):
            bad = [i for i in range(batch) if not np.array_equal(logits[i], golden[i])]
            raise IntVitError(f"the compiled program's logits differ from the golden executor's on image(s) "
                              f"{', '.join(map(str, bad))} of the batch")
        data["logits"] = logits.tolist()
        data["predicted_class"] = int(np.argmax(logits[0]))
        data["predicted_classes"] = [int(c) for c in np.argmax(logits, axis=1)]
    if args.json:
        write_json(data, args.json)
    if args.json != "-":
        total = report.total_cycles
        images = f", batch {batch}: {format_count(round(total / batch))} cycles per image" if batch > 1 else ""
        print(f"{program.config.name} compiled for a {data['array']} accelerator: {len(compiled.instructions):,} "
              f"instructions, {format_count(total)} cycles ({report.latency_us:,.1f} µs at {config.clock_mhz:g} MHz)"
              f"{images}, MAC utilisation {100 * report.mac_utilization:.1f}%, DRAM read "
              f"{format_count(report.dram_read_bytes)} / written {format_count(report.dram_write_bytes)} bytes\n")
        print(format_table(["class", "count", "busy cycles", "of total"],
                           [[name, format_count(e["count"]), format_count(e["busy_cycles"]),
                             f"{100 * e['busy_cycles'] / total:.1f}%"] for name, e in report.classes.items()],
                           align="lrrr"))
        print()
        _print_timeline(timeline)
        if args.functional:
            print()
            for i, logits in enumerate(data["logits"]):
                print(f"image {i}: predicted class {data['predicted_classes'][i]} (logits {logits})")
            print(f"{batch} image{'s' if batch > 1 else ''}: the compiled program's logits equal the golden "
                  "executor's bit for bit")
    if args.plot:
        m = config.matmul
        plot_timeline(timeline, args.plot,
                      title=f"{program.config.name} (compiled schedule): {m.rows}x{m.cols}, {report.total_cycles:,} "
                            f"cycles, MAC utilisation {100 * report.mac_utilization:.1f}%")
    return 0


# -------------------------------------------------------------------------- topology path
def _run_topology(args: argparse.Namespace) -> int:
    from intvit.sim.scalesim import read_scale_config, read_topology, simulate_topology

    if not args.topology:
        raise IntVitError("--scalesim-config needs --topology (the layers to run)")
    if args.scalesim_config and args.config:
        raise IntVitError("give --scalesim-config or --config for a topology, not both")
    if args.plot:
        raise IntVitError("--plot draws a model simulation; it does not apply to --topology")
    if args.out_dir:
        check_output_folder(args.out_dir)
    if args.scalesim_config:
        scale = read_scale_config(args.scalesim_config)
        accelerator, default_dir = scale.accelerator(), scale.run_name
    else:
        accelerator, default_dir = load_config(args.config), Path(args.topology).stem
    check_output_folder(args.out_dir or default_dir)
    layers = read_topology(args.topology, args.input_type)
    mode = args.mode or "scalesim"
    result = simulate_topology(accelerator, layers, mode, args.out_dir or default_dir)
    m = accelerator.matmul
    total = result.total_cycles
    macs = sum(layer.macs for layer in result.layers)
    utilization = macs / (total * m.rows * m.cols)
    if args.json:
        write_json({
            "mode": mode, "array": f"{m.rows}x{m.cols}", "dataflow": m.dataflow, "total_cycles": total,
            "macs": macs, "mac_utilization": utilization, "files": [str(f) for f in result.files],
            "layers": [
                {"name": r.name, "m": r.m, "k": r.k, "n": r.n, "folds": r.folds, "cycles": r.cycles,
                 "compute_cycles": r.compute_cycles, "stall_cycles": r.stall_cycles, "utilization": r.utilization,
                 "sram_bytes": r.a_sram_reads + r.b_sram_reads + r.out_sram_writes, "dram_bytes": r.dram_bytes,
                 "bound": r.bound}
                for r in result.layers
            ],
        }, args.json)
    if args.json == "-":
        return 0
    print(f"{Path(args.topology).name}: {len(layers)} layers on a {m.rows}x{m.cols} {m.dataflow} array, "
          f"{mode} cycles\n")
    rows = [[r.name, r.m, r.k, r.n, r.folds, format_count(r.cycles), f"{100 * r.cycles / total:.1f}%",
             f"{100 * r.utilization:.1f}%", format_count(r.a_sram_reads + r.b_sram_reads + r.out_sram_writes),
             format_count(r.dram_bytes), r.bound]
            for r in result.layers]
    print(format_table(["layer", "M", "K", "N", "folds", "cycles", "share", "util", "SRAM B", "DRAM B", "bound"],
                       rows, align="lrrrrrrrrrl"))
    print(f"\ntotal: {total:,} cycles, {macs:,} MACs, {100 * utilization:.2f}% MAC utilisation")
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 0
