"""Verilog generation, Verilator lint, coarse synthesis and the ``verilog``/``synth`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from intvit.quant.errors import IntVitError
from intvit.quant.requant import requantize
from intvit.rtl.requant import PROGRAM_WIDTHS
from intvit.rtl.top import Accelerator, TopParams
from intvit.rtl.synth import synth_generic
from intvit.rtl.verilog import LINT_WAIVERS, TOP_NAME, designs, generate, lint
from intvit.cli import main

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


def test_verilog_and_synth_commands(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    out = tmp_path / "v"
    assert main(["verilog", "--config", str(config), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(out / "intvit_top.v") in captured.out
    assert "warning: matmul.latency is 2 in the config, 1 in the RTL" in captured.err
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
    assert main(["verilog", "--config", str(config), "--model", "deit-tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert (params["max_length"], params["width"]) == (197, 192)
    assert "intvit_layernorm.v" in {path.name for path in out.iterdir()}


def test_verilog_command_lints_clean(verilator, tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML.replace("latency = 2", "latency = 1"))
    out = tmp_path / "v"
    assert main(["verilog", "--config", str(config), "--out", str(out), "--lint"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("lint: clean")
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [f"{name}.v" for name in UNITS] + [f"{TOP_NAME}.v", "manifest.json"])
