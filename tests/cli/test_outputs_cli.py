"""Outputs never half written and inputs that cannot crash the command line (issue 11).

Every case is a user mistake or a hostile file: one line on stderr, exit status 2, no traceback,
and no output file (or temporary) left behind. Output paths are checked before the work: each
output case also names a missing --config, so the output's error proves it was checked first.
"""

import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from intvit.cli import main

MISSING_CONFIG = ["--config", "/no/such/accel.toml"]


def one_line_error(capsys, argv, command):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    prefix = f"intvit {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):].rstrip("\n")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


# ---------------------------------------------------------------- output paths, checked first
def output_cases(tmp_path):
    missing = tmp_path / "missing" / "x"
    long_name = tmp_path / ("n" * 300 + ".csv")
    return {
        "sweep --out in a missing folder": (
            ["sweep", "--out", f"{missing}.csv", *MISSING_CONFIG], "sweep",
            f"{missing}.csv: directory {missing.parent} does not exist"),
        "sweep --out too long": (
            ["sweep", "--out", str(long_name), *MISSING_CONFIG], "sweep",
            f"{long_name}: file name is longer than 255 bytes"),
        "sweep --plot that is a folder": (
            ["sweep", "--plot", str(tmp_path / "d.png"), *MISSING_CONFIG], "sweep",
            f"{tmp_path / 'd.png'}: is a directory; give a file name"),
        "simulate --json in a missing folder": (
            ["simulate", "--json", f"{missing}.json", *MISSING_CONFIG], "simulate",
            f"{missing}.json: directory {missing.parent} does not exist"),
        "simulate --plot in a missing folder": (
            ["simulate", "--plot", f"{missing}.png", *MISSING_CONFIG], "simulate",
            f"{missing}.png: directory {missing.parent} does not exist"),
        "simulate --out-dir under a file": (
            ["simulate", "--topology", "t.csv", "--out-dir", str(tmp_path / "file" / "run"), *MISSING_CONFIG],
            "simulate", f"{tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a directory"),
        "accuracy --json in a missing folder": (
            ["accuracy", "--json", f"{missing}.json", "--data", "/no/such/dir"], "accuracy",
            f"{missing}.json: directory {missing.parent} does not exist"),
        "accuracy --plot that is a folder": (
            ["accuracy", "--plot", str(tmp_path / "d.png"), "--data", "/no/such/dir"], "accuracy",
            f"{tmp_path / 'd.png'}: is a directory; give a file name"),
        "quantize -o in a missing folder": (
            ["quantize", "-o", f"{missing}.npz", "--data", "/no/such/dir"], "quantize",
            f"{missing}.npz: directory {missing.parent} does not exist"),
        "verilog --out that is a file": (
            ["verilog", "--out", str(tmp_path / "file"), *MISSING_CONFIG], "verilog",
            f"{tmp_path / 'file'}: is a file, not a directory"),
        "topology --out in a missing folder": (
            ["topology", "--out", f"{missing}.csv", "--model", "deit-tiny"], "topology",
            f"{missing}.csv: directory {missing.parent} does not exist"),
        "synth --json in a missing folder": (
            ["synth", "--json", f"{missing}.json", *MISSING_CONFIG], "synth",
            f"{missing}.json: directory {missing.parent} does not exist"),
    }


