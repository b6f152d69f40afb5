"""``intvit rtl-run``: the embedded MNIST ViT, whole inference, on the accelerator's RTL (Verilator + AxiRam).

The default run builds the small 8x8 accelerator (``docs/configs/small_8x8.toml``), whose Verilog
compiles in about 3-4 minutes, and runs one test image: logits equal to the golden executor's,
RTL cycles within 2 % of ``sim.schedule``. The full-size and other configs, and 8 images, are ``slow``.
"""

from __future__ import annotations

import json

import pytest

from intvit.cli import main


def rtl_run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["rtl-run", *args])
    except SystemExit as exc:              # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "--images"),
    (["--config", "no-such.toml"], "no-such.toml"),
])
def test_user_errors_are_one_line(capsys, args, message):
    code, out, err = rtl_run(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


@pytest.mark.parametrize("config, images", [
    ("docs/configs/small_8x8.toml", 1),
    pytest.param(None, 8, marks=pytest.mark.slow),
    pytest.param("docs/configs/small_scratchpads.toml", 1, marks=pytest.mark.slow),
    pytest.param("docs/configs/narrow_axi.toml", 1, marks=pytest.mark.slow),
])
def test_mnist_on_rtl_is_bit_exact_and_within_two_percent(capsys, tmp_path, config, images):
    args = ["--images", str(images), "--calib-size", "256", "--json", str(tmp_path / "out.json"),
            "--work-dir", str(tmp_path / "work")]
    if config:
        args += ["--config", config]
    code, out, err = rtl_run(capsys, *args)
    assert code == 0, err
    data = json.loads((tmp_path / "out.json").read_text())
    assert len(data["images"]) == images
    for row in data["images"]:
        assert row["logits"] == row["golden_logits"]
        assert abs(row["rtl_cycles"] - row["sim_cycles"]) <= 0.02 * row["sim_cycles"]
