"""SCALE-Sim interop: config/topology parsing, ViT topologies, and reports vs real SCALE-Sim runs."""

import csv
import re

import pytest

from intvit.quant.config import get_config
from intvit.quant.errors import IntVitError
from intvit.cli import main
from intvit.sim.scalesim import (
    COMPUTE_COLUMNS, DETAIL_COLUMNS, BANDWIDTH_COLUMNS, ScaleSimConfig, read_scale_config, read_topology,
    simulate_topology, write_topology,
)
from intvit.sim.topology import Gemm, vit_gemms

scalesim_pkg = pytest.importorskip("scalesim.scale_sim")

SCALE_CFG = """\
[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:    64
FilterSramSzkB:   64
OfmapSramSzkB:    64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : {dataflow}
MemoryBanks:   1

[run_presets]
InterfaceBandwidth: CALC
"""

# Small GEMMs with full and partial folds on both array dimensions, and a degenerate 1x1x1.
SMALL_TOPOLOGY = [Gemm("a", 5, 7, 6), Gemm("b", 8, 6, 3), Gemm("c", 1, 1, 1), Gemm("d", 9, 4, 10)]


def read_report(path):
    with open(path) as handle:
        rows = [[cell.strip() for cell in row][:-1] for row in csv.reader(handle)]
    return rows[0], rows[1:]


def run_scalesim(tmp_path, cfg_path, topo_path):
    sim = scalesim_pkg.scalesim(save_disk_space=True, verbose=False, config=str(cfg_path),
                                topology=str(topo_path), input_type_gemm=True)
    sim.run_scale(top_path=str(tmp_path / "scalesim"))
    return tmp_path / "scalesim" / read_scale_config(cfg_path).run_name


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
@pytest.mark.parametrize("rows,cols", [(4, 3), (2, 5)])
def test_reports_match_real_scalesim(tmp_path, dataflow, rows, cols):
    cfg_path = tmp_path / "scale.cfg"
    cfg_path.write_text(SCALE_CFG.format(run_name="t", rows=rows, cols=cols, dataflow=dataflow))
    topo_path = tmp_path / "topo.csv"
    write_topology(topo_path, SMALL_TOPOLOGY)
    theirs = run_scalesim(tmp_path, cfg_path, topo_path)
    ours = simulate_topology(read_scale_config(cfg_path), read_topology(topo_path), "scalesim", tmp_path / "intvit")

    for name, columns in (("COMPUTE_REPORT", COMPUTE_COLUMNS), ("BANDWIDTH_REPORT", BANDWIDTH_COLUMNS),
                          ("DETAILED_ACCESS_REPORT", DETAIL_COLUMNS)):
        their_header, their_rows = read_report(theirs / f"{name}.csv")
        our_header, our_rows = read_report(tmp_path / "intvit" / f"{name}.csv")
        assert our_header == their_header == list(columns)
        assert len(our_rows) == len(their_rows) == len(SMALL_TOPOLOGY)

    _, their_compute = read_report(theirs / "COMPUTE_REPORT.csv")
    for layer, row, report in zip(SMALL_TOPOLOGY, their_compute, ours.layers):
        total, stall = int(row[1]), int(row[2])
        assert (report.compute_cycles, report.cycles, report.stall_cycles) == (total, total, stall), layer
        assert [float(x) for x in row[3:]] == pytest.approx(list(ours.compute[int(row[0])][3:]), rel=1e-12)

    # SRAM columns are SCALE-Sim's exactly; DRAM columns are intvit's own traffic model.
    _, their_detail = read_report(theirs / "DETAILED_ACCESS_REPORT.csv")
    for row, ours_row in zip(their_detail, ours.detail):
        assert [float(x) for x in row[1:10]] == [float(x) for x in ours_row[1:10]]
    _, their_bw = read_report(theirs / "BANDWIDTH_REPORT.csv")
    for row, ours_row in zip(their_bw, ours.bandwidth):
        assert [float(x) for x in row[1:4]] == pytest.approx(list(ours_row[1:4]), rel=1e-12)


