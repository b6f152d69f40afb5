"""``intvit compile`` and ``intvit simulate --compiled``: files, manifest, check, JSON and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from intvit.cli import main
from intvit.compiler.isa import INSTRUCTION_BYTES, Opcode, decode_program
from intvit.quant.config import get_config
from intvit.quant.model import ViT
from intvit.quant.ptq import quantize_model


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    path = tmp_path_factory.mktemp("prog") / "mnist.npz"
    quantize_model(ViT(get_config("mnist")).eval(), x).save(path)
    return path


def test_compile_writes_stream_image_manifest(tmp_path, program_file, capsys):
    out = tmp_path / "out"
    assert main(["compile", "--program", str(program_file), "--out", str(out), "--check", "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["check"]["bit_exact"] and summary["sim_cycles"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    stream = (out / "program.bin").read_bytes()
    assert len(stream) == manifest["instructions"] * INSTRUCTION_BYTES == summary["stream_bytes"]
    assert decode_program(stream)[-1].opcode == Opcode.END
    assert (out / "image.bin").stat().st_size == manifest["image_bytes"]
    assert manifest["sim_cycles"] == summary["sim_cycles"] and manifest["output"]["shape"] == [1, 10]
    assert sorted(p.name for p in out.iterdir()) == ["image.bin", "manifest.json", "program.bin"]


def test_simulate_compiled(program_file, capsys, tmp_path):
    plot = tmp_path / "gantt.png"
    assert main(["simulate", "--compiled", "--program", str(program_file), "--no-functional", "--json", "-",
                 "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compiled"] and report["total_cycles"] > report["units"]["matmul"]["busy_cycles"] > 0
    assert sum(c["count"] for c in report["classes"].values()) == report["instructions"]
    units = report["timeline"]["units"]
    assert units["array"]["busy_cycles"] == report["units"]["matmul"]["busy_cycles"]
    assert units["load"]["busy_cycles"] == report["units"]["dma_load"]["busy_cycles"] >= units["load"]["exposed_cycles"]
    assert sum(e["critical_cycles"] for e in units.values()) == report["total_cycles"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_simulate_compiled_tables(program_file, capsys):
    assert main(["simulate", "--compiled", "--program", str(program_file), "--no-functional"]) == 0
    out = capsys.readouterr().out
    assert "critical path:" in out and "the array idles" in out
    for unit in ("array", "requant", "softmax", "gelu", "layernorm", "load", "store", "control"):
        assert any(line.split()[0] == unit and line.endswith("%") for line in out.splitlines() if line), unit


def test_compile_refusal_is_one_line(tmp_path, program_file, capsys):
    config = tmp_path / "accel.toml"
    config.write_text("[buffers]\nofmap_bytes = 4096\n")
    assert main(["compile", "--program", str(program_file), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("compile: softmax 'blocks.0.attn.softmax': 16 rows of 50 scores need 64 ACC words, "
                        "half of ACC holds 32") and "\n" not in err
    assert not (tmp_path / "o").exists()
