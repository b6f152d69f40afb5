"""Time SCALE-Sim v2 on one ViT-Base encoder block against intvit's model on all of ViT-Base.

SCALE-Sim runs the block's GEMMs (``--layers`` keeps the first N, since a full block takes
minutes); intvit runs every GEMM of all 12 blocks in all three dataflows. Both times, the
ratio per GEMM, and a check that SCALE-Sim's and intvit's compute cycles agree are printed::

    .venv/bin/python benchmarks/scalesim_speed.py --layers 4 --dataflow ws
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
import time
from pathlib import Path

from intvit.quant.config import get_config
from intvit.sim.config import AcceleratorConfig
from intvit.sim.matmul import MatMulUnit
from intvit.sim.scalesim import write_topology
from intvit.sim.topology import block_gemms, vit_gemms

SCALE_CFG = """\
[general]
run_name = vit_base_block

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 1024
FilterSramSzkB: 1024
OfmapSramSzkB: 1024
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {dataflow}
MemoryBanks: 1

[run_presets]
InterfaceBandwidth: CALC
"""


def time_intvit(rows: int, cols: int, repeats: int) -> tuple[float, int]:
    gemms = vit_gemms(get_config("deit-base"))
    base = AcceleratorConfig().with_(matmul__rows=rows, matmul__cols=cols)
    units = [MatMulUnit(base.with_(matmul__dataflow=df), "scalesim") for df in ("os", "ws", "is")]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for unit in units:
            for g in gemms:
                unit.layer(g.m, g.k, g.n, name=g.name)
        best = min(best, time.perf_counter() - start)
    return best, len(gemms) * len(units)


def time_scalesim(layers, rows: int, cols: int, dataflow: str, workdir: Path) -> tuple[float, list[int]]:
    from scalesim.scale_sim import scalesim

    cfg = workdir / "scale.cfg"
    cfg.write_text(SCALE_CFG.format(rows=rows, cols=cols, dataflow=dataflow))
    topo = workdir / "block.csv"
    write_topology(topo, layers)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        sim = scalesim(save_disk_space=True, verbose=False, config=str(cfg), topology=str(topo), input_type_gemm=True)
        sim.run_scale(top_path=str(workdir / "out"))
    elapsed = time.perf_counter() - start
    with open(workdir / "out" / "vit_base_block" / "COMPUTE_REPORT.csv") as handle:
        cycles = [int(row[1]) for row in list(csv.reader(handle))[1:]]
    return elapsed, cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="SCALE-Sim runs only the block's first N GEMMs")
    parser.add_argument("--dataflow", default="os", choices=("os", "ws", "is"), help="SCALE-Sim's dataflow")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--cols", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="intvit timing: best of N")
    args = parser.parse_args()

    block = block_gemms(get_config("deit-base"), 0)
    layers = block[: args.layers] if args.layers else block
    intvit_s, intvit_gemms = time_intvit(args.rows, args.cols, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        scalesim_s, their_cycles = time_scalesim(layers, args.rows, args.cols, args.dataflow, Path(tmp))
    unit = MatMulUnit(AcceleratorConfig().with_(matmul__rows=args.rows, matmul__cols=args.cols,
                                                matmul__dataflow=args.dataflow), "scalesim")
    our_cycles = [unit.compute_cycles(g.m, g.k, g.n) for g in layers]

    print(f"array {args.rows}x{args.cols}")
    print(f"SCALE-Sim v2 : {len(layers)} of {len(block)} GEMMs of one ViT-Base block ({args.dataflow}): {scalesim_s:.2f} s"
          f" ({scalesim_s / len(layers) * 1e3:.1f} ms/GEMM)")
    print(f"intvit       : all 12 ViT-Base blocks x 3 dataflows, {intvit_gemms} GEMMs: {intvit_s * 1e3:.2f} ms"
          f" ({intvit_s / intvit_gemms * 1e6:.1f} us/GEMM)")
    print(f"ratio        : SCALE-Sim time / intvit time = {scalesim_s / intvit_s:.0f}x for the runs above;"
          f" {(scalesim_s / len(layers)) / (intvit_s / intvit_gemms):.0f}x per GEMM")
    agree = their_cycles == our_cycles
    print(f"cycles agree : {agree} (SCALE-Sim {sum(their_cycles)}, intvit scalesim mode {sum(our_cycles)})")
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
