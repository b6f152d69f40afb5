"""``intvit verilog``: the complete accelerator's Verilog with a compiled model, ready to run elsewhere.

Writes, into one folder and all or none (``quant.atomic.atomic_folder``):

* ``intvit_system.v``: ``rtl.system.System`` (controller, load/store modules with AXI4 masters,
  compute units, scratchpad memories), the text ``intvit rtl-run`` compiles;
* ``program.bin``: the model's instruction stream (docs/isa.md);
* ``memory.bin``: external memory as ``intvit rtl-run`` gives it to the accelerator, from byte
  0: constants (weights, biases, parameter records), one quantised test image, zeroed space for
  the activations and the logits, and ``program.bin`` again at ``insn_base``;
* ``manifest.json``: ``insn_base``/``data_base``, sizes, where the input goes and the logits
  come out, the golden logits and the predicted cycles for the included image, the ports and
  the control/status protocol.

``--units`` writes the units side by side instead (``rtl.verilog.generate``: one file per
unit, ``rtl.top.Accelerator`` as ``intvit_top.v``), no model program.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from intvit.commands.common import (
    DEFAULT_MODEL, add_compile_arguments, compile_model, model_spec, positive_int, progress,
    quantized_test_images,
)
from intvit.quant.atomic import atomic_folder, check_output_folder
from intvit.quant.config import PRESETS, ViTConfig
from intvit.quant.errors import IntVitError
from intvit.sim.config import AcceleratorConfig, load_config

__all__ = ["register", "run", "add_top_arguments", "top_params", "latency_mismatches",
           "PROGRAM_NAME", "MEMORY_NAME", "MANIFEST_NAME", "PROTOCOL"]

UNIT_SECTIONS = ("matmul", "requant", "softmax", "gelu", "layernorm")
PROGRAM_NAME, MEMORY_NAME, MANIFEST_NAME = "program.bin", "memory.bin", "manifest.json"
# The control/status protocol, as the manifest states it (docs/isa.md, "Control and status").
PROTOCOL = (
    "clk: every register on its rising edge; rst: synchronous, active high; hold it a few cycles",
    "external memory: AXI4 slaves on dmem (read and write) and imem (read only) that see the same bytes; "
    "put memory.bin at a byte address A, a multiple of 4096",
    "drive insn_base = A + insn_base and data_base = A + data_base (this manifest's), start = 0",
    "pulse start for one cycle while busy is low: it latches insn_base and data_base and clears done, error, cycles",
    "wait for done (END completed, every STORE answered) or error (error_index: the illegal instruction; "
    "assert rst before the next start); both stay high until the next start",
    "cycles: from the start cycle to END's completion; equals expected.cycles with the memory latencies of "
    "expected.cycles_assume",
    "read output.shape little-endian values of output.dtype at A + output.addr, rows output.row_stride_bytes "
    "apart; they equal expected.logits",
)


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--model``: what fixes the RTL top's parameters (shared with ``intvit synth``)."""
    parser.add_argument("--config", default=None, help="accelerator TOML (default: built-in defaults)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(PRESETS),
                        help="model shape that sizes the softmax row buffer (tokens) and LayerNorm "
                             "(embed_dim) (default: %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verilog",
        help="write the complete accelerator's Verilog with a compiled model (program, memory image, manifest)",
        description="Compile a model for --config and write the whole accelerator (rtl.system.System: controller, "
        "AXI4 load/store, units, scratchpad memories) as intvit_system.v, the instruction stream (program.bin), "
        "the external-memory image with the quantised test images of one batch (memory.bin) and manifest.json "
        "(addresses, ports, protocol, the golden logits and predicted cycles of that batch). --units writes the "
        "units side by side instead.",
    )
    add_compile_arguments(parser)
    parser.add_argument("--image", type=int, default=0, metavar="I",
                        help="index of the (first) test image placed in memory.bin (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B",
                        help="compile for B images at once (each weight loaded once for all of them), test images "
                             "I .. I+B-1 in memory.bin (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write into (created if missing)")
    parser.add_argument("--lint", action="store_true", help="also run verilator --lint-only -Wall on the Verilog")
    parser.add_argument("--units", action="store_true",
                        help="write one Verilog file per unit and rtl.top.Accelerator (the units side by side, "
                             "no controller or memories) with their own manifest, no model program")
    parser.set_defaults(run=run)


def top_params(config: AcceleratorConfig, model: ViTConfig):
    """The RTL top's parameters: array and lanes from the accelerator config, row lengths from the model."""
    from intvit.rtl.top import TopParams

    return TopParams(rows=config.matmul.rows, cols=config.matmul.cols, requant_lanes=config.requant.lanes,
                     softmax_lanes=config.softmax.lanes, gelu_lanes=config.gelu.lanes,
                     layernorm_lanes=config.layernorm.lanes, max_length=model.num_tokens, width=model.embed_dim)


