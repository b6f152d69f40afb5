"""Every example has a __main__ and runs (Amaranth's test_examples pattern)."""

import subprocess
import sys
from pathlib import Path

from quant.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]


def test_train_mnist_runs_and_writes_loadable_weights(tmp_path):
    out = tmp_path / "m.safetensors"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--epochs", "1", "--limit", "128",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path,
    )
    assert "epoch   1/1  loss" in result.stdout
    assert "test top-1" in result.stdout
    assert load_weights(out).config.name == "mnist"


def test_train_mnist_rejects_bad_limit(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--limit", "0", "--out",
         str(tmp_path / "m.safetensors")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "limit must be a positive integer, not 0" in result.stderr
