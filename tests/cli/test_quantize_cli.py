"""``intvit quantize``: the program file it writes, its use by ``intvit accuracy``, and one-line user errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from intvit.quant.checkpoint import load_embedded, save_weights
from intvit.quant.config import get_config
from intvit.quant.data import load_mnist, normalize
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.program import load_program
from intvit.quant.ptq import quantize_model
from intvit.cli import main

CALIB = ["--calib-size", "32", "--calib-method", "percentile"]
LIMIT = ["--limit", "40"]
# A ViT that takes MNIST images but is not the embedded model: one narrow block.
TINY = dataclasses.replace(get_config("mnist"), name="tiny", embed_dim=16, depth=1, num_heads=2)


def quantize(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["quantize", *args])
    out, err = capsys.readouterr()
    return code, out, err


def accuracy_json(capsys, *args: str) -> dict:
    code = main(["accuracy", *args, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def write_image_folder(root: Path, classes: int, per_class: int) -> Path:
    """``root/<digit>/<i>.png`` holding 28x28 MNIST test digits."""
    images, labels, _ = load_mnist(get_config("mnist"), "test", 20 * classes * per_class)
    for label in range(classes):
        (root / str(label)).mkdir(parents=True)
        for i, image in enumerate(images[labels == label][:per_class]):
            Image.fromarray(np.rint(image[0] * 255).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The embedded model's program (percentile, 32 images) and a tiny custom model with its program."""
    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    save_weights(ViT(TINY).eval(), root / "tiny.safetensors")
    assert main(["quantize", *CALIB, "--out", str(root / "mnist.npz")]) == 0
    assert main(["quantize", "--weights", str(root / "tiny.safetensors"), "--calib-size", "8",
                 "-o", str(root / "tiny.npz")]) == 0
    return {"mnist": root / "mnist.npz", "tiny": root / "tiny.npz", "tiny weights": root / "tiny.safetensors"}


def test_writes_the_program_and_says_so(capsys, tmp_path):
    out = tmp_path / "p.npz"
    code, text, err = quantize(capsys, "--calib-size", "16", "--out", str(out))
    assert code == 0 and "Traceback" not in err
    assert text.startswith(f"wrote {out}: 92 ops (1 patchify, 26 matmul, 29 requant")
    assert text.rstrip().endswith("calibrated on 16 images (minmax)")
    program = load_program(out)
    assert program.config == get_config("mnist")
    assert program.calibration["images"] == 16 and program.calibration["method"] == "minmax"


def test_calibration_options_reach_the_program(files):
    calibration = load_program(files["mnist"]).calibration
    assert (calibration["images"], calibration["method"]) == (32, "percentile")
    assert calibration["percentile"] == 99.99


def test_file_equals_in_process_quantisation(files):
    config = get_config("mnist")
    images, _, _ = load_mnist(config, "train", 32)
    expected = quantize_model(load_embedded(), normalize(images, config), method="percentile", batch_size=64)
    program = load_program(files["mnist"])
    assert program.input_scale == expected.input_scale
    assert [op.name for op in program.ops] == [op.name for op in expected.ops]
    assert program.constants.keys() == expected.constants.keys()
    for name, value in expected.constants.items():
        np.testing.assert_array_equal(program.constants[name], value, err_msg=name)


def test_accuracy_with_the_program_matches_quantising_in_process(capsys, files):
    from_file = accuracy_json(capsys, "--program", str(files["mnist"]), *LIMIT)
    in_process = accuracy_json(capsys, *CALIB, *LIMIT)
    assert from_file == in_process


def test_custom_model_and_its_program(capsys, files):
    result = accuracy_json(capsys, "--weights", str(files["tiny weights"]), "--program", str(files["tiny"]), *LIMIT)
    assert result["model"] == "tiny" and result["images"] == 40
    assert load_program(files["tiny"]).config == TINY


def test_calibration_on_an_image_folder_and_digits(capsys, tmp_path):
    root = write_image_folder(tmp_path / "set", classes=3, per_class=2)
    code, text, _ = quantize(capsys, "--data", str(root), "--calib-size", "100", "-o", str(tmp_path / "a.npz"))
    # Calibration needs no labels, so a folder of other classes is fine; --calib-size caps, never pads.
    assert code == 0 and text.rstrip().endswith("calibrated on 6 images (minmax)")
    code, text, _ = quantize(capsys, "--data", "digits", "--calib-size", "12", "--batch-size", "5",
                             "--seed", "3", "-o", str(tmp_path / "b.npz"))
    assert code == 0 and text.rstrip().endswith("calibrated on 12 images (minmax)")


