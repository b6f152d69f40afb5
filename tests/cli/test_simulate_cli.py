"""``intvit simulate``: tables, JSON, plot, the SCALE-Sim topology path and one-line user errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from intvit.quant.checkpoint import save_weights
from intvit.quant.config import ViTConfig, get_config
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model
from intvit.cli import main
from intvit.sim.scalesim import write_topology
from intvit.sim.topology import vit_gemms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCALE_CFG = """\
[general]
run_name = cli_run

[architecture_presets]
ArrayHeight: 8
ArrayWidth: 8
IfmapSramSzkB: 64
FilterSramSzkB: 64
OfmapSramSzkB: 64
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Dataflow: ws
MemoryBanks: 1

[run_presets]
InterfaceBandwidth: CALC
"""


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> list[str]:
    """Options naming a random-weight MNIST-shaped model and its program, so no test quantises."""
    root = tmp_path_factory.mktemp("mnist")
    torch.manual_seed(0)
    model = ViT(get_config("mnist")).eval()
    save_weights(model, root / "weights.safetensors")
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    quantize_model(model, images).save(root / "program.npz")
    return ["--weights", str(root / "weights.safetensors"), "--program", str(root / "program.npz")]


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, args: list[str], message: str) -> None:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"intvit {args[0]}: error: ")
    assert message in lines[0]


def test_table_totals_units_and_prediction(capsys, mnist):
    code, out, _ = simulate(capsys, *mnist, "--batch", "2")
    assert code == 0
    assert "mnist on a 16x16 os array, batch 2" in out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    assert header.split() == ["op", "unit", "cycles", "exposed", "share", "util", "on-chip", "B", "off-chip", "B",
                              "bound"]
    qkv = next(line for line in out.splitlines() if line.startswith("blocks.3.attn.qkv "))
    assert qkv.split()[1] == "matmul" and qkv.split()[-1] in ("compute", "memory")
    for field in ("cycles", "latency", "throughput", "MACs/cycle", "MAC utilisation", "DRAM bytes"):
        assert any(line.startswith(field) for line in out.splitlines()), field
    assert "µs at 500 MHz" in out
    for unit in ("array", "requant", "softmax", "gelu", "layernorm", "load", "store"):
        assert any(line.split()[0] == unit and line.endswith("%") for line in out.splitlines() if line), unit
    assert "image 0: predicted class" in out and "image 1: predicted class" in out and ", label " in out
    # Layout ops take no cycles and stay out of the table.
    assert "blocks.0.attn.split" not in out


def test_json_report(capsys, mnist, tmp_path):
    path = tmp_path / "report.json"
    code, out, _ = simulate(capsys, *mnist, "--json", str(path), "--mode", "scalesim")
    assert code == 0 and "predicted class" in out
    data = json.loads(path.read_text())
    for key in ("model", "batch", "array", "dataflow", "clock_mhz", "total_cycles", "latency_us",
                "images_per_second", "macs", "macs_per_cycle", "mac_utilization", "dram_bytes", "unit_cycles",
                "ops", "accelerator", "mode", "predictions", "logits"):
        assert key in data, key
    assert data["mode"] == "scalesim" and data["model"] == "mnist"
    assert data["total_cycles"] == sum(op["exposed_cycles"] for op in data["ops"])
    assert data["total_cycles"] == sum(data["unit_cycles"].values())
    # On the op-level model's sequential schedule the critical path is each op's exposed cycles.
    critical = {unit: e["critical_cycles"] for unit, e in data["timeline"]["units"].items()}
    assert sum(critical.values()) == data["total_cycles"]
    assert critical["softmax"] == data["unit_cycles"]["softmax"]
    assert data["predictions"][0]["class"] == int(np.argmax(data["logits"][0]))
    assert data["accelerator"]["matmul"]["rows"] == 16


def test_json_to_stdout_replaces_tables(capsys, mnist):
    code, out, _ = simulate(capsys, *mnist, "--json", "--no-functional")
    assert code == 0
    data = json.loads(out)
    assert data["predictions"] == [] and data["logits"] is None


def test_cycle_only_run_makes_no_prediction(capsys, mnist, tmp_path):
    functional = simulate(capsys, *mnist, "--json", str(tmp_path / "a.json"))
    cycles_only = simulate(capsys, *mnist, "--no-functional", "--json", str(tmp_path / "b.json"))
    assert "predicted class" not in cycles_only[1]
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a["total_cycles"] == b["total_cycles"] and a["unit_cycles"] == b["unit_cycles"]


def test_plot_is_written(capsys, mnist, tmp_path):
    path = tmp_path / "cycles.png"
    code, _, _ = simulate(capsys, *mnist, "--no-functional", "--plot", str(path))
    assert code == 0
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_image_file(capsys, mnist, tmp_path):
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 12:16] = 255
    Image.fromarray(pixels).save(tmp_path / "one.png")
    code, out, _ = simulate(capsys, *mnist, "--image", str(tmp_path / "one.png"), "--batch", "2")
    assert code == 0
    predictions = [line for line in out.splitlines() if "predicted class" in line]
    assert len(predictions) == 2 and "label" not in out.split("predicted class")[-1]
    assert predictions[0].split("predicted class")[1] == predictions[1].split("predicted class")[1]


def test_config_file_changes_the_array(capsys, mnist, tmp_path):
    config = tmp_path / "accel.toml"
    config.write_text('clock_mhz = 1000\n[matmul]\nrows = 8\ncols = 32\ndataflow = "is"\n')
    code, out, _ = simulate(capsys, *mnist, "--no-functional", "--config", str(config))
    assert code == 0 and "8x32 is array" in out and "at 1000 MHz" in out


@pytest.mark.parametrize(("toml", "message"), [
    ("[matmul]\nrows = 0\n", "accel.toml: matmul.rows must be a positive integer, not 0"),
    ("[buffers]\nifmap_bytes = -4\n", "accel.toml: buffers.ifmap_bytes must be a positive integer, not -4"),
    ('[matmul]\ndataflow = "xs"\n', "accel.toml: matmul.dataflow must be one of os, ws, is, not 'xs'"),
    ("[buffers]\nweight_bytes = 16\n", "weight buffer of 16 bytes cannot hold one B tile"),
])
def test_bad_config_is_one_line(capsys, mnist, tmp_path, toml, message):
    (tmp_path / "accel.toml").write_text(toml)
    assert_user_error(capsys, ["simulate", *mnist, "--no-functional", "--config", str(tmp_path / "accel.toml")],
                      message)


def test_program_from_another_model(capsys, mnist, tmp_path):
    # A valid program (the loader refuses an empty one) of a small model that is not mnist.
    config = ViTConfig("tiny", img_size=16, patch_size=8, in_chans=1, num_classes=10, embed_dim=16, depth=1,
                       num_heads=2, mean=(0.5,), std=(0.5,))
    images = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    other = quantize_model(ViT(config).eval(), images).save(tmp_path / "tiny.npz")
    args = ["simulate", mnist[0], mnist[1], "--program", str(other), "--model", "mnist"]
    assert_user_error(capsys, args, "program is for model 'tiny' (16-wide, depth 1), not the 'mnist' model")


def test_debug_shows_the_traceback(mnist, tmp_path):
    (tmp_path / "accel.toml").write_text("[matmul]\nrows = 0\n")
    with pytest.raises(IntVitError, match="matmul.rows must be a positive integer, not 0"):
        main(["--debug", "simulate", *mnist, "--config", str(tmp_path / "accel.toml")])


@pytest.mark.parametrize(("args", "message"), [
    (["--plot", "cycles.svg"], "cycles.svg: plots are written as PNG"),
    (["--out-dir", "reports"], "--out-dir applies to --topology runs only"),
    (["--scalesim-config", "scale.cfg"], "--scalesim-config needs --topology"),
])
def test_option_misuse(capsys, args, message):
    assert_user_error(capsys, ["simulate", *args], message)


@pytest.fixture
def topology(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "scale.cfg").write_text(SCALE_CFG)
    write_topology(tmp_path / "topo.csv", vit_gemms(get_config("mnist"), blocks=1))
    return tmp_path / "scale.cfg", tmp_path / "topo.csv"


def test_scalesim_topology_reports(capsys, topology, tmp_path):
    scale, topo = topology
    out_dir = tmp_path / "out"
    code, out, _ = simulate(capsys, "--scalesim-config", str(scale), "--topology", str(topo), "-i", "gemm",
                            "--out-dir", str(out_dir), "--json", str(tmp_path / "topo.json"))
    assert code == 0
    assert "14 layers on a 8x8 ws array, scalesim cycles" in out
    assert any(line.startswith("block0.fc1 ") for line in out.splitlines())
    names = ("COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv", "INTVIT_REPORT.csv")
    assert all((out_dir / name).is_file() for name in names)
    with (out_dir / "COMPUTE_REPORT.csv").open() as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    data = json.loads((tmp_path / "topo.json").read_text())
    assert len(rows) == len(data["layers"]) == 14
    assert sum(int(row["Total Cycles"]) for row in rows) == data["total_cycles"]
    assert f"total: {data['total_cycles']:,} cycles" in out


def test_topology_with_intvit_config_defaults_to_its_name(capsys, topology, tmp_path, monkeypatch):
    _, topo = topology
    monkeypatch.chdir(tmp_path)
    code, out, _ = simulate(capsys, "--topology", str(topo), "--mode", "native")
    assert code == 0 and "16x16 os array, native cycles" in out
    assert (tmp_path / "topo" / "COMPUTE_REPORT.csv").is_file()


def test_console_script(tmp_path):
    """The installed ``intvit`` on the default path: embedded MNIST weights, calibration, one test image."""
    script = Path(sys.executable).parent / "intvit"
    (tmp_path / "bad.toml").write_text("[matmul]\ncols = 0\n")
    result = subprocess.run([str(script), "simulate", "--calib-size", "16", "--json", "report.json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "image 0: predicted class" in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["predictions"][0]["label"] >= 0
    result = subprocess.run([str(script), "simulate", "--config", "bad.toml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "intvit simulate: error: bad.toml: matmul.cols must be a positive integer, not 0"