def test_intvit_report_written(tmp_path):
    report = simulate_topology(ScaleSimConfig(rows=4, cols=4), SMALL_TOPOLOGY, "native", tmp_path)
    with open(tmp_path / "INTVIT_REPORT.csv") as handle:
        header, *rows = list(csv.reader(handle))
    assert "compute_cycles" in header and "bound" in header and len(rows) == len(SMALL_TOPOLOGY)
    assert report.total_cycles == sum(layer.cycles for layer in report.layers)


def test_user_bandwidth_limits(tmp_path):
    cfg_path = tmp_path / "scale.cfg"
    cfg_path.write_text(SCALE_CFG.format(run_name="u", rows=4, cols=4, dataflow="os").replace("CALC", "USER")
                        .replace("Bandwidth : 10", "Bandwidth : 1, 2"))
    cfg = read_scale_config(cfg_path)
    assert cfg.bandwidth == 1
    assert cfg.accelerator().memory.bandwidth_bytes_per_cycle == 1
    report = simulate_topology(cfg, [Gemm("wide", 1, 512, 512)], "scalesim", tmp_path)
    layer = report.layers[0]
    assert layer.bound == "memory" and layer.stall_cycles == layer.cycles - layer.compute_cycles > 0


@pytest.mark.parametrize(
    "edit, message",
    [
        (("Dataflow : os", "Dataflow : rs"), "scale.cfg: Dataflow must be one of os, ws, is, not 'rs'"),
        (("ArrayHeight:    4", "ArrayHeight:    0"), "scale.cfg: ArrayHeight must be a positive integer, not 0"),
        (("MemoryBanks:   1", "MemoryBanks:   4"), "scale.cfg: MemoryBanks = 4 is not supported; intvit models one bank"),
        (("MemoryBanks:   1", "Sparsity: 1"), "scale.cfg: unknown key 'sparsity' in [architecture_presets]"),
        (("[run_presets]", "[sparsity]\nSparsitySupport: true\n[run_presets]"),
         "scale.cfg: section [sparsity] is not supported by intvit (SCALE-Sim v2 sections only)"),
        (("CALC", "SOMETIMES"), "scale.cfg: InterfaceBandwidth must be USER or CALC, not 'SOMETIMES'"),
    ],
)
def test_scale_config_errors(tmp_path, edit, message):
    path = tmp_path / "scale.cfg"
    path.write_text(SCALE_CFG.format(run_name="t", rows=4, cols=4, dataflow="os").replace(*edit))
    with pytest.raises(IntVitError, match=f"^{re.escape(message)}$"):
        read_scale_config(path)


def test_conv_topology_lowered_like_scalesim(tmp_path):
    from scalesim.topology_utils import topologies

    path = tmp_path / "conv.csv"
    path.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
        "Conv1, 224, 224, 7, 7, 3, 64, 2,\n"
        "Conv2, 56, 56, 3, 3, 64, 64, 1,\n"
        "DP3, 14, 14, 3, 3, 4, 1, 1,\n"
    )
    theirs = topologies()
    theirs.load_arrays(topofile=str(path), mnk_inputs=False)
    ours = read_topology(path)
    # SCALE-Sim's helper reports output elements (pixels x filters) as its "M".
    assert [[g.m * g.n, g.n, g.k] for g in ours] == theirs.get_transformed_mnk_dimensions()
    assert [g.name for g in ours] == theirs.get_layer_names()


def test_topology_errors(tmp_path):
    path = tmp_path / "topo.csv"
    path.write_text("Layer, M, N, K,\nfc, 4, x, 2,\n")
    with pytest.raises(IntVitError, match=r"^topo\.csv:2: M, N and K must be integers, not 4, x, 2$"):
        read_topology(path)
    path.write_text("Layer, M, N, K,\nfc, 4, 0, 2,\n")
    with pytest.raises(IntVitError, match=r"^topo\.csv:2: layer fc: N must be a positive integer, not 0$"):
        read_topology(path)