def latency_mismatches(config: AcceleratorConfig, manifest: dict) -> list[str]:
    """Units whose config ``latency`` differs from the RTL's, one line each.

    The simulator's cycle counts then describe other hardware than the Verilog written.
    """
    lines = []
    for section in UNIT_SECTIONS:
        rtl_latency = manifest["modules"][f"intvit_{section}"]["latency_cycles"]
        configured = getattr(config, section).latency
        if rtl_latency is not None and rtl_latency != configured:
            lines.append(f"{section}.latency is {configured} in the config, {rtl_latency} in the RTL")
    return lines


def run(args: argparse.Namespace) -> int:
    from intvit.rtl.verilog import check_size, lint

    out = check_output_folder(args.out)
    if args.image < 0:
        raise IntVitError(f"--image must be a test image index >= 0, not {args.image}")
    config = load_config(args.config)
    check_size(top_params(config, model_spec(args).config))     # before minutes or hours of elaboration
    paths = _units(args, config, out) if args.units else _system(args, config, out)
    for path in paths:
        print(path)
    if args.lint:
        problems = lint(paths)
        for problem in problems:
            print(problem)
        print(f"lint: {'clean' if not problems else f'{len(problems)} file(s) with warnings'}")
        return 1 if problems else 0
    return 0


def _units(args: argparse.Namespace, config: AcceleratorConfig, out: Path) -> list[Path]:
    from intvit.rtl.verilog import generate

    paths = generate(top_params(config, model_spec(args).config), out,
                     progress=lambda items: progress(items, "verilog", len(items), unit="module"))
    for line in latency_mismatches(config, json.loads(paths[-1].read_text())):
        print(f"warning: {line}; simulated cycles will not match this RTL", file=sys.stderr)
    return paths


def _system(args: argparse.Namespace, config: AcceleratorConfig, out: Path) -> list[Path]:
    import numpy as np

    from intvit.harness.run import external_memory
    from intvit.quant.executor import run_program
    from intvit.rtl.verilog import LINT_WAIVERS, SYSTEM_NAME, system_params, system_ports, system_verilog
    from intvit.sim.schedule import predict_cycles

    params = system_params(config, model_spec(args).config)
    params.sp_geometry      # refuses shapes the RTL does not build (one line) before calibration and elaboration
    program, compiled = compile_model(args, config, args.data, args.batch)
    images = range(args.image, args.image + args.batch)
    xs, labels = quantized_test_images(program, args.data, images.stop)
    x = np.concatenate([xs[i] for i in images])
    golden = np.asarray(run_program(program, x))
    insn_base, memory = external_memory(compiled, x)
    stream, memory_bytes = compiled.stream(), memory.size
    input_addr, input_bytes = compiled.input_region()
    logits = compiled.output_place()
    manifest = {
        "format": "intvit-accelerator", "isa_version": compiled.manifest["isa_version"], "top": SYSTEM_NAME,
        "model": program.config.name, "batch": args.batch,
        "files": {"verilog": f"{SYSTEM_NAME}.v", "program": PROGRAM_NAME, "memory": MEMORY_NAME},
        "insn_base": insn_base, "data_base": 0, "memory_bytes": memory_bytes,
        "instructions": len(compiled.instructions), "program_bytes": len(stream),
        "input": {"addr": input_addr, "bytes": input_bytes, "shape": compiled.manifest["input"]["shape"],
                  "image_shape": compiled.manifest["input"]["image_shape"], "patch": compiled.manifest["input"]["patch"],
                  "dtype": "int8", "data": args.data, "split": "test", "index": args.image,
                  "labels": [int(labels[i]) for i in images]},
        "output": {"addr": logits.addr, "shape": list(logits.shape),
                   "dtype": "int32" if logits.elem == 4 else "int8", "row_stride_bytes": logits.strides[0]},
        "expected": {"logits": golden.tolist(), "classes": np.argmax(golden, axis=-1).tolist(),
                     "cycles": predict_cycles(compiled.instructions, config),
                     "cycles_assume": {"read_latency_cycles": config.memory.read_latency_cycles,
                                       "write_latency_cycles": config.memory.write_latency_cycles,
                                       "base_alignment_bytes": 4096}},
        "params": dataclasses.asdict(params), "regions": compiled.manifest["regions"],
        "ports": system_ports(params), "protocol": list(PROTOCOL), "lint_waivers": sorted(LINT_WAIVERS),
        "config": dataclasses.asdict(config),
    }
    with atomic_folder(out) as staging:
        for step in progress(["elaborate", "write"], "verilog", unit="step"):
            if step == "elaborate":
                text = system_verilog(params)
            else:
                (staging / f"{SYSTEM_NAME}.v").write_text(text)
                (staging / PROGRAM_NAME).write_bytes(stream)
                (staging / MEMORY_NAME).write_bytes(memory.tobytes())
                (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{program.config.name} on {SYSTEM_NAME}: {len(compiled.instructions):,} instructions at insn_base "
          f"{insn_base:#x}, memory image {memory_bytes:,} bytes, input at {input_addr:#x}, logits at {logits.addr:#x}; "
          f"test images {args.image}..{images[-1]} (labels {manifest['input']['labels']}): classes "
          f"{manifest['expected']['classes']}, {manifest['expected']['cycles']:,} cycles predicted")
    return [out / name for name in (f"{SYSTEM_NAME}.v", PROGRAM_NAME, MEMORY_NAME, MANIFEST_NAME)]
