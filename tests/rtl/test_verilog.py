"""Verilog generation, Verilator lint, coarse synthesis and the ``verilog``/``synth`` commands."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from intvit.commands.common import compile_model, quantized_test_images
from intvit.compiler.executor import load_machine
from intvit.compiler.isa import decode_program
from intvit.harness.run import memory_layout
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.quant.executor import run_program
from intvit.quant.requant import requantize
from intvit.rtl.requant import PROGRAM_WIDTHS
from intvit.rtl.top import Accelerator, TopParams
from intvit.rtl.synth import synth_generic
from intvit.rtl.verilog import (LINT_WAIVERS, SYSTEM_NAME, TOP_NAME, designs, generate, lint, system_params,
                                system_verilog)
from intvit.cli import build_parser, main
from intvit.sim.config import load_config
from intvit.sim.schedule import predict_cycles

SMALL = TopParams(rows=2, cols=2, requant_lanes=2, softmax_lanes=2, gelu_lanes=2, layernorm_lanes=2,
                  max_length=5, width=4)
SMALL_TOML = """
[matmul]
rows = 2
cols = 2
latency = 2
[requant]
lanes = 2
[softmax]
lanes = 2
[gelu]
lanes = 2
[layernorm]
lanes = 2
"""
UNITS = ("intvit_matmul", "intvit_requant", "intvit_softmax", "intvit_gelu", "intvit_layernorm", "intvit_pe")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("verilog")
    return out, generate(SMALL, out)


def test_top_params_rejects_bad_values():
    with pytest.raises(IntVitError, match=r"^gelu_lanes must be a positive integer, not 0$"):
        TopParams(rows=2, cols=2, requant_lanes=2, softmax_lanes=2, gelu_lanes=0, layernorm_lanes=2,
                  max_length=5, width=4)
    with pytest.raises(IntVitError, match=r"^width must be a positive integer, not 0$"):
        TopParams(rows=2, cols=2, requant_lanes=2, softmax_lanes=2, gelu_lanes=2, layernorm_lanes=2,
                  max_length=5, width=0)


def test_generate_writes_units_top_and_manifest(generated):
    out, paths = generated
    assert [p.name for p in paths] == [f"{name}.v" for name in (*UNITS[:5], "intvit_pe", TOP_NAME)] + ["manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == {"rows": 2, "cols": 2, "requant_lanes": 2, "softmax_lanes": 2, "gelu_lanes": 2,
                                  "layernorm_lanes": 2, "max_length": 5, "width": 4}
    modules = manifest["modules"]
    assert modules["intvit_matmul"]["latency_cycles"] == 1
    assert modules["intvit_requant"]["latency_cycles"] == 3
    assert modules["intvit_matmul"]["ports"]["operands__ready"] == "out 1"
    assert "matmul__operands__payload" in modules[TOP_NAME]["ports"]
    top = (out / f"{TOP_NAME}.v").read_text()
    assert f"module {TOP_NAME}(" in top and "requant__results__payload" in top


def test_generate_rejects_a_file_as_directory(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(IntVitError, match="not a directory"):
        generate(SMALL, target)


def test_generated_verilog_is_lint_clean(verilator, generated):
    _, paths = generated
    assert lint(paths) == []


def test_lint_reports_a_real_problem(verilator, tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output b); assign b = c; endmodule\n")
    # A register declared with an initial value and assigned in a process: what Amaranth's
    # plain verilog.convert writes, and what to_verilog must not.
    init = tmp_path / "init.v"
    init.write_text("module init(input clk, input d, output reg q = 1'b0); always @(posedge clk) q <= d; endmodule\n")
    problems = lint([bad, init])
    assert len(problems) == 2 and "bad.v" in problems[0] and "PROCASSINIT" in problems[1]
    assert all(reason for reason in LINT_WAIVERS.values())
    assert "PROCASSINIT" not in LINT_WAIVERS


def test_synth_counts_one_multiplier_per_pe_and_two_per_residual_lane():
    chosen = ("intvit_pe", "intvit_requant", "intvit_matmul")
    report = synth_generic({name: build for name, build in designs(SMALL).items() if name in chosen})
    pe = report["intvit_pe"]
    assert pe["multipliers"] == 1
    assert pe["flipflops"] == 32 + 32 + 8 + 8 + 1 + 1 + 1      # acc, result and the forwarded operands
    assert pe["cells"] == sum(pe["by_type"].values()) and all(cell.startswith("$_") for cell in pe["by_type"])
    assert report["intvit_requant"]["multipliers"] == 2 * SMALL.requant_lanes
    assert report["intvit_matmul"]["multipliers"] == SMALL.rows * SMALL.cols
    assert report["intvit_matmul"]["cells"] > SMALL.rows * SMALL.cols * pe["cells"]


@pytest.mark.slow
def test_synth_of_every_unit_at_the_default_size():
    params = TopParams(rows=16, cols=16, requant_lanes=8, softmax_lanes=8, gelu_lanes=8, layernorm_lanes=8,
                       max_length=50, width=64)
    report = synth_generic(designs(params))
    units = [report[f"intvit_{unit}"] for unit in ("matmul", "requant", "softmax", "gelu", "layernorm")]
    assert report["intvit_matmul"]["multipliers"] == 256
    assert report[TOP_NAME]["multipliers"] == sum(unit["multipliers"] for unit in units)
    # Flattened together, Yosys shares a few gates across units: the top is the sum, give or take.
    assert report[TOP_NAME]["cells"] == pytest.approx(sum(unit["cells"] for unit in units), rel=0.01)


def test_top_forwards_the_requantiser_at_every_program_width():
    dut = Accelerator(SMALL)
    x, multiplier, shift = [1000, -77777], [2**30 + 5, 2**31 - 1], [12, 40]
    got = []

    async def testbench(ctx):
        ctx.set(dut.requant.results.ready, 1)
        ctx.set(dut.requant.operands.valid, 1)
        for index in range(len(PROGRAM_WIDTHS)):
            ctx.set(dut.requant.operands.payload, {"x": x, "multiplier": multiplier, "shift": shift,
                                                   "b": [0, 0], "multiplier_b": [0, 0], "width": index,
                                                   "last": index == len(PROGRAM_WIDTHS) - 1})
            await ctx.tick()
        ctx.set(dut.requant.operands.valid, 0)
        while len(got) < len(PROGRAM_WIDTHS):
            if ctx.get(dut.requant.results.valid):
                got.append([ctx.get(dut.requant.results.payload).y[lane] for lane in range(2)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert got == [requantize(np.array(x), np.array(multiplier), np.array(shift), bits).tolist()
                   for bits in PROGRAM_WIDTHS]
    assert len({tuple(y) for y in got}) == len(PROGRAM_WIDTHS)     # 1000 * 2**18 saturates at 8 and 17 bits only


def test_verilog_and_synth_commands(verilator, tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    out = tmp_path / "v"
    assert main(["verilog", "--units", "--config", str(config), "--out", str(out), "--lint"]) == 0
    captured = capsys.readouterr()
    assert str(out / "intvit_top.v") in captured.out and captured.out.rstrip().endswith("lint: clean")
    assert "warning: matmul.latency is 2 in the config, 1 in the RTL" in captured.err
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [f"{name}.v" for name in UNITS] + [f"{TOP_NAME}.v", "manifest.json"])
    assert json.loads((out / "manifest.json").read_text())["params"]["max_length"] == 50      # mnist tokens
    report = tmp_path / "synth.json"
    assert main(["synth", "--config", str(config), "--unit", "intvit_pe", "--json", str(report)]) == 0
    assert "intvit_pe" in capsys.readouterr().out
    assert json.loads(report.read_text())["intvit_pe"]["multipliers"] == 1
    assert main(["synth", "--config", str(config), "--unit", "nope"]) == 2
    assert "error: unknown unit 'nope'" in capsys.readouterr().err


def test_verilog_command_sizes_the_top_from_the_model(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML.replace("latency = 2", "latency = 1"))   # the RTL's: no warning
    out = tmp_path / "v"
    assert main(["verilog", "--units", "--config", str(config), "--model", "deit-tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert (params["max_length"], params["width"]) == (197, 192)
    assert "intvit_layernorm.v" in {path.name for path in out.iterdir()}


# ------------------------------------------------------------ the complete accelerator (intvit verilog)
SMALL_8X8 = str(Path(__file__).resolve().parents[2] / "docs" / "configs" / "small_8x8.toml")
# Calibration size does not matter to what is checked here; a small one keeps the run short.
# Two images in one batch-2 program (each weight loaded once for both): batch 1's paths and the batch's.
SYSTEM_ARGV = ["verilog", "--config", SMALL_8X8, "--calib-size", "8", "--batch", "2"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """``intvit verilog`` for the embedded model on small_8x8, and the program it compiled (from
    the same program cache, so the same calibration)."""
    out = tmp_path_factory.mktemp("system") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        argv = [*SYSTEM_ARGV, "--out", str(out)]
        assert main(argv) == 0
        config = load_config(SMALL_8X8)
        program, compiled = compile_model(build_parser().parse_args(argv), config, "mnist", batch=2)
    return out, json.loads((out / "manifest.json").read_text()), program, compiled, config


def test_system_files_hold_the_compiled_program_and_memory(shipped):
    out, manifest, program, compiled, config = shipped
    assert sorted(p.name for p in out.iterdir()) == ["intvit_system.v", "manifest.json", "memory.bin", "program.bin"]
    assert manifest["top"] == SYSTEM_NAME and manifest["files"]["verilog"] == f"{SYSTEM_NAME}.v"
    stream = (out / "program.bin").read_bytes()
    assert decode_program(stream) == compiled.instructions and len(stream) == manifest["program_bytes"]
    memory = np.fromfile(out / "memory.bin", dtype=np.uint8)
    insn_base, size = memory_layout(compiled)          # what rtl-run gives the accelerator
    assert (manifest["insn_base"], manifest["data_base"], manifest["memory_bytes"]) == (insn_base, 0, size)
    assert memory.size == size and memory[insn_base:insn_base + len(stream)].tobytes() == stream
    # Constants (weights, biases, records) as compiled, the input as quantised: compiler.executor's memory.
    xs, labels = quantized_test_images(program, "mnist", 2)
    x = np.concatenate(xs)
    assert np.array_equal(memory[:compiled.memory_bytes], load_machine(compiled, x).dram)
    addr, nbytes = compiled.input_region()
    assert manifest["batch"] == 2 and manifest["input"] == {
        "addr": addr, "bytes": 2 * 49 * 16, "shape": [49, 16], "image_shape": [1, 28, 28], "patch": 4, "dtype": "int8",
        "data": "mnist", "split": "test", "index": 0, "labels": labels[:2].tolist()}
    # As patch rows, image after image: patch (gh, gw) is row 7 gh + gw, its 4 x 4 pixels row by row.
    rows = memory[addr:addr + nbytes].view(np.int8).reshape(2, 49, 16)
    assert rows[1, 7 * 2 + 3].tolist() == x[1, 0, 8:12, 12:16].reshape(-1).tolist()
    assert [sorted(r.reshape(-1).tolist()) for r in rows] == [sorted(i.reshape(-1).tolist()) for i in x]
    assert not memory[compiled.image.size:compiled.memory_bytes].any()        # activations and logits: zero
    assert manifest["regions"]["blocks.0.attn.qkv.weight"] == compiled.manifest["regions"]["blocks.0.attn.qkv.weight"]
    out_place = compiled.output_place()
    assert manifest["output"] == {"addr": out_place.addr, "shape": [2, 10], "dtype": "int32", "row_stride_bytes": 40}
    expected = manifest["expected"]
    assert expected["logits"] == run_program(program, x).tolist()
    assert expected["classes"] == [int(np.argmax(row)) for row in expected["logits"]]
    assert expected["cycles"] == predict_cycles(compiled.instructions, config)
    assert expected["cycles_assume"]["read_latency_cycles"] == config.memory.read_latency_cycles


def test_system_verilog_is_what_rtl_run_builds(shipped, monkeypatch, tmp_path):
    """``harness.run.build_system`` (rtl-run's build) converts the same design under the same names."""
    import cocotb_tools.runner

    import intvit.rtl.verilog as rtl_verilog
    from intvit.harness.run import TOP_NAME as HARNESS_TOP, build_system

    out, manifest, _, compiled, config = shipped
    calls = []

    def recorder(design, name, ports=None):
        calls.append((design.params, name, sorted(ports)))
        names = [*ports, "clk", "rst"]          # a stand-in with the header Yosys writes
        return "\n".join([f"module {name}({', '.join(names)});", *(f"  input {n};" for n in names), "endmodule", ""])

    class NoBuild:
        def build(self, **kwargs):
            pass

    monkeypatch.setattr(rtl_verilog, "to_verilog", recorder)
    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda name: NoBuild())
    build_system(compiled, config, tmp_path)
    ((params, name, ports),) = calls
    assert HARNESS_TOP == name == SYSTEM_NAME
    assert dataclasses.asdict(params) == manifest["params"]
    assert ports == sorted(set(manifest["ports"]) - {"clk", "rst"})
    # The shipped file is system_verilog(params): to_verilog of that design under those names.
    text = (out / f"{SYSTEM_NAME}.v").read_text()
    header = re.search(rf"^module {SYSTEM_NAME}\((.*?)\);", text, re.S | re.M).group(1)
    assert sorted(name.strip() for name in header.split(",")) == sorted(manifest["ports"])
    for port, entry in manifest["ports"].items():
        width = f"[{entry['bits'] - 1}:0] " if entry["bits"] > 1 else ""
        assert re.search(rf"^\s*{entry['direction']} (wire |reg )?{re.escape(width)}{port};", text, re.M), port


