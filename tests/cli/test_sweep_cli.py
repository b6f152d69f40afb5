"""``intvit sweep``: CSV rows, table, plot, list parsing and one-line user errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from intvit.quant.checkpoint import save_weights
from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.cli import main
from intvit.commands.sweep import COLUMNS, parse_arrays, parse_bandwidths, parse_dataflows
from intvit.sim.config import AcceleratorConfig
from intvit.sim.simulator import simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sweep") / "mnist.safetensors"
    torch.manual_seed(0)
    save_weights(ViT(get_config("mnist")).eval(), path)
    return str(path)


def test_csv_table_and_plot(capsys, weights, tmp_path):
    out, plot = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    code = main(["sweep", "--weights", weights, "--arrays", "8x8,16x32", "--dataflows", "os,is",
                 "--bandwidths", "4,32", "--out", str(out), "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert code == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and tuple(rows[0]) == COLUMNS
    assert [(r["array"], r["dataflow"], r["bandwidth"]) for r in rows[:3]] == [
        ("8x8", "os", "4"), ("8x8", "os", "32"), ("8x8", "is", "4")]
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert "mnist: 8 configurations, native cycles, batch 1, 500 MHz" in printed
    table = [line.split() for line in printed.splitlines() if line.startswith(("8x8 ", "16x32 "))]
    assert len(table) == 8
    for row, line in zip(rows, table):
        assert line[:3] == [row["array"], row["dataflow"], row["bandwidth"]]
        assert line[3] == f"{int(row['cycles']):,}"
        cycles = int(row["cycles"])
        assert sum(int(row[f"{unit}_cycles"]) for unit in ("matmul", "requant", "softmax", "gelu",
                                                           "layernorm")) == cycles
        assert float(row["latency_us"]) == pytest.approx(cycles / 500)
        assert 0 <= float(row["memory_bound_share"]) <= 1 and 0 < float(row["utilization"]) <= 1
    # More bandwidth never costs cycles.
    assert int(rows[1]["cycles"]) <= int(rows[0]["cycles"])


def test_rows_equal_direct_simulation(capsys, weights, tmp_path):
    out = tmp_path / "one.csv"
    assert main(["sweep", "--weights", weights, "--arrays", "32x8", "--dataflows", "ws", "--bandwidths", "2.5",
                 "--batch", "3", "--out", str(out)]) == 0
    with out.open() as handle:
        (row,) = list(csv.DictReader(handle))
    torch.manual_seed(0)
    program = quantize_model(ViT(get_config("mnist")).eval(),
                             np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    config = AcceleratorConfig().with_(matmul__rows=32, matmul__cols=8, matmul__dataflow="ws",
                                       memory__bandwidth_bytes_per_cycle=2.5)
    report = simulate(program, config, batch=3, functional=False)
    assert int(row["cycles"]) == report.total_cycles
    assert int(row["dram_bytes"]) == report.dram_bytes()
    assert float(row["utilization"]) == pytest.approx(report.utilization, rel=1e-12)


def assert_user_error(capsys, args: list[str], message: str) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"intvit sweep: error: {message}"]


@pytest.mark.parametrize(("args", "message"), [
    (["--dataflows", "os,xs"], "--dataflows: unknown dataflow 'xs'; expected os, ws, is"),
    (["--arrays", "8x0"], "--arrays: '8x0' is not ROWSxCOLS with positive integers (e.g. 16x16)"),
    (["--arrays", "16"], "--arrays: '16' is not ROWSxCOLS with positive integers (e.g. 16x16)"),
    (["--bandwidths", "8,-1"], "--bandwidths: '-1' is not a positive number of bytes per cycle"),
    (["--plot", "sweep.pdf"], "sweep.pdf: plots are written as PNG; give a file name ending in .png"),
])
def test_bad_lists(capsys, args, message):
    assert_user_error(capsys, ["sweep", *args], message)


def test_configuration_whose_tile_does_not_fit(capsys, weights, tmp_path):
    (tmp_path / "accel.toml").write_text("[buffers]\nweight_bytes = 1024\n")
    out = tmp_path / "sweep.csv"
    code = main(["sweep", "--weights", weights, "--config", str(tmp_path / "accel.toml"), "--arrays", "8x8,64x64",
                 "--dataflows", "os", "--bandwidths", "16", "--out", str(out), "--plot", str(tmp_path / "s.png")])
    printed = capsys.readouterr().out
    assert code == 0
    with out.open() as handle:
        fits, too_big = list(csv.DictReader(handle))
    assert fits["note"] == "" and int(fits["cycles"]) > 0
    assert too_big["cycles"] == "" and "weight buffer of 1024 bytes cannot hold one B tile" in too_big["note"]
    assert "64x64 os 16 B/cycle does not fit: layer " in printed


def test_no_configuration_fits(capsys, weights, tmp_path):
    (tmp_path / "accel.toml").write_text("[buffers]\nweight_bytes = 16\n")
    code = main(["sweep", "--weights", weights, "--config", str(tmp_path / "accel.toml"), "--arrays", "8x8,16x16",
                 "--dataflows", "os", "--bandwidths", "16"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("intvit sweep: error: no configuration fits: array 8x8, os: layer patch_embed.proj: "
                          "weight buffer of 16 bytes cannot hold one B tile")


def test_zero_in_config_file(capsys, tmp_path):
    (tmp_path / "accel.toml").write_text("[memory]\nbandwidth_bytes_per_cycle = 0\n")
    assert_user_error(capsys, ["sweep", "--config", str(tmp_path / "accel.toml")],
                      "accel.toml: memory.bandwidth_bytes_per_cycle must be a positive number, not 0")


def test_parsers():
    assert parse_arrays("8x8, 16X32") == [(8, 8), (16, 32)]
    assert parse_bandwidths("8,0.5") == [8, 0.5]
    assert parse_dataflows("OS,ws") == ["os", "ws"]
    with pytest.raises(IntVitError, match=r"^--bandwidths: 'inf' is not a positive number"):
        parse_bandwidths("inf")
