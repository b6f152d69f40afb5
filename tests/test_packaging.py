"""The wheel users install: one top-level name, the embedded weights inside, and a working run.

The tree keeps ``quant/``, ``sim/`` and ``rtl/`` at the top; ``pyproject.toml`` maps them to
``intvit.quant``, ``intvit.sim`` and ``intvit.rtl``. Only the built wheel shows whether that
mapping holds, so this test builds it, checks its names, and runs the installed (not editable)
package from outside the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    (built,) = out.glob("intvit-*.whl")
    return built


def test_wheel_has_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"intvit"}
    for package in ("intvit/quant", "intvit/sim", "intvit/rtl", "intvit/commands"):
        assert f"{package}/__init__.py" in names, package
    assert "intvit/quant/weights/mnist.safetensors" in names
    assert not any(name.startswith(("intvit/tests", "tests/")) for name in names)


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    # Only the installed copy is importable: the checkout is not on the path and cwd is elsewhere.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    code = ("import json, sys, intvit.quant, intvit.cli;"
            "print(json.dumps(intvit.quant.__file__));"
            "sys.exit(intvit.cli.main(['accuracy', '--limit', '20', '--calib-size', '16', '--json', 'r.json']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[0]).startswith(str(target))
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 20