CASE_NAMES = list(output_cases(Path("/x")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_output_path_is_checked_before_the_work(capsys, tmp_path, case):
    (tmp_path / "d.png").mkdir()
    (tmp_path / "file").write_text("not a folder")
    argv, command, message = output_cases(tmp_path)[case]
    assert one_line_error(capsys, argv, command) == message
    assert leftovers(tmp_path) == ["d.png", "file"]


# ------------------------------------------------------------------------ hostile inputs
def bomb_png(path: Path) -> Path:
    """A PNG header claiming 30000 x 30000 pixels: over Pillow's decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def write_inputs(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b"clock_mhz = 400 # \xe9t\xe9\n")
    (tmp_path / "inf.toml").write_text("clock_mhz = inf\n")
    (tmp_path / "slow.toml").write_text("[memory]\nbandwidth_bytes_per_cycle = 1e-310\n")
    (tmp_path / "deep.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "huge.toml").write_text("[matmul]\nrows = 1000000000\n")
    (tmp_path / "lanes.toml").write_text("[requant]\nlanes = 1000000000\n")
    (tmp_path / "big.toml").write_text("[matmul]\nrows = 4096\ncols = 4096\n")
    (tmp_path / "dp.csv").write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
        "DP1, 3, 3, 3, 3, 1000000000, 1, 1,\n")
    (tmp_path / "digits.csv").write_text("Layer, M, N, K,\nfc, 4, " + "7" * 400 + ", 2,\n")
    (tmp_path / "up.cfg").write_text("[general]\nrun_name = ../../x\n[architecture_presets]\nArrayHeight: 4\n"
                                     "ArrayWidth: 4\nIfmapSramSzkB: 64\nFilterSramSzkB: 64\nOfmapSramSzkB: 64\n"
                                     "Dataflow: os\n")
    (tmp_path / "images" / "seven").mkdir(parents=True)
    for i in range(5):                    # a fifth is held apart for calibration; the rest is evaluated
        bomb_png(tmp_path / "images" / "seven" / f"bomb{i}.png")


def input_cases(t):
    return {
        "non-UTF-8 TOML": (["simulate", "--no-functional", "--config", str(t / "latin1.toml")], "simulate",
                           "latin1.toml: not UTF-8 text (byte 18 is 0xe9)"),
        "clock_mhz = inf": (["sweep", "--config", str(t / "inf.toml")], "sweep",
                            "inf.toml: clock_mhz must be from 1e-06 to 1e+06, not inf"),
        "bandwidth 1e-310": (["simulate", "--no-functional", "--config", str(t / "slow.toml")], "simulate",
                             "slow.toml: memory.bandwidth_bytes_per_cycle must be at least 0.001, not 1e-310"),
        "100,000-deep TOML array": (["simulate", "--config", str(t / "deep.toml")], "simulate",
                                    "deep.toml: invalid TOML: nested too deeply"),
        "verilog with 10**9 rows": (["verilog", "--config", str(t / "huge.toml"), "--out", str(t / "v")], "verilog",
                                    "huge.toml: matmul.rows must be at most 65536, not 1000000000"),
        "verilog with 10**9 lanes": (["verilog", "--config", str(t / "lanes.toml"), "--out", str(t / "v")],
                                     "verilog", "lanes.toml: requant.lanes must be at most 65536, not 1000000000"),
        "verilog of a 4096x4096 array": (
            ["verilog", "--config", str(t / "big.toml"), "--out", str(t / "v")], "verilog",
            "a 4096x4096 array has 16,777,216 processing elements; the RTL is elaborated for at most 4,096 (64x64)"),
        "synth of a 4096x4096 array": (
            ["synth", "--config", str(t / "big.toml")], "synth",
            "a 4096x4096 array has 16,777,216 processing elements; the RTL is elaborated for at most 4,096 (64x64)"),
        "depth-wise layer of 10**9 channels": (
            ["simulate", "--topology", str(t / "dp.csv"), "--out-dir", str(t / "r")], "simulate",
            "dp.csv:2: depth-wise layer DP1 of 1000000000 channels makes more than 100,000 layers in all (one per "
            "channel); the limit is 100,000"),
        "400-digit topology dimension": (
            ["simulate", "--topology", str(t / "digits.csv"), "--out-dir", str(t / "r")], "simulate",
            "digits.csv:2: layer fc: N must be at most 2147483647, not a 400-digit number"),
        "run_name outside the folder": (
            ["simulate", "--topology", str(t / "digits.csv"), "--scalesim-config", str(t / "up.cfg")], "simulate",
            "up.cfg: run_name must be a plain folder name (no /, \\ or ..), not '../../x'"),
        "functional batch of 10**9 images": (
            ["simulate", "--batch", "1000000000"], "simulate",
            "--batch 1000000000: a functional simulation keeps every image's tensors; at most 256 (--no-functional "
            "costs larger batches from shapes alone)"),
        "image over the bomb limit": (["accuracy", "--data", str(t / "images")], "accuracy", None),
    }


@pytest.mark.parametrize("case", list(input_cases(Path("/x"))))
def test_hostile_input_is_one_line(capsys, tmp_path, case):
    write_inputs(tmp_path)
    argv, command, message = input_cases(tmp_path)[case]
    before = leftovers(tmp_path)
    start = time.perf_counter()
    got = one_line_error(capsys, argv, command)
    if message is None:
        assert "bomb" in got and "exceeds limit" in got, got
    else:
        assert got == message
    assert time.perf_counter() - start < 60, "a size guard must answer at once, not after the work"
    assert leftovers(tmp_path) == before


@pytest.mark.parametrize("seed", ["-1", str(2**70), "x"])
def test_seed_out_of_range_is_a_usage_error(capsys, seed):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--seed", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --seed: must be an integer from 0 to 4294967295, not '{seed[:40]}'" in err
    assert "Traceback" not in err


# ------------------------------------------------------------ failures while writing an output
def test_full_disk_leaves_the_old_file_and_no_temporary(capsys, tmp_path, monkeypatch):
    import intvit.quant.atomic as atomic

    out = tmp_path / "topo.csv"
    out.write_text("the old topology\n")

    def full(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "replace", full)
    assert one_line_error(capsys, ["topology", "--out", str(out)], "topology") == f"{out}: No space left on device"
    assert leftovers(tmp_path) == ["topo.csv"] and out.read_text() == "the old topology\n"


def test_failure_part_way_through_verilog_leaves_no_file(capsys, tmp_path, monkeypatch):
    import intvit.rtl.verilog as rtl_verilog

    calls = []

    def failing(design, name, ports=None):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return f"module {name}; endmodule\n"

    monkeypatch.setattr(rtl_verilog, "to_verilog", failing)
    out = tmp_path / "rtl"
    assert one_line_error(capsys, ["verilog", "--units", "--out", str(out)], "verilog") == f"{out}: No space left on device"
    assert leftovers(tmp_path) == []          # three files were written, none of them is left
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    calls.clear()
    assert main(["verilog", "--units", "--out", str(out)]) == 2
    assert leftovers(tmp_path) == ["mine.txt", "rtl"]


def test_interrupt_while_saving_leaves_nothing(capsys, tmp_path, monkeypatch):
    import intvit.quant.program as program_module

    def interrupted(handle, **arrays):
        handle.write(b"PK\x03\x04 the first 11 kB of a program")
        raise KeyboardInterrupt

    monkeypatch.setattr(program_module.np, "savez", interrupted)
    out = tmp_path / "prog.npz"
    assert main(["quantize", "--calib-size", "2", "--no-cache", "-o", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "intvit: interrupted"
    assert leftovers(tmp_path) == []
    # The program cache saves through the same path: interrupted there, it keeps no stump either.
    assert main(["quantize", "--calib-size", "2", "-o", str(out)]) == 130
    cache = Path(os.environ["XDG_CACHE_HOME"])
    # Only the MNIST pixel cache (complete, written before the interruption) may be there.
    kept = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith("mnist-")]
    assert kept == [] and leftovers(tmp_path) == []


# A write that hangs half way (a slow disk): the test interrupts it with a real SIGINT.
SLOW_WRITE = """
import pathlib, sys, time
def slow(path, text, **kwargs):
    with open(path, "w") as handle:
        handle.write(text[:100])
        handle.flush()
        open(sys.argv[2], "w").close()
        time.sleep(120)
pathlib.Path.write_text = slow
from intvit.cli import main
sys.exit(main(["topology", "--model", "deit-base", "--out", sys.argv[1]]))
"""


def test_sigint_exits_130_with_one_line(tmp_path):
    out, marker = tmp_path / "out" / "topo.csv", tmp_path / "writing"
    out.parent.mkdir()
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN
    # (Ctrl-C cannot reach it then, as intended): the child gets the disposition a terminal gives.
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(out), str(marker)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "intvit: interrupted" and "Traceback" not in err
    assert leftovers(out.parent) == []


def test_a_closed_pipe_ends_quietly():
    # `intvit simulate ... | head -1`: the reader leaves after one line of a report (160 KB) larger
    # than the pipe can hold, so the command must meet the closed pipe; no traceback follows.
    process = subprocess.Popen([sys.executable, "-m", "intvit.cli", "simulate", "--model", "deit-tiny",
                                "--no-functional", "--json", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "{"
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141 and err == "", err


# ------------------------------------------------------------- program files the commands trust
@pytest.fixture(scope="module")
def mnist_program(tmp_path_factory):
    from intvit.quant.checkpoint import load_embedded
    from intvit.quant.data import load_dataset, normalize
    from intvit.quant.ptq import quantize_model

    model = load_embedded()
    images, _, _ = load_dataset("mnist", model.config, split="train", limit=2)
    path = tmp_path_factory.mktemp("program") / "mnist.npz"
    quantize_model(model, normalize(images, model.config)).save(path)
    return path


def _edited_program(source: Path, target: Path, edit) -> Path:
    import json

    import numpy as np

    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    manifest = json.loads(arrays.pop("__manifest__").tobytes().decode())
    edit(manifest, arrays)
    with open(target, "wb") as handle:
        np.savez(handle, __manifest__=np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8), **arrays)
    return target


def _op(manifest, name):
    return next(op for op in manifest["ops"] if op["name"] == name)


def _widen_qkv(manifest, arrays):
    import numpy as np

    for suffix in ("weight", "bias", "multiplier", "shift"):
        name = f"blocks.0.attn.qkv.{suffix}"
        arrays[name] = np.concatenate([arrays[name], arrays[name]], axis=-1)
        manifest["constants"][name][1] = list(arrays[name].shape)


@pytest.mark.parametrize("argv, edit, message", [
    (["simulate", "--no-functional"], lambda m, a: a["blocks.0.attn.qkv.shift"].__setitem__(0, 0),
     "op 'blocks.0.attn.qkv.requant': shift must be in [1, 62], not 0"),
    (["simulate", "--no-functional"], _widen_qkv,
     "op 'blocks.0.attn.qkv': weight (64, 384) does not fit the config (its widths are 10, 16, 64, 128, 192)"),
    (["simulate", "--no-functional"], lambda m, a: _op(m, "blocks.2.attn.split")["attrs"].update(heads=3),
     "op 'blocks.2.attn.split': heads must be the config's num_heads 4, not 3"),
    (["simulate", "--no-functional"], lambda m, a: _op(m, "patch_embed.patchify")["attrs"].update(patch=7),
     "op 'patch_embed.patchify': patch must be the config's patch_size 4, not 7"),
    (["accuracy", "--limit", "8"], lambda m, a: m.update(input_scale=float("nan")),
     "input_scale must be a finite positive number, not nan"),
    (["accuracy", "--limit", "8"], lambda m, a: _op(m, "blocks.1")["attrs"].pop("shift"),
     "op 'blocks.1': missing attribute shift"),
])
def test_commands_refuse_a_program_out_of_bounds(capsys, tmp_path, mnist_program, argv, edit, message):
    bad = _edited_program(mnist_program, tmp_path / "bad.npz", edit)
    assert one_line_error(capsys, [*argv, "--program", str(bad)], argv[0]) == f"{bad}: {message}"


def test_non_utf8_weights_sidecar_is_one_line(capsys, tmp_path):
    import torch

    from intvit.quant.checkpoint import save_weights
    from intvit.quant.config import get_config
    from intvit.quant.model import ViT

    torch.manual_seed(0)
    save_weights(ViT(get_config("mnist")).eval(), tmp_path / "w.safetensors")
    (tmp_path / "w.json").write_bytes(b'{"name": "caf\xe9"}')
    got = one_line_error(capsys, ["simulate", "--no-functional", "--weights", str(tmp_path / "w.safetensors")],
                         "simulate")
    assert got.startswith(f"{tmp_path / 'w.json'}: "), got