def test_vit_topology_shapes():
    cfg = get_config("deit-tiny")
    gemms = vit_gemms(cfg)
    assert len(gemms) == 1 + cfg.depth * (4 + 2 * cfg.num_heads) + 1
    by_name = {g.name: g for g in gemms}
    assert by_name["patch_embed"] == Gemm("patch_embed", 196, 192, 768)
    assert by_name["block0.qkv"] == Gemm("block0.qkv", 197, 576, 192)
    assert by_name["block3.head2.qk"] == Gemm("block3.head2.qk", 197, 197, 64)
    assert by_name["block3.head2.av"] == Gemm("block3.head2.av", 197, 64, 197)
    assert by_name["block11.fc2"] == Gemm("block11.fc2", 197, 192, 768)
    assert by_name["head"] == Gemm("head", 1, 1000, 192)


def test_topology_command_output_reads_in_scalesim(tmp_path, capsys):
    from scalesim.topology_utils import topologies

    out = tmp_path / "topo.csv"
    assert main(["topology", "--model", "deit-small", "--blocks", "1", "--out", str(out)]) == 0
    assert "18 GEMMs" in capsys.readouterr().out
    theirs = topologies()
    theirs.load_arrays(topofile=str(out), mnk_inputs=True)
    ours = read_topology(out)
    assert [[g.m * g.n, g.n, g.k] for g in ours] == theirs.get_transformed_mnk_dimensions()
    assert main(["topology", "--model", "deit-small", "--blocks", "13", "--out", str(out)]) == 2


def test_topology_matches_the_integer_programs_matmuls():
    """sim.topology derives the GEMMs from the config; the simulator takes them from the program."""
    import numpy as np
    import torch

    from intvit.quant.model import ViT
    from intvit.quant.ptq import quantize_model
    from intvit.sim.simulator import gemm_shape

    cfg = get_config("mnist")
    torch.manual_seed(0)
    images = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    program = quantize_model(ViT(cfg).eval(), images)
    shapes = program.tensor_shapes(1)
    from_program = []
    for op in program.matmuls():
        count, m, k, n = gemm_shape(op, shapes)
        from_program += [(m, n, k)] * count
    assert sorted(from_program) == sorted((g.m, g.n, g.k) for g in vit_gemms(cfg))


# ----------------------------------------------------------- hostile inputs and atomic reports (issue 11)
@pytest.mark.parametrize("run_name", ["../../x", "/tmp/elsewhere", "a/b", "..", "a\\b"])
def test_run_name_cannot_leave_the_output_folder(tmp_path, run_name):
    path = tmp_path / "scale.cfg"
    path.write_text(SCALE_CFG.format(run_name=run_name, rows=4, cols=4, dataflow="os"))
    with pytest.raises(IntVitError, match=rf"^scale\.cfg: run_name must be a plain folder name \(no /, \\ or \.\.\), "
                                          rf"not {re.escape(repr(run_name))}$"):
        read_scale_config(path)


@pytest.mark.parametrize("edit, message", [
    (("ArrayHeight:    4", "ArrayHeight:    1000000000"), "scale.cfg: ArrayHeight must be at most 65536, not 1000000000"),
    (("ArrayWidth:     4", "ArrayWidth:     " + "9" * 400),
     "scale.cfg: ArrayWidth must be at most 65536, not a 400-character value"),
    (("IfmapSramSzkB:    64", "IfmapSramSzkB:    " + "9" * 12),
     "scale.cfg: IfmapSramSzkB must be at most 1073741824, not 999999999999"),
])
def test_scale_config_size_guards(tmp_path, edit, message):
    path = tmp_path / "scale.cfg"
    path.write_text(SCALE_CFG.format(run_name="t", rows=4, cols=4, dataflow="os").replace(*edit))
    with pytest.raises(IntVitError, match=f"^{re.escape(message)}$"):
        read_scale_config(path)
    path.write_text(SCALE_CFG.format(run_name="t", rows=4, cols=4, dataflow="os")
                    .replace("CALC", "USER").replace("Bandwidth : 10", "Bandwidth : " + "9" * 400))
    with pytest.raises(IntVitError, match=r"^scale\.cfg: Bandwidth must be at most 4294967296, not a 400-digit number$"):
        read_scale_config(path)


@pytest.mark.parametrize("name", ["scale.cfg", "topo.csv"])
def test_files_that_are_not_utf8(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"Layer, M, N, K,\nfc\xff, 1, 2, 3,\n")
    read = read_scale_config if name == "scale.cfg" else read_topology
    with pytest.raises(IntVitError, match=rf"^{re.escape(name)}: not UTF-8 text \(byte 18 is 0xff\)$"):
        read(path)


