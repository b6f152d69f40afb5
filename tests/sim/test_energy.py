"""Energy model: counts x table, checked against numbers worked out by hand for a small GEMM and one
softmax row; the table's validation, TOML overrides and the SRAM interpolation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.program import IntProgram, Op, TensorInfo
from intvit.sim.config import config_from_dict, dump_config, load_config
from intvit.sim.energy import EnergyTable, area_um2, energy_report, leakage_mw, sram_pj_per_byte
from intvit.sim.simulator import simulate

# Every number the hand computations use is spelled out here, none taken from the defaults.
TABLE = {
    "mult8_pj": 0.2, "add32_pj": 0.1, "register_pj_per_bit": 0.01, "mac_register_bits": 50,
    "sram_sizes_bytes": [8192, 32768, 1048576], "sram_read_pj_per_64bit": [10.0, 20.0, 100.0],
    "sram_write_pj_per_64bit": [12.0, 24.0, 120.0], "dram_pj_per_64bit": 1600.0,
    "softmax_pj_per_element": 3.0, "requant_pj_per_element": 1.0, "gelu_pj_per_element": 1.0,
    "layernorm_pj_per_element": 1.0,
    "pe_leakage_nw": 20000.0, "requant_leakage_nw": 0.0, "softmax_leakage_nw": 50000.0, "gelu_leakage_nw": 0.0,
    "layernorm_leakage_nw": 0.0,
}
ACCEL = {
    "clock_mhz": 500,
    "matmul": {"rows": 4, "cols": 4, "dataflow": "os", "latency": 1},
    "softmax": {"lanes": 2, "latency": 40},
    # 8 KiB ifmap and ofmap, 32 KiB weights: Horowitz's own points, 1.25 / 2.5 pJ per byte read.
    "buffers": {"ifmap_bytes": 8192, "weight_bytes": 32768, "ofmap_bytes": 8192, "param_bytes": 8192},
    "energy": TABLE,
}
TINY = ViTConfig("tiny", img_size=4, patch_size=2, in_chans=4, num_classes=8, embed_dim=16, depth=1,
                 num_heads=1, mlp_ratio=1.0, mean=(0.5,) * 4, std=(0.25,) * 4)


def program(ops: list[Op], constants: dict, bits: dict) -> IntProgram:
    tensors = {name: TensorInfo(1.0, b) for name, b in bits.items()}
    return IntProgram(TINY, ops, constants, tensors, input_scale=1.0, output=ops[-1].outputs[0])


def run(prog: IntProgram, accel: dict = ACCEL):
    config = config_from_dict(accel)
    report = simulate(prog, config, batch=1, functional=False)
    return report, energy_report(prog, report)


def test_small_gemm_energy_by_hand():
    # Patches of a 4x4x4 image, 2x2: M = 4 tokens of K = 16; weights K x N = 16 x 8.
    prog = program([Op("patchify", "patches", ("input",), ("x",), {"patch": 2}),
                    Op("matmul", "fc", ("x", "w"), ("y",))],
                   {"w": np.zeros((16, 8), np.int8)}, {"input": 8, "x": 8, "y": 32})
    report, energy = run(prog)
    fc = energy.ops[1]
    # 4 x 16 x 8 = 512 MACs at 0.2 + 0.1 + 50 x 0.01 = 0.8 pJ.
    assert fc.mac_pj == pytest.approx(512 * 0.8)
    assert fc.add_pj == 0                      # output stationary: sums stay in the PEs
    # 4x4 OS: 1 row fold x 2 column folds. SRAM: A (64 B) read once per column fold = 128 B from the
    # 8 KiB ifmap (10 pJ / 8 B); B (128 B) read once = 128 B from the 32 KiB weights (20 pJ / 8 B);
    # 4 x 8 INT32 results = 128 B written to the 8 KiB ofmap (12 pJ / 8 B). Off chip: A 64 B and B 128 B
    # fetched once and written into their buffers, the 128 B of results read out and sent: 320 B DRAM.
    sram = 128 * 10 / 8 + 128 * 20 / 8 + 128 * 12 / 8 + 64 * 12 / 8 + 128 * 24 / 8 + 128 * 10 / 8
    assert fc.sram_pj == pytest.approx(sram)
    assert fc.dram_pj == pytest.approx(320 * 1600 / 8)
    assert energy.ops[0].total_pj == 0        # patchify: address generation
    # Leakage: 16 PEs x 20 uW + 2 softmax lanes x 50 uW = 0.42 mW, over the run's cycles (the cycle
    # model's business, tested with it) at 500 MHz.
    seconds = report.total_cycles / 500e6
    assert energy.leakage_mw == pytest.approx(0.42)
    assert energy.leakage_pj == pytest.approx(0.42e-3 * seconds * 1e12)
    total = 512 * 0.8 + sram + 320 * 200 + energy.leakage_pj
    assert energy.energy_uj == pytest.approx(total * 1e-6)
    assert energy.average_power_mw == pytest.approx(total * 1e-12 / seconds * 1e3)


def test_one_softmax_row_by_hand():
    # Patches of a 4x4x4 image: 4 rows of 16 INT32 values; one row is selected (as the class token
    # is) and goes through the softmax.
    prog = program([Op("patchify", "patches", ("input",), ("x",), {"patch": 2}),
                    Op("select_token", "pick", ("x",), ("row",)),
                    Op("softmax", "softmax", ("row",), ("p",))],
                   {}, {"input": 8, "x": 32, "row": 32, "p": 8})
    report, energy = run(prog)
    softmax = energy.ops[2]
    # 16 elements at 3 pJ; SRAM: 16 INT32 scores read (64 B) and 16 INT8 probabilities written, both in
    # the 8 KiB ifmap buffer (10 and 12 pJ per 8 B); nothing off chip.
    assert softmax.element_pj == pytest.approx(16 * 3.0)
    assert softmax.sram_pj == pytest.approx(64 * 10 / 8 + 16 * 12 / 8)
    assert softmax.dram_pj == 0 and softmax.mac_pj == 0
    assert energy.leakage_pj == pytest.approx(0.42e-3 * report.total_cycles / 500e6 * 1e12)
    assert energy.by_unit()["softmax"] == pytest.approx((16 * 3.0 + 64 * 10 / 8 + 16 * 12 / 8) * 1e-6)


def test_idle_pes_cost_leakage_not_macs():
    prog = program([Op("patchify", "patches", ("input",), ("x",), {"patch": 2}),
                    Op("matmul", "fc", ("x", "w"), ("y",))],
                   {"w": np.zeros((16, 8), np.int8)}, {"input": 8, "x": 8, "y": 32})
    _, small = run(prog)
    big = {**ACCEL, "matmul": {"rows": 16, "cols": 16, "dataflow": "os", "latency": 1}}
    _, large = run(prog, big)
    assert large.ops[1].mac_pj == small.ops[1].mac_pj           # the same 512 products
    assert large.leakage_mw == pytest.approx(small.leakage_mw + 240 * 20e-3)


def test_weight_stationary_partial_sums_add_in_the_output_buffer():
    prog = program([Op("patchify", "patches", ("input",), ("x",), {"patch": 2}),
                    Op("matmul", "fc", ("x", "w"), ("y",))],
                   {"w": np.zeros((16, 8), np.int8)}, {"input": 8, "x": 8, "y": 32})
    ws = {**ACCEL, "matmul": {"rows": 4, "cols": 4, "dataflow": "ws", "latency": 1}}
    _, energy = run(prog, ws)
    # K = 16 on 4 rows: 4 K folds; 3 of them add into the 4 x 8 partial sums.
    assert energy.ops[1].add_pj == pytest.approx(3 * 32 * 0.1)


def test_sram_energy_interpolates_horowitz_log_log():
    table = EnergyTable()
    assert sram_pj_per_byte(table, 8192) == pytest.approx(10 / 8)
    assert sram_pj_per_byte(table, 32768) == pytest.approx(20 / 8)
    assert sram_pj_per_byte(table, 1 << 20) == pytest.approx(100 / 8)
    # 64 KiB sits one doubling above 32 KiB on the 32 KiB - 1 MiB segment: 20 x 5**(1/5).
    assert sram_pj_per_byte(table, 65536) == pytest.approx(20 * 5 ** 0.2 / 8)
    assert sram_pj_per_byte(table, 4096) == pytest.approx(10 / 2 ** 0.5 / 8)      # the first segment, extended
    assert sram_pj_per_byte(table, 65536, write=True) == sram_pj_per_byte(table, 65536)   # writes as reads


def test_defaults_are_the_cited_figures():
    table = EnergyTable()
    assert (table.mult8_pj, table.add32_pj, table.dram_pj_per_64bit) == (0.2, 0.1, 1300.0)
    assert table.sram_read_pj_per_64bit == (10.0, 20.0, 100.0)
    assert table.mac_pj == pytest.approx(0.2 + 0.1 + 51 * 0.00694)
    for unit in ("requant", "softmax", "gelu", "layernorm"):
        assert getattr(table, f"{unit}_pj_per_element") > 0 and getattr(table, f"{unit}_area_um2") > 0


def test_energy_section_in_toml(tmp_path):
    path = tmp_path / "accel.toml"
    path.write_text("[energy]\ndram_pj_per_64bit = 2600.0\nsram_read_pj_per_64bit = [11.0, 22.0, 110.0]\n")
    config = load_config(path)
    assert config.energy.dram_pj_per_64bit == 2600.0 and config.energy.sram_read_pj_per_64bit == (11.0, 22.0, 110.0)
    again = tmp_path / "again.toml"
    again.write_text(dump_config(config))
    assert load_config(again) == config
    assert config.with_(energy__mult8_pj=0.3).energy.mult8_pj == 0.3


@pytest.mark.parametrize("text, message", [
    ("[energy]\nmult8_pj = 0\n", r"^bad.toml: energy.mult8_pj must be a positive number, not 0$"),
    ("[energy]\npe_leakage_nw = -1\n", r"^bad.toml: energy.pe_leakage_nw must be a non-negative number, not -1$"),
    ("[energy]\nsram_sizes_bytes = [8192, 4096, 1048576]\n",
     r"^bad.toml: energy.sram_sizes_bytes must be increasing sizes, not \[8192, 4096, 1048576\]$"),
    ("[energy]\nsram_read_pj_per_64bit = [1.0, 2.0]\n",
     r"^bad.toml: energy.sram_read_pj_per_64bit must have one value per sram_sizes_bytes entry \(3\), not 2$"),
    ("[energy]\nsram_read_pj_per_64bit = 5\n", r"^bad.toml: energy.sram_read_pj_per_64bit must be a list of numbers, not 5$"),
    ("[energy]\nmac_register_bits = 1.5\n", r"^bad.toml: energy.mac_register_bits must be a non-negative integer, not 1.5$"),
    ("[energy]\nwatts = 3\n", r"^bad.toml: unknown key energy.watts; expected one of mult8_pj, "),
])
def test_energy_section_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(IntVitError, match=message):
        load_config(path)


def test_area_and_leakage_scale_with_the_array():
    base = config_from_dict({})
    bigger = base.with_(matmul__rows=32, matmul__cols=32)
    table = base.energy
    assert area_um2(bigger) - area_um2(base) == pytest.approx((1024 - 256) * table.pe_area_um2)
    assert leakage_mw(bigger) - leakage_mw(base) == pytest.approx((1024 - 256) * table.pe_leakage_nw * 1e-6)
    assert math.isclose(area_um2(base.with_(buffers__ifmap_bytes=2 * 65536)) - area_um2(base),
                        8 * 65536 * table.sram_bit_area_um2)


def test_report_and_program_must_match():
    prog = program([Op("patchify", "patches", ("input",), ("x",), {"patch": 2})], {}, {"input": 8, "x": 8})
    report = simulate(prog, config_from_dict(ACCEL), batch=1, functional=False)
    short = dataclasses.replace(prog, ops=[])
    with pytest.raises(IntVitError, match=r"^the report has 1 ops, the program 0$"):
        energy_report(short, report)