# ----------------------------------------------------------------------------- bad input
def assert_user_error(capsys, command: str, args: list[str], *parts: str) -> None:
    """Exit 2, one stderr line ``intvit <command>: error: ...`` holding every part, no traceback."""
    code = main([command, *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"intvit {command}: error: ")
    for part in parts:
        assert part in lines[0]


def test_program_for_another_model_names_the_file(capsys, files):
    assert_user_error(capsys, "accuracy", ["--program", str(files["tiny"]), *LIMIT],
                      str(files["tiny"]), "program is for model 'tiny'", "16-wide, depth 1", "not the 'mnist' model")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, files) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Options and the parts their error line must hold, per bad input."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    corrupt = write_image_folder(tmp / "corrupt", classes=2, per_class=1)
    (corrupt / "1" / "half.png").write_bytes((corrupt / "1" / "0.png").read_bytes()[:60])
    torch.manual_seed(0)
    torch.save(ViT(TINY).state_dict(), tmp / "tiny.pth")
    (tmp / "truncated.pth").write_bytes((tmp / "tiny.pth").read_bytes()[:500])
    out = ["-o", str(tmp / "p.npz")]
    return {
        "out dir missing": (["-o", str(tmp / "no" / "p.npz")], (str(tmp / "no" / "p.npz"), "does not exist")),
        "out is a dir": (["-o", str(tmp)], (str(tmp), "is a directory")),
        "empty dir": (["--data", str(tmp / "empty"), *out], (str(tmp / "empty"), "no images found")),
        "corrupt image": (["--data", str(corrupt), *out], (str(corrupt / "1" / "half.png"), "cannot read image")),
        "other architecture": (["--model", "mnist", "--weights", str(tmp / "tiny.pth"), *out],
                               (str(tmp / "tiny.pth"), "--model mnist has embed_dim 64 but the checkpoint has 16")),
        "truncated checkpoint": (["--weights", str(tmp / "truncated.pth"), *out],
                                 (str(tmp / "truncated.pth"), "unreadable or truncated")),
        "missing checkpoint": (["--weights", str(tmp / "gone.pth"), *out], (str(tmp / "gone.pth"), "no such")),
        "weights for another preset": (["--model", "deit-tiny", "--weights", str(files["tiny weights"]), *out],
                                       (str(files["tiny weights"]), "--model deit-tiny has img_size 224 but the "
                                        "checkpoint has 28", "run it without --model")),
        "percentile out of range": (["--calib-method", "percentile", "--percentile", "0", *out],
                                    ("percentile must be in (0, 100], not 0.0",)),
    }


@pytest.mark.parametrize("case", [
    "out dir missing", "out is a dir", "empty dir", "corrupt image", "other architecture", "truncated checkpoint",
    "missing checkpoint", "weights for another preset", "percentile out of range",
])
def test_bad_input_is_one_line(capsys, bad, case):
    options, parts = bad[case]
    assert_user_error(capsys, "quantize", [*options, "--calib-size", "8"], *parts)
    assert not any(Path(option).suffix == ".npz" and Path(option).exists() for option in options)


@pytest.mark.parametrize("case", ["out dir missing", "corrupt image", "other architecture"])
def test_debug_raises(bad, case):
    options, parts = bad[case]
    with pytest.raises(IntVitError, match=parts[-1]):
        main(["--debug", "quantize", *options, "--calib-size", "8"])


@pytest.mark.parametrize("args, message", [
    (["--calib-size", "0", "-o", "p.npz"], "argument --calib-size: must be a positive integer, not '0'"),
    (["--batch-size", "0", "-o", "p.npz"], "argument --batch-size: must be a positive integer, not '0'"),
    (["--calib-method", "mse", "-o", "p.npz"], "argument --calib-method: invalid choice: 'mse'"),
    ([], "the following arguments are required: --out/-o"),
])
def test_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage: intvit quantize") and message in err


def test_console_script(tmp_path):
    """The installed ``intvit``: one error line without --debug, a traceback with it."""
    script = Path(sys.executable).with_name("intvit")
    out = tmp_path / "missing" / "p.npz"
    plain = subprocess.run([script, "quantize", "-o", out], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr == f"intvit quantize: error: {out}: directory {out.parent} does not exist\n"
    debug = subprocess.run([script, "--debug", "quantize", "-o", out], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "IntVitError" in debug.stderr
