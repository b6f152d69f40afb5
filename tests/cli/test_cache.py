"""Calibrated programs are cached between runs; cycle-only runs need no calibration at all.

The cache: a second run with the same options loads the program instead of calibrating (and
builds no float model); every input of calibration changes the key; ``--no-cache`` bypasses it;
entries are written atomically and a damaged or foreign entry is reported and rebuilt.
The shape-only program: no weights, data or torch, nothing calibrated or cached, and its cycles,
bytes and energy equal a calibrated program's on every op, for mnist and deit-tiny (and the compiled
schedule's, for mnist).
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import intvit
import intvit.quant.calibrate
from intvit.cache import cache_dir
from intvit.cli import build_parser, main
from intvit.commands import common
from intvit.commands.common import calibrated_program, load_model, shape_program
from intvit.quant.errors import IntVitError
from intvit.quant.program import load_program
from intvit.sim.config import load_config
from intvit.sim.simulator import simulate

CALIB = ["--calib-size", "16", "--batch-size", "8"]


def options(*argv):
    return build_parser().parse_args(["simulate", *argv])


@pytest.fixture
def calibrations(monkeypatch):
    """Counts calibrations (``quant.calibrate.calibrate`` calls) while keeping their results."""
    calls = []
    original = intvit.quant.calibrate.calibrate

    def counted(*args, **kwargs):
        calls.append(kwargs.get("method"))
        return original(*args, **kwargs)

    monkeypatch.setattr(intvit.quant.calibrate, "calibrate", counted)
    return calls


def program(args):
    return calibrated_program(args, args.data, lambda: load_model(args))


def same_program(a, b):
    assert [op.__dict__ for op in a.ops] == [op.__dict__ for op in b.ops]
    assert a.constants.keys() == b.constants.keys()
    assert all(np.array_equal(a.constants[k], b.constants[k]) for k in a.constants)
    assert a.tensors == b.tensors and a.input_scale == b.input_scale


def entries():
    """Program entries (the MNIST pixels are cached in the same folder)."""
    return sorted(cache_dir().glob("program-*")) if cache_dir().is_dir() else []


# ------------------------------------------------------------------------------------------ the cache
def test_the_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "intvit"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "intvit"


def test_second_run_loads_the_program_and_builds_no_model(calibrations):
    args = options(*CALIB)
    first = program(args)
    assert len(calibrations) == 1 and len(entries()) == 1
    second = calibrated_program(args, args.data, lambda: pytest.fail("a cache hit must not build the model"))
    assert len(calibrations) == 1
    same_program(first, second)


@pytest.mark.parametrize("change", [
    ["--calib-size", "8"], ["--calib-method", "percentile"], ["--batch-size", "4"], ["--data", "digits"],
    ["--model", "deit-tiny", "--depth", "1", "--img-size", "32"],
])
def test_every_calibration_input_changes_the_key(calibrations, change):
    program(options(*CALIB))
    program(options(*CALIB, *change))
    assert len(calibrations) == 2 and len(entries()) == 2


def test_percentile_and_seed_change_the_key_only_where_they_matter(calibrations):
    program(options(*CALIB, "--calib-method", "percentile", "--percentile", "99.9"))
    program(options(*CALIB, "--calib-method", "percentile", "--percentile", "99.0"))
    program(options(*CALIB, "--seed", "3"))              # the embedded weights take no seed
    assert len(calibrations) == 3 and len(entries()) == 3
    tiny = ["--model", "deit-tiny", "--depth", "1", "--img-size", "32", "--calib-size", "2"]
    program(options(*tiny))
    program(options(*tiny, "--seed", "1"))               # seeded random weights do
    assert len(calibrations) == 5


def test_weights_bytes_and_intvit_version_change_the_key(calibrations, tmp_path, monkeypatch):
    from intvit.cache import EMBEDDED_FILES

    weights = tmp_path / "mnist.safetensors"
    weights.write_bytes(EMBEDDED_FILES[0].read_bytes())
    weights.with_suffix(".json").write_bytes(EMBEDDED_FILES[1].read_bytes())
    program(options(*CALIB, "--weights", str(weights)))
    program(options(*CALIB, "--weights", str(weights)))
    assert len(calibrations) == 1
    sidecar = weights.with_suffix(".json")
    sidecar.write_text(sidecar.read_text() + "\n")      # same model, other bytes: calibrated again
    program(options(*CALIB, "--weights", str(weights)))
    assert len(calibrations) == 2
    monkeypatch.setattr(intvit, "__version__", "99.0")
    program(options(*CALIB, "--weights", str(weights)))
    assert len(calibrations) == 3


def test_a_changed_quant_source_changes_the_key(tmp_path):
    from intvit.cache import QUANT_SOURCE, source_identity

    copy = tmp_path / "quant"
    copy.mkdir()
    for path in QUANT_SOURCE.glob("*.py"):
        (copy / path.name).write_bytes(path.read_bytes())
    assert source_identity(copy) == source_identity()
    requant = copy / "requant.py"
    requant.write_text(requant.read_text() + "\n# a changed rounding\n")
    assert source_identity(copy) != source_identity()


def test_no_cache_calibrates_and_stores_nothing(calibrations):
    program(options(*CALIB))
    program(options(*CALIB, "--no-cache"))
    assert len(calibrations) == 2 and len(entries()) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other model"])
def test_a_damaged_or_foreign_entry_is_reported_and_rebuilt(calibrations, capsys, damage):
    args = options(*CALIB)
    good = program(args)
    (entry,) = entries()
    if damage == "garbage":
        entry.write_bytes(b"not a program")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:1000])
    else:
        program(options("--model", "deit-tiny", "--depth", "1", "--img-size", "32", "--calib-size", "2"))
        other = next(e for e in entries() if e != entry)
        os.replace(other, entry)
    capsys.readouterr()
    rebuilt = program(args)
    assert f"intvit: ignoring cache entry {entry.name}: " in capsys.readouterr().err
    assert len(calibrations) == 2 + (damage == "other model")
    same_program(good, rebuilt)
    same_program(good, load_program(entry))             # and the entry is whole again


def test_a_failed_write_leaves_no_entry_and_no_temporary_file(calibrations, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    program(options(*CALIB))
    assert "intvit: cannot write the program cache" in capsys.readouterr().err
    assert entries() == []


def test_an_unwritable_cache_folder_only_costs_time(calibrations, capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))          # intvit/ cannot be created under a file
    program(options(*CALIB))
    program(options(*CALIB))
    assert len(calibrations) == 2
    assert "cannot write the program cache" in capsys.readouterr().err


def test_simulate_twice_prints_the_same_report_and_calibrates_once(calibrations, capsys):
    argv = ["simulate", *CALIB]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and len(calibrations) == 1


def test_calibration_images_load_while_the_model_is_built(monkeypatch):
    started, original = threading.Event(), common.calibration_images

    def loading(*args, **kwargs):
        started.set()
        return original(*args, **kwargs)

    def model():
        assert started.wait(10), "the calibration images did not start loading before the model was built"
        return load_model(args)

    monkeypatch.setattr(common, "calibration_images", loading)
    args = options(*CALIB, "--no-cache")
    same_program(calibrated_program(args, args.data, model), program(options(*CALIB)))
    with pytest.raises(IntVitError, match=r"^/nonexistent: no such directory$"):
        calibrated_program(options(*CALIB, "--no-cache", "--data", "/nonexistent"), "/nonexistent", model)


def test_openmp_workers_sleep_when_idle_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    load_model(options())
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    load_model(options())
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# ------------------------------------------------------------------------------- cycle-only programs
@pytest.fixture
def no_weights_no_data(monkeypatch):
    import intvit.quant.architecture
    import intvit.quant.checkpoint
    import intvit.quant.data

    def refuse(*args, **kwargs):
        raise AssertionError("a cycle-only program must not read weights or data")

    monkeypatch.setattr(intvit.quant.checkpoint, "load_embedded", refuse)
    monkeypatch.setattr(intvit.quant.checkpoint, "read_state_dict", refuse)
    monkeypatch.setattr(intvit.quant.data, "load_dataset", refuse)


@pytest.mark.parametrize("model", [["mnist"], ["deit-tiny"], ["deit-tiny", "--depth", "2", "--img-size", "64",
                                                              "--heads", "4", "--embed-dim", "64"]],
                         ids=["mnist", "deit-tiny", "deit-tiny with overrides"])
def test_shape_program_costs_what_a_calibrated_program_does(model, monkeypatch, no_weights_no_data):
    from intvit.sim.energy import energy_report

    args = options("--model", *model, "--calib-size", "2", "--batch-size", "2")
    shapes = shape_program(args)
    monkeypatch.undo()
    calibrated = calibrated_program(args, args.data, lambda: load_model(args))
    assert shapes.calibration["method"] == "none" and calibrated.calibration["images"] == 2
    assert shapes.config == calibrated.config
    assert [op.name for op in shapes.ops] == [op.name for op in calibrated.ops]
    for flow in ("os", "ws"):
        config = load_config(None).with_(matmul__dataflow=flow)
        for batch in (1, 3):
            a = simulate(shapes, config, batch=batch, functional=False)
            b = simulate(calibrated, config, batch=batch, functional=False)
            assert [(op.name, op.cycles, op.exposed_cycles, op.sram_bytes, op.dram_bytes) for op in a.ops] == \
                   [(op.name, op.cycles, op.exposed_cycles, op.sram_bytes, op.dram_bytes) for op in b.ops]
            assert a.total_cycles == b.total_cycles > 0
            assert energy_report(shapes, a).total_pj == energy_report(calibrated, b).total_pj > 0


def test_the_compiled_schedule_of_the_shape_program_is_the_calibrated_programs():
    from intvit.compiler.codegen import compile_program
    from intvit.sim.schedule import program_macs, schedule

    args = options(*CALIB)
    config = load_config(None)
    reports = []
    for program in (shape_program(args), calibrated_program(args, args.data, lambda: load_model(args))):
        compiled = compile_program(program, config)
        reports.append(schedule(compiled.instructions, config, macs=program_macs(program)))
    assert reports[0].total_cycles == reports[1].total_cycles > 0
    assert reports[0].classes == reports[1].classes


def test_simulate_no_functional_reads_no_weights_or_data_and_calibrates_nothing(no_weights_no_data, calibrations,
                                                                                 capsys):
    assert main(["simulate", "--no-functional", "--data", "/no/such/dir"]) == 0
    first = capsys.readouterr().out
    assert "cycles" in first
    assert calibrations == [] and entries() == []               # built from shapes: nothing to calibrate or keep
    assert main(["simulate", "--no-functional", "--no-cache"]) == 0
    assert capsys.readouterr().out == first and calibrations == []


def test_a_cycle_only_run_does_not_import_torch(tmp_path):
    script = ("import sys; from intvit.cli import main; main(['simulate', '--model', 'deit-tiny', '--no-functional', "
              f"'--json', {str(tmp_path / 'r.json')!r}]); print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_a_warm_functional_run_does_not_import_torch(tmp_path, capsys):
    # 64-pixel images: MNIST digits are enlarged (to 46 pixels) as for DeiT's 224, in numpy.
    argv = ["simulate", "--model", "deit-tiny", "--depth", "1", "--img-size", "64", "--calib-size", "2", "--json"]
    assert main([*argv, str(tmp_path / "cold.json")]) == 0                # calibrates and stores the program
    script = f"import sys; from intvit.cli import main; main({[*argv, str(tmp_path / 'warm.json')]!r}); " \
             "print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "cold.json").read_text() == (tmp_path / "warm.json").read_text()
