"""Every example has a __main__ and runs (Amaranth's test_examples pattern)."""

import subprocess
import sys
from pathlib import Path

from intvit.quant.checkpoint import load_weights

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


def run_example(name: str, *args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                            capture_output=True, text=True, timeout=300, check=True, cwd=cwd)
    return result.stdout


def test_integer_inference_example(tmp_path):
    out = run_example("integer_inference.py", "--images", "100", "--out", str(tmp_path / "p.npz"), cwd=tmp_path)
    assert (tmp_path / "p.npz").is_file()
    assert "integer top-1 on 100 test images" in out and "top-1 agreement" in out


def test_accelerator_sizing_example(tmp_path):
    out = run_example("accelerator_sizing.py", "--model", "mnist", cwd=tmp_path)
    assert out.count("\n") == 9 and "64x64" in out


def test_every_example_is_tested_and_has_a_main():
    tested = Path(__file__).read_text()
    for script in (ROOT / "examples").glob("*.py"):
        assert 'if __name__ == "__main__":' in script.read_text(), script.name
        assert script.name in tested, f"{script.name} has no test"