@pytest.mark.parametrize("text, message", [
    ("Layer, M, N, K,\nfc, 4, " + "7" * 400 + ", 2,\n",
     r"topo\.csv:2: layer fc: N must be at most 2147483647, not a 400-digit number"),
    ("Layer, M, N, K,\nfc, 4, " + "7" * 5000 + ", 2,\n",
     r"topo\.csv:2: M, N and K must be integers, not 4, 7{17}\.\.\., 2"),
    ("Layer, M, N, K,\nfc, 4, " + "7" * 40 + ", 2,\n",
     r"topo\.csv:2: layer fc: N must be at most 2147483647, not a 40-digit number"),
    # 140 bytes that would expand into 10**9 single-channel GEMMs
    ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
     "DP1, 3, 3, 3, 3, 1000000000, 1, 1,\n",
     r"topo\.csv:2: depth-wise layer DP1 of 1000000000 channels makes more than 100,000 layers in all \(one per "
     r"channel\); the limit is 100,000"),
    ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
     "C1, 100000, 100000, 1, 1, 1, 1, 1,\n",
     r"topo\.csv:2: layer C1: M must be at most 2147483647, not 10000000000"),
])
def test_topology_size_guards(tmp_path, text, message):
    path = tmp_path / "topo.csv"
    path.write_text(text)
    with pytest.raises(IntVitError, match=f"^{message}$"):
        read_topology(path)


def test_topology_layer_count_limit(tmp_path, monkeypatch):
    import intvit.sim.scalesim as scalesim

    monkeypatch.setattr(scalesim, "MAX_TOPOLOGY_LAYERS", 3)
    path = tmp_path / "topo.csv"
    path.write_text("Layer, M, N, K,\n" + "".join(f"l{i}, 1, 1, 1,\n" for i in range(4)))
    with pytest.raises(IntVitError, match=r"^topo\.csv:5: more than 3 layers; the limit is 3$"):
        read_topology(path)


def test_reports_are_all_written_or_none(tmp_path, monkeypatch):
    import intvit.sim.scalesim as scalesim

    out = tmp_path / "run"
    simulate_topology(ScaleSimConfig(rows=4, cols=4), SMALL_TOPOLOGY, "scalesim", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 4

    def fail(path, reports):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scalesim, "_write_intvit_report", fail)
    with pytest.raises(IntVitError, match=rf"^{re.escape(str(out))}: No space left on device$"):
        simulate_topology(ScaleSimConfig(rows=8, cols=8), SMALL_TOPOLOGY, "scalesim", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before       # old reports intact, no staging left
    with pytest.raises(IntVitError):
        simulate_topology(ScaleSimConfig(rows=8, cols=8), SMALL_TOPOLOGY, "scalesim", tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]             # a new folder appears whole or not at all


def test_reports_refuse_a_file_as_the_folder(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(IntVitError, match=r"^.+/taken/sub: .+/taken is a file, not a directory$"):
        simulate_topology(ScaleSimConfig(rows=4, cols=4), SMALL_TOPOLOGY, "scalesim", tmp_path / "taken" / "sub")


def test_topology_of_a_checkpoint_takes_its_own_architecture(tmp_path, capsys):
    """Without --model the checkpoint's shapes are used (no preset default to conflict with)."""
    import torch

    from intvit.quant.config import ViTConfig
    from intvit.quant.model import ViT

    cfg = ViTConfig("small", img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=48, depth=2,
                    num_heads=3, mlp_ratio=2.0)
    weights = tmp_path / "small.pth"
    torch.save(ViT(cfg).state_dict(), weights)
    out = tmp_path / "topo.csv"
    assert main(["topology", "--weights", str(weights), "--heads", "3", "--out", str(out)]) == 0
    assert [(g.m, g.n, g.k) for g in read_topology(out)] == [(g.m, g.n, g.k) for g in vit_gemms(cfg)]
    capsys.readouterr()
    assert main(["topology", "--weights", str(weights), "--out", str(out)]) == 2
    assert "give --heads N" in capsys.readouterr().err
