"""``intvit accuracy``: acceptance on the embedded set, table, JSON, plot, options and one-line user errors."""

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

from intvit.quant.config import get_config
from intvit.quant.data import load_mnist
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Small runs: enough images to exercise every path, few enough to keep each run near a second.
QUICK = ["--limit", "20", "--calib-size", "16"]
JSON_KEYS = {
    "model", "checkpoint", "data", "normalization", "calibration", "notes", "images", "float_top1", "float_top5", "int_top1", "int_top5", "agreement",
    "logit_sqnr_db", "logit_max_abs_error", "logit_mean_abs_error", "layer_sqnr_db", "saturation",
}
# Acceptance (issue 3) on the embedded model's full MNIST test split.
MAX_TOP1_GAP = 0.5
MIN_AGREEMENT = 99.0
MNIST_TEST_IMAGES = 1000


def accuracy(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["accuracy", *args])
    out, err = capsys.readouterr()
    return code, out, err


def accuracy_json(capsys, *args: str) -> dict:
    code, out, _ = accuracy(capsys, *args, "--json", "-")
    assert code == 0
    return json.loads(out)


def write_image_folder(root: Path, classes: list[str], per_class: int) -> Path:
    """``root/<class>/<i>.png``: 28x28 MNIST test digits, class folder i holding digit i."""
    images, labels, _ = load_mnist(get_config("mnist"), "test", 20 * per_class * len(classes))
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images[labels == label][:per_class]):
            Image.fromarray(np.rint(image[0] * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def other_architecture(path: Path, **changes) -> Path:
    """A random ViT of another shape saved the timm way (``torch.save(state_dict)``)."""
    torch.manual_seed(0)
    torch.save(ViT(dataclasses.replace(get_config("mnist"), **changes)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> dict:
    """One run with every default on the whole test split (about 3 s), shared by the JSON tests."""
    plot = tmp_path_factory.mktemp("full") / "sqnr.png"
    # capsys is function-scoped; a module fixture reads the JSON from a file instead.
    out = plot.with_suffix(".json")
    assert main(["accuracy", "--json", str(out), "--plot", str(plot)]) == 0
    return {"result": json.loads(out.read_text()), "plot": plot}


def test_acceptance_on_the_embedded_test_split(full_run):
    result = full_run["result"]
    assert result["images"] == MNIST_TEST_IMAGES
    assert abs(result["float_top1"] - result["int_top1"]) <= MAX_TOP1_GAP
    assert result["agreement"] >= MIN_AGREEMENT
    assert result["float_top1"] > 95 and result["int_top5"] > 99


def test_json_keys_layers_and_saturation(full_run):
    result = full_run["result"]
    assert set(result) == JSON_KEYS
    assert (result["model"], result["data"]) == ("mnist", "mnist")
    layers = result["layer_sqnr_db"]
    assert list(layers)[0] == "input" and list(layers)[-1] == "logits"
    assert {"blocks.3.attn.probs", "blocks.0.mlp.gelu", "norm"} <= set(layers)
    assert all(db > 10 for db in layers.values())
    assert all(0 < percent <= 100 for percent in result["saturation"].values())
    assert result["logit_max_abs_error"] >= result["logit_mean_abs_error"] > 0


def test_plot_is_a_png(full_run):
    assert full_run["plot"].read_bytes().startswith(PNG_MAGIC)


def test_table(capsys):
    code, out, err = accuracy(capsys, *QUICK)
    assert code == 0 and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0] == "mnist on mnist: 20 images"
    assert lines[1] == "normalisation: mean (0.1307) std (0.3081) from preset mnist"
    assert lines[2] == "calibration: 16 images of mnist train split"
    assert lines[3].split() == ["top-1", "%", "top-5", "%"]
    assert lines[5].split()[0] == "float" and lines[6].split()[0] == "integer"
    assert any(line.startswith("top-1 agreement float vs integer: ") and line.endswith(" %") for line in lines)
    assert any(line.startswith("logits: SQNR ") and "max |error|" in line for line in lines)
    assert any(line.startswith("saturation: ") for line in lines)
    table = lines[lines.index("per-layer SQNR of integer vs float activations:") + 1:]
    assert table[0].split() == ["tensor", "SQNR", "dB"]
    assert [row.split()[0] for row in table[2:]][:3] == ["input", "patch_embed", "embed"]
    assert table[-1].split()[0] == "logits"


def test_json_to_stdout_is_only_json(capsys):
    result = accuracy_json(capsys, *QUICK)
    assert result["images"] == 20 and set(result) == JSON_KEYS


def test_json_file_keeps_the_table(capsys, tmp_path):
    code, out, _ = accuracy(capsys, *QUICK, "--json", str(tmp_path / "r.json"))
    assert code == 0 and out.startswith("mnist on mnist: 20 images")
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 20


@pytest.mark.parametrize("options", [
    ["--calib-method", "percentile", "--percentile", "99.9"],
    ["--seed", "7"],
    ["--batch-size", "7"],
])
def test_options_are_accepted(capsys, options):
    result = accuracy_json(capsys, *QUICK, *options)
    assert result["images"] == 20 and result["agreement"] >= 90


def test_batch_size_does_not_change_the_integer_results(capsys):
    small, large = (accuracy_json(capsys, *QUICK, "--batch-size", size) for size in ("3", "64"))
    for key in ("int_top1", "int_top5", "float_top1", "agreement"):
        assert small[key] == large[key]
    # SQNR compares against float torch, whose GEMM sums in a batch-size-dependent order.
    assert small["layer_sqnr_db"] == pytest.approx(large["layer_sqnr_db"], rel=1e-6)
    assert small["saturation"] == pytest.approx(large["saturation"], rel=1e-9)


def test_digits(capsys):
    result = accuracy_json(capsys, "--data", "digits", *QUICK)
    assert (result["data"], result["images"]) == ("digits", 20)


def test_image_folder(capsys, tmp_path):
    root = write_image_folder(tmp_path / "set", [str(d) for d in range(10)], per_class=2)
    result = accuracy_json(capsys, "--data", str(root))
    # Every fifth image of each class is held apart for calibration, never evaluated.
    assert result["images"] == 16 and result["float_top1"] >= 80 and result["agreement"] >= 90
    assert result["calibration"] == f"4 images of {root} (every fifth image of each class, held apart from the " \
                                    "evaluated ones)"


# ----------------------------------------------------------------------------- bad input
def assert_user_error(capsys, args: list[str], *parts: str) -> None:
    """Exit 2, one stderr line ``intvit accuracy: error: ...`` holding every part, no traceback."""
    code = main(["accuracy", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("intvit accuracy: error: ")
    for part in parts:
        assert part in lines[0]


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Options and the parts their error line must hold, per bad input."""
    (tmp / "empty").mkdir()
    (tmp / "no_images" / "a").mkdir(parents=True)
    (tmp / "no_images" / "a" / "notes.txt").write_text("not an image\n")
    corrupt = write_image_folder(tmp / "corrupt", [str(d) for d in range(10)], per_class=1)
    (corrupt / "3" / "broken.png").write_bytes(PNG_MAGIC + b"cut short")
    three = write_image_folder(tmp / "three", ["0", "1", "2"], per_class=2)
    shallow = other_architecture(tmp / "shallow.pth", depth=2)
    narrow = other_architecture(tmp / "narrow.pth", embed_dim=32, num_heads=2)
    (tmp / "truncated.pth").write_bytes(shallow.read_bytes()[:1000])
    return {
        "empty dir": (["--data", str(tmp / "empty")], (str(tmp / "empty"), "no images found")),
        "class folders without images": (["--data", str(tmp / "no_images")],
                                         (str(tmp / "no_images"), "no images found")),
        "missing dir": (["--data", str(tmp / "nowhere") + "/"], (str(tmp / "nowhere"), "no such directory")),
        "unknown set": (["--data", "cifar"], ("'cifar'", "not mnist, digits or an existing directory")),
        "corrupt image": (["--data", str(corrupt)], (str(corrupt / "3" / "broken.png"), "cannot read image")),
        "class count": (["--data", str(three)], (str(three), "3 classes", "num_classes 10")),
        "shallower checkpoint": (["--model", "mnist", "--weights", str(shallow)],
                                 (str(shallow), "--model mnist has depth 4 but the checkpoint has 2")),
        "narrower checkpoint": (["--model", "mnist", "--weights", str(narrow)],
                                (str(narrow), "--model mnist has embed_dim 64 but the checkpoint has 32")),
        "truncated checkpoint": (["--weights", str(tmp / "truncated.pth")],
                                 (str(tmp / "truncated.pth"), "unreadable or truncated checkpoint")),
        "missing checkpoint": (["--weights", str(tmp / "gone.pth")], (str(tmp / "gone.pth"), "no such checkpoint")),
        "plot not png": (["--plot", str(tmp / "sqnr.pdf")], (str(tmp / "sqnr.pdf"), "PNG")),
        "plot dir missing": (["--plot", str(tmp / "no" / "x.png")], (str(tmp / "no" / "x.png"), "does not exist")),
        "json dir missing": (["--json", str(tmp / "no" / "x.json")], (str(tmp / "no"), "does not exist")),
        "missing program": (["--program", str(tmp / "p.npz")], (str(tmp / "p.npz"), "no such program file")),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_inputs(tmp_path_factory.mktemp("bad"))


BAD_CASES = [
    "empty dir", "class folders without images", "missing dir", "unknown set", "corrupt image", "class count",
    "shallower checkpoint", "narrower checkpoint", "truncated checkpoint", "missing checkpoint", "plot not png",
    "plot dir missing", "json dir missing", "missing program",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line(capsys, bad, case):
    options, parts = bad[case]
    assert_user_error(capsys, [*options, *QUICK], *parts)


@pytest.mark.parametrize("case", ["corrupt image", "class count", "shallower checkpoint", "plot not png"])
def test_debug_raises(bad, case):
    options, parts = bad[case]
    with pytest.raises(IntVitError, match=parts[-1]):
        main(["--debug", "accuracy", *options, *QUICK])


@pytest.mark.parametrize("option", ["--limit", "--batch-size", "--calib-size"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_counts_must_be_positive(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["accuracy", option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: intvit accuracy")
    assert f"argument {option}: must be a positive integer, not '{value}'" in err


def test_console_script(tmp_path):
    """The installed ``intvit``: one error line without --debug, a traceback with it."""
    script = Path(sys.executable).with_name("intvit")
    (tmp_path / "empty").mkdir()
    args = ["accuracy", "--data", str(tmp_path / "empty")]
    plain = subprocess.run([script, *args], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr == f"intvit accuracy: error: {tmp_path / 'empty'}: no images found in <class>/<image> " \
                           f"subdirectories\n"
    debug = subprocess.run([script, "--debug", *args], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "IntVitError" in debug.stderr