def test_system_manifest_states_the_protocol(shipped):
    _, manifest, _, _, _ = shipped
    ports = manifest["ports"]
    assert {name: (ports[name]["direction"], ports[name]["bits"]) for name in
            ("clk", "rst", "start", "insn_base", "data_base", "busy", "done", "error", "error_index", "cycles")} == {
        "clk": ("input", 1), "rst": ("input", 1), "start": ("input", 1), "insn_base": ("input", 32),
        "data_base": ("input", 32), "busy": ("output", 1), "done": ("output", 1), "error": ("output", 1),
        "error_index": ("output", 32), "cycles": ("output", 48)}
    assert ports["dmem_wdata"] == {"direction": "output", "bits": 64} and "imem_awaddr" not in ports
    assert any("start" in step and "insn_base" in step for step in manifest["protocol"])
    # docs/isa.md's port table names every non-AXI port with its direction and width.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "isa.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (in|out) \| (\d+) \|", doc, re.M)
    assert {name: ("input" if way == "in" else "output", int(bits)) for name, way, bits in rows} == {
        name: (entry["direction"], entry["bits"]) for name, entry in ports.items() if not name.startswith(("imem", "dmem"))}
    assert manifest["lint_waivers"] == sorted(LINT_WAIVERS)


def test_system_verilog_is_lint_clean(verilator, shipped):
    out, _, _, _, _ = shipped
    assert lint([out / f"{SYSTEM_NAME}.v"]) == []


