"""AcceleratorConfig: defaults, TOML loading, exact error messages, sweeps."""

import re

import pytest

from intvit.quant.errors import IntVitError
from intvit.sim.config import AcceleratorConfig, MatMulConfig, UnitConfig, dump_config, load_config


def write(tmp_path, text):
    path = tmp_path / "accel.toml"
    path.write_text(text)
    return path


def test_defaults():
    cfg = load_config()
    assert cfg == AcceleratorConfig()
    assert (cfg.matmul.rows, cfg.matmul.cols, cfg.matmul.dataflow) == (16, 16, "os")
    assert cfg.buffers.ifmap_bytes == cfg.buffers.weight_bytes == cfg.buffers.ofmap_bytes == 64 * 1024
    assert cfg.memory.bandwidth_bytes_per_cycle == 16
    assert cfg.clock_mhz == 500
    assert all(getattr(cfg, unit).lanes == 8 for unit in ("requant", "softmax", "gelu", "layernorm"))


def test_file_overrides_only_what_it_names(tmp_path):
    cfg = load_config(write(tmp_path, 'clock_mhz = 400\n[matmul]\nrows = 32\ndataflow = "ws"\n[gelu]\nlanes = 4\n'))
    assert cfg.clock_mhz == 400
    assert cfg.matmul == MatMulConfig(rows=32, cols=16, dataflow="ws", latency=AcceleratorConfig().matmul.latency)
    assert cfg.gelu.lanes == 4 and cfg.gelu.latency == AcceleratorConfig().gelu.latency
    assert cfg.buffers == AcceleratorConfig().buffers


@pytest.mark.parametrize(
    "text, message",
    [
        ("[matmul]\nrows = 0", "accel.toml: matmul.rows must be a positive integer, not 0"),
        ("[matmul]\ncols = 2.5", "accel.toml: matmul.cols must be a positive integer, not 2.5"),
        ('[matmul]\ndataflow = "xy"', "accel.toml: matmul.dataflow must be one of os, ws, is, not 'xy'"),
        ("[matmul]\nlatency = -1", "accel.toml: matmul.latency must be a non-negative integer, not -1"),
        ("[softmax]\nlanes = 0", "accel.toml: softmax.lanes must be a positive integer, not 0"),
        ("[buffers]\nifmap_bytes = true", "accel.toml: buffers.ifmap_bytes must be a positive integer, not True"),
        ("[memory]\nbandwidth_bytes_per_cycle = 0", "accel.toml: memory.bandwidth_bytes_per_cycle must be a positive number, not 0"),
        ("clock_mhz = -5", "accel.toml: clock_mhz must be a positive number, not -5"),
        ("[matmul]\nrowz = 4", "accel.toml: unknown key matmul.rowz; expected one of rows, cols, dataflow, latency"),
        ("speed = 1", "accel.toml: unknown key speed; expected one of clock_mhz, matmul, requant, softmax, gelu, layernorm, buffers, memory, energy"),
        ("matmul = 3", "accel.toml: [matmul] must be a table, not 3"),
    ],
)
def test_errors_name_file_and_field(tmp_path, text, message):
    with pytest.raises(IntVitError, match=f"^{re.escape(message)}$"):
        load_config(write(tmp_path, text))


def test_invalid_toml(tmp_path):
    with pytest.raises(IntVitError, match=r"^accel\.toml: invalid TOML: "):
        load_config(write(tmp_path, "rows = "))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")


def test_dataclasses_validate_directly():
    with pytest.raises(IntVitError, match=r"^rows must be a positive integer, not 0$"):
        MatMulConfig(rows=0)
    with pytest.raises(IntVitError, match=r"^latency must be a non-negative integer, not 1\.5$"):
        UnitConfig(latency=1.5)


def test_with_for_sweeps():
    base = AcceleratorConfig()
    cfg = base.with_(matmul__rows=32, matmul__dataflow="is", clock_mhz=800, buffers__ofmap_bytes=1024)
    assert (cfg.matmul.rows, cfg.matmul.dataflow, cfg.clock_mhz, cfg.buffers.ofmap_bytes) == (32, "is", 800, 1024)
    assert base.matmul.rows == 16
    with pytest.raises(IntVitError, match=r"^matmul\.rows must be a positive integer, not 0$"):
        base.with_(matmul__rows=0)
    with pytest.raises(IntVitError, match=r"^unknown section 'array'"):
        base.with_(array__rows=4)


def test_dump_round_trips(tmp_path):
    cfg = AcceleratorConfig().with_(matmul__dataflow="ws", memory__bandwidth_bytes_per_cycle=12.5)
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_default_latencies_are_the_rtl_units_own():
    from intvit.rtl.matmul import MatMulArray
    from intvit.rtl.requant import Requantiser

    cfg = AcceleratorConfig()
    assert cfg.matmul.latency == MatMulArray.LATENCY
    assert cfg.requant.latency == Requantiser.LATENCY


# Size guards and hostile files (issue 11): one line naming the file and field, the limit in it.
@pytest.mark.parametrize("text, message", [
    ("clock_mhz = inf", "accel.toml: clock_mhz must be from 1e-06 to 1e+06, not inf"),
    ("clock_mhz = nan", "accel.toml: clock_mhz must be a positive number, not nan"),
    ("[memory]\nbandwidth_bytes_per_cycle = 1e-310",
     "accel.toml: memory.bandwidth_bytes_per_cycle must be at least 0.001, not 1e-310"),
    ("[memory]\nbandwidth_bytes_per_cycle = -inf",
     "accel.toml: memory.bandwidth_bytes_per_cycle must be a positive number, not -inf"),
    ("[matmul]\nrows = 1000000000", "accel.toml: matmul.rows must be at most 65536, not 1000000000"),
    ("[gelu]\nlanes = 1000000000", "accel.toml: gelu.lanes must be at most 65536, not 1000000000"),
    ("[softmax]\nlatency = 9223372036854775807",
     "accel.toml: softmax.latency must be at most 1048576, not 9223372036854775807"),
    ("[buffers]\nweight_bytes = 9223372036854775807",
     "accel.toml: buffers.weight_bytes must be at most 1099511627776, not 9223372036854775807"),
])
def test_size_guards_and_non_finite_numbers(tmp_path, text, message):
    with pytest.raises(IntVitError, match=f"^{re.escape(message)}$"):
        load_config(write(tmp_path, text))


def test_unlimited_bandwidth_is_allowed(tmp_path):
    assert load_config(write(tmp_path, "[memory]\nbandwidth_bytes_per_cycle = inf")).memory.bandwidth_bytes_per_cycle \
        == float("inf")


@pytest.mark.parametrize("data, message", [
    (b"clock_mhz = 400 # \xe9t\xe9\n", r"accel\.toml: not UTF-8 text \(byte 18 is 0xe9\)"),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000, r"accel\.toml: invalid TOML: nested too deeply"),
    (b"# " + b"x" * (1 << 20), r"accel\.toml: larger than 1,048,576 bytes; not a plausible \.toml file"),
])
def test_files_that_are_not_plausible_toml(tmp_path, data, message):
    path = tmp_path / "accel.toml"
    path.write_bytes(data)
    with pytest.raises(IntVitError, match=f"^{message}$"):
        load_config(path)