@pytest.mark.slow
def test_default_system_verilog_is_lint_clean(verilator, tmp_path):
    params = system_params(load_config(None), get_config("mnist"))
    path = tmp_path / f"{SYSTEM_NAME}.v"
    path.write_text(system_verilog(params))
    assert lint([path]) == []


def test_system_command_refuses_what_the_rtl_cannot_build(tmp_path, capsys):
    config = tmp_path / "odd.toml"
    config.write_text("[matmul]\nrows = 6\ncols = 6\n[requant]\nlanes = 2\n[softmax]\nlanes = 2\n"
                      "[gelu]\nlanes = 2\n[layernorm]\nlanes = 2\n")
    assert main(["verilog", "--config", str(config), "--out", str(tmp_path / "v")]) == 2
    assert capsys.readouterr().err.strip() == (
        "intvit verilog: error: matmul.cols must be a power of two for the RTL's ACC lanes, not 6")
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_shipped_files_run_with_only_the_manifest(shipped, tmp_path):
    """The written Verilog, memory image and manifest alone, on Verilator with cocotbext-axi's AxiRam
    (``harness.bench_system``) at the manifest's memory latencies: the logits at ``output.addr``
    equal ``expected.logits`` and the counter ``expected.cycles``."""
    from intvit.harness.runner import build, run

    out, manifest, _, _, _ = shipped
    model = build(None, toplevel=manifest["top"], build_dir=tmp_path / "build",
                  verilog_text=(out / manifest["files"]["verilog"]).read_text(), registered_reset="rst")
    dump = tmp_path / "dump.bin"
    assume = manifest["expected"]["cycles_assume"]
    result = run(model, "intvit.harness.bench_system",
                 {"image": str(out / manifest["files"]["memory"]), "dump": str(dump),
                  "memory_bytes": manifest["memory_bytes"], "insn_base": manifest["insn_base"],
                  "data_base": manifest["data_base"], "timeout_cycles": 10 * manifest["expected"]["cycles"],
                  "read_latency": assume["read_latency_cycles"], "write_latency": assume["write_latency_cycles"]})
    assert result["done"] and not result["error"], result
    output = manifest["output"]
    rows, cols = output["shape"]
    memory = np.fromfile(dump, dtype=np.uint8)
    logits = [memory[output["addr"] + r * output["row_stride_bytes"]:][:4 * cols].view("<i4").tolist() for r in range(rows)]
    assert logits == manifest["expected"]["logits"]
    assert result["cycles"] == manifest["expected"]["cycles"]
