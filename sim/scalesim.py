"""SCALE-Sim v2 interoperability: read ``scale.cfg`` and topology CSVs, write its three reports.

``simulate_topology`` runs intvit's closed-form MatMul model (``sim.matmul``) over a list of
GEMMs and writes COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv and DETAILED_ACCESS_REPORT.csv with
SCALE-Sim's column names and units (one-byte words, per cycle), plus INTVIT_REPORT.csv with
intvit's own per-layer records. Which numbers equal SCALE-Sim's and which are intvit's own
estimates is listed in docs/scalesim.md.
"""

from __future__ import annotations

import configparser
import csv
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from intvit.quant.atomic import atomic_folder, write_text
from intvit.quant.errors import IntVitError
from intvit.sim.config import (
    DATAFLOWS, MAX_ARRAY_SIDE, MAX_BUFFER_BYTES, AcceleratorConfig, BufferConfig, MatMulConfig, MemoryConfig,
    read_user_text,
)
from intvit.sim.matmul import MODES, MatMulReport, MatMulUnit
from intvit.sim.topology import Gemm

__all__ = [
    "ScaleSimConfig",
    "TopologyReport",
    "read_scale_config",
    "read_topology",
    "write_topology",
    "simulate_topology",
    "COMPUTE_COLUMNS",
    "BANDWIDTH_COLUMNS",
    "DETAIL_COLUMNS",
]

KB = 1024
# Size guards: a topology file past these is not a network (and a depth-wise layer expands
# into one GEMM per channel, so its channel count is what the layer limit bounds).
MAX_TOPOLOGY_BYTES = 16 << 20
MAX_TOPOLOGY_LAYERS = 100_000
MAX_CONFIG_BYTES = 1 << 20
MAX_BANDWIDTH_WORDS = 1 << 32


def _clip(text: str) -> str:
    """A cell of a user's file, cut to fit a one-line message."""
    return text if len(text) <= 20 else text[:17] + "..."
# Keys SCALE-Sim v2 reads from [architecture_presets]; offsets only move trace addresses.
ARCHITECTURE_KEYS = (
    "arrayheight", "arraywidth", "ifmapsramszkb", "filtersramszkb", "ofmapsramszkb",
    "ifmapoffset", "filteroffset", "ofmapoffset", "bandwidth", "dataflow", "memorybanks",
)
SUPPORTED_SECTIONS = ("general", "architecture_presets", "run_presets", "network_presets")

COMPUTE_COLUMNS = (
    "LayerID", "Total Cycles", "Stall Cycles", "Overall Util %", "Mapping Efficiency %", "Compute Util %",
)
BANDWIDTH_COLUMNS = (
    "LayerID", "Avg IFMAP SRAM BW", "Avg FILTER SRAM BW", "Avg OFMAP SRAM BW",
    "Avg IFMAP DRAM BW", "Avg FILTER DRAM BW", "Avg OFMAP DRAM BW",
)
DETAIL_COLUMNS = ("LayerID",) + tuple(
    f"{memory} {operand} {what}"
    for memory in ("SRAM", "DRAM")
    for operand, access in (("IFMAP", "Reads"), ("Filter", "Reads"), ("OFMAP", "Writes"))
    for what in ("Start Cycle", "Stop Cycle", access)
)


@dataclass(frozen=True)
class ScaleSimConfig:
    """The parts of a SCALE-Sim v2 ``scale.cfg`` that decide cycles and traffic.

    Attributes
    ----------
    run_name : str
    rows, cols : int
        ``ArrayHeight`` and ``ArrayWidth``.
    ifmap_kb, filter_kb, ofmap_kb : int
        SRAM sizes in kB (1024 bytes).
    dataflow : str
    bandwidth : int or None
        Words per cycle with ``InterfaceBandwidth: USER``; ``None`` for ``CALC``, where
        SCALE-Sim sizes the interface to the demand and never stalls.
    """

    run_name: str = "scale_run"
    rows: int = 32
    cols: int = 32
    ifmap_kb: int = 64
    filter_kb: int = 64
    ofmap_kb: int = 64
    dataflow: str = "os"
    bandwidth: int | None = None

    def accelerator(self) -> AcceleratorConfig:
        """The equivalent AcceleratorConfig: no pipeline latency, one-byte words."""
        bandwidth = math.inf if self.bandwidth is None else self.bandwidth
        return replace(
            AcceleratorConfig(),
            matmul=MatMulConfig(rows=self.rows, cols=self.cols, dataflow=self.dataflow, latency=0),
            buffers=BufferConfig(self.ifmap_kb * KB, self.filter_kb * KB, self.ofmap_kb * KB),
            memory=MemoryConfig(bandwidth),
        )


def _int_option(source: str, section: configparser.SectionProxy, key: str, name: str, limit: int) -> int:
    raw = section.get(key)
    if raw is None:
        raise IntVitError(f"{source}: missing {name} in [{section.name}]")
    text = raw.strip()
    shown = repr(text) if len(text) <= 20 else f"a {len(text)}-character value"
    if not text.isdigit() or len(text) > 20:
        if text.isdigit():
            raise IntVitError(f"{source}: {name} must be at most {limit}, not {shown}")
        raise IntVitError(f"{source}: {name} must be a positive integer, not {shown}")
    value = int(text)
    if value <= 0:
        raise IntVitError(f"{source}: {name} must be a positive integer, not {value}")
    if value > limit:
        raise IntVitError(f"{source}: {name} must be at most {limit}, not {value}")
    return value


def read_scale_config(path: str | Path) -> ScaleSimConfig:
    """Parse a SCALE-Sim v2 ``scale.cfg``.

    Raises
    ------
    IntVitError
        For missing or invalid fields and for features intvit does not model (several
        memory banks, sections from other SCALE-Sim versions, unknown keys).
    """
    path = Path(path)
    source = path.name
    parser = configparser.ConfigParser()
    try:
        parser.read_string(read_user_text(path, MAX_CONFIG_BYTES), source=source)
    except configparser.Error as exc:
        raise IntVitError(f"{source}: not a SCALE-Sim config: {' '.join(str(exc).split())}") from None
    for name in parser.sections():
        if name not in SUPPORTED_SECTIONS:
            raise IntVitError(f"{source}: section [{name}] is not supported by intvit (SCALE-Sim v2 sections only)")
    if not parser.has_section("architecture_presets"):
        raise IntVitError(f"{source}: missing section [architecture_presets]")
    arch = parser["architecture_presets"]
    for key in arch:
        if key not in ARCHITECTURE_KEYS and key != "topologycsvloc":
            raise IntVitError(f"{source}: unknown key {key!r} in [architecture_presets]")
    if arch.get("memorybanks", "1").strip() != "1":
        raise IntVitError(f"{source}: MemoryBanks = {arch['memorybanks'].strip()} is not supported; intvit models one bank")
    dataflow = arch.get("dataflow", "").strip()
    if dataflow not in DATAFLOWS:
        raise IntVitError(f"{source}: Dataflow must be one of {', '.join(DATAFLOWS)}, not {dataflow!r}")
    mode = parser.get("run_presets", "InterfaceBandwidth", fallback="CALC").strip()
    if mode not in ("USER", "CALC"):
        raise IntVitError(f"{source}: InterfaceBandwidth must be USER or CALC, not {mode!r}")
    bandwidth = None
    if mode == "USER":
        # SCALE-Sim accepts a comma list and uses its first entry for all three interfaces.
        first = arch.get("bandwidth", "").split(",")[0].strip()
        try:
            bandwidth = int(first)
        except ValueError:
            raise IntVitError(f"{source}: Bandwidth must be a positive integer with InterfaceBandwidth USER, "
                              f"not {_clip(first)!r}") from None
        if bandwidth <= 0:
            raise IntVitError(f"{source}: Bandwidth must be a positive integer, not {bandwidth}")
        if bandwidth > MAX_BANDWIDTH_WORDS:
            shown = bandwidth if len(first) <= 20 else f"a {len(first)}-digit number"
            raise IntVitError(f"{source}: Bandwidth must be at most {MAX_BANDWIDTH_WORDS}, not {shown}")
    run_name = parser.get("general", "run_name", fallback="scale_run").strip()
    if not run_name or run_name in (".", "..") or any(c in run_name for c in "/\\\0") or len(run_name) > 255:
        raise IntVitError(f"{source}: run_name must be a plain folder name (no /, \\ or ..), not {run_name!r}")
    scale = ScaleSimConfig(
        run_name=run_name,
        rows=_int_option(source, arch, "arrayheight", "ArrayHeight", MAX_ARRAY_SIDE),
        cols=_int_option(source, arch, "arraywidth", "ArrayWidth", MAX_ARRAY_SIDE),
        ifmap_kb=_int_option(source, arch, "ifmapsramszkb", "IfmapSramSzkB", MAX_BUFFER_BYTES // KB),
        filter_kb=_int_option(source, arch, "filtersramszkb", "FilterSramSzkB", MAX_BUFFER_BYTES // KB),
        ofmap_kb=_int_option(source, arch, "ofmapsramszkb", "OfmapSramSzkB", MAX_BUFFER_BYTES // KB),
        dataflow=dataflow,
        bandwidth=bandwidth,
    )
    try:
        scale.accelerator()
    except IntVitError as exc:
        raise IntVitError(f"{source}: {exc}") from None
    return scale


def _lower_conv(source: str, line: int, cells: list[str], budget: int) -> list[Gemm]:
    # SCALE-Sim's conv row: name, ifmap h, ifmap w, filter h, filter w, channels, filters, stride h[, stride w].
    if len(cells) not in (8, 9):
        raise IntVitError(f"{source}:{line}: a convolution row needs 8 or 9 fields, found {len(cells)}")
    name = cells[0]
    try:
        ih, iw, fh, fw, channels, filters, sh, *rest = (int(x) for x in cells[1:])
    except ValueError:
        raise IntVitError(f"{source}:{line}: convolution fields after the name must be integers") from None
    sw = rest[0] if rest else sh
    if min(ih, iw, fh, fw, channels, filters, sh, sw) <= 0:
        raise IntVitError(f"{source}:{line}: convolution fields must be positive integers")
    if fh > ih or fw > iw:
        raise IntVitError(f"{source}:{line}: filter {fh}x{fw} is larger than the ifmap {ih}x{iw}")
    out_h, out_w = -(-(ih - fh + sh) // sh), -(-(iw - fw + sw) // sw)
    if "DP" in name:
        # Depth-wise: SCALE-Sim runs one single-channel layer per channel.
        if channels > budget:
            raise IntVitError(f"{source}:{line}: depth-wise layer {name} of {channels} channels makes more than "
                              f"{MAX_TOPOLOGY_LAYERS:,} layers in all (one per channel); the limit is {MAX_TOPOLOGY_LAYERS:,}")
        first = Gemm(f"{name}Channel_0", out_h * out_w, filters, fh * fw)
        return [first, *(replace(first, name=f"{name}Channel_{c}") for c in range(1, channels))]
    return [Gemm(name, out_h * out_w, filters, fh * fw * channels)]


def read_topology(path: str | Path, input_type: str = "auto") -> list[Gemm]:
    """Read a SCALE-Sim topology CSV as GEMMs.

    Parameters
    ----------
    path : str or Path
    input_type : {"auto", "gemm", "conv"}
        ``"gemm"``: rows ``Layer, M, N, K`` (SCALE-Sim's ``-i gemm``); ``"conv"``: convolution
        rows lowered to GEMM as SCALE-Sim does (M = output pixels, K = window, N = filters);
        ``"auto"`` picks from the header (``M`` as the second column means GEMM).
    """
    path = Path(path)
    source = path.name
    if input_type not in ("auto", "gemm", "conv"):
        raise IntVitError(f"input type must be one of auto, gemm, conv, not {input_type!r}")
    rows = [[cell.strip() for cell in row] for row in csv.reader(read_user_text(path, MAX_TOPOLOGY_BYTES).splitlines())]
    numbered = [(i + 1, row[:-1] if row and row[-1] == "" else row) for i, row in enumerate(rows)]
    numbered = [(i, row) for i, row in numbered if any(row)]
    if not numbered:
        raise IntVitError(f"{source}: empty topology file")
    (_, header), body = numbered[0], numbered[1:]
    if input_type == "auto":
        input_type = "gemm" if len(header) > 1 and header[1].upper() == "M" else "conv"
    layers: list[Gemm] = []
    for line, cells in body:
        if len(layers) >= MAX_TOPOLOGY_LAYERS:
            raise IntVitError(f"{source}:{line}: more than {MAX_TOPOLOGY_LAYERS:,} layers; the limit is "
                              f"{MAX_TOPOLOGY_LAYERS:,}")
        if input_type == "conv":
            try:
                layers += _lower_conv(source, line, cells, MAX_TOPOLOGY_LAYERS - len(layers))
            except IntVitError as exc:
                message = str(exc)
                raise IntVitError(message if message.startswith(f"{source}:") else f"{source}:{line}: {message}") from None
            continue
        if len(cells) != 4:
            raise IntVitError(f"{source}:{line}: a GEMM row needs 4 fields (Layer, M, N, K), found {len(cells)}")
        try:
            m, n, k = (int(x) for x in cells[1:])
        except ValueError:
            raise IntVitError(f"{source}:{line}: M, N and K must be integers, "
                              f"not {', '.join(map(_clip, cells[1:]))}") from None
        try:
            layers.append(Gemm(cells[0], m, n, k))
        except IntVitError as exc:
            raise IntVitError(f"{source}:{line}: {exc}") from None
    if not layers:
        raise IntVitError(f"{source}: no layers after the header")
    return layers


def write_topology(path: str | Path, layers: list[Gemm]) -> None:
    """Write GEMMs as a SCALE-Sim GEMM topology (``Layer, M, N, K,``; it needs the trailing comma)."""
    lines = ["Layer, M, N, K,"] + [f"{g.name}, {g.m}, {g.n}, {g.k}," for g in layers]
    write_text(path, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class TopologyReport:
    """What ``simulate_topology`` computed and where it wrote it.

    Attributes
    ----------
    mode : str
    layers : tuple of MatMulReport
        intvit's per-layer records, in topology order.
    compute, bandwidth, detail : tuple of tuple
        The rows of the three SCALE-Sim reports (without the header).
    files : tuple of Path
    """

    mode: str
    layers: tuple[MatMulReport, ...]
    compute: tuple[tuple, ...]
    bandwidth: tuple[tuple, ...]
    detail: tuple[tuple, ...]
    files: tuple[Path, ...]

    @property
    def total_cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)


def _sram_windows(report: MatMulReport) -> tuple[tuple[int, int], ...]:
    """First and last demand cycle of the ifmap, filter and ofmap SRAMs (SCALE-Sim's schedule).

    Within a fold SCALE-Sim lays each operand's demand on rows of a matrix (with skew, flips
    and null padding of partial folds); these are the first and last non-empty rows of the
    first and last fold. Reads are served one hit-latency cycle after demand, writes at once.
    """
    plan, length = report.plan, report.fold_cycles
    r, t = plan.rows, plan.temporal
    first_rows, last_rows = plan.rows_used(0), plan.rows_used(plan.row_folds - 1)
    last_cols = plan.cols_used(plan.col_folds - 1)
    if plan.dataflow == "os":
        windows = ((0, t + last_rows - 2), (0, t + last_cols - 2), (t - 1 + r - first_rows, t + r + last_cols - 3))
    else:
        stream = (r, r + t + last_rows - 2)
        stationary = (r - first_rows, r - 1)
        ofmap = (2 * r - 1, 2 * r + t + last_cols - 3)
        windows = (stream, stationary, ofmap) if plan.dataflow == "ws" else (stationary, stream, ofmap)
    offset = (plan.folds - 1) * length
    hit_latency = (1, 1, 0)
    return tuple((first + lat, last + offset + lat) for (first, last), lat in zip(windows, hit_latency))


def _report_rows(layer_id: int, report: MatMulReport) -> tuple[tuple, tuple, tuple]:
    plan = report.plan
    r, c, t = plan.rows, plan.cols, plan.temporal
    slots = r * c
    total = report.cycles
    # SCALE-Sim's per-fold compute utilisation divides by the demand matrix's rows plus
    # columns minus one, which for WS and IS is 2R + 2C + T - 3, not the fold length.
    util_cycles = report.fold_cycles if plan.dataflow == "os" or report.mode == "native" else 2 * r + 2 * c + t - 3
    mapped = plan.spatial_rows * plan.spatial_cols
    compute = (
        layer_id, total, report.stall_cycles,
        report.macs * 100 / (total * slots),
        mapped / (plan.folds * slots) * 100,
        mapped * t / (plan.folds * slots * util_cycles) * 100,
    )
    sram = _sram_windows(report)
    dram_window = (0.0, float(max(total - 1, 0)))
    dram_words = (report.a_dram_bytes, report.b_dram_bytes, report.out_dram_bytes)
    sram_words = (report.a_sram_reads, report.b_sram_reads, report.out_sram_writes)
    detail = (layer_id,)
    for (start, stop), words in zip(sram, sram_words):
        detail += (float(start), float(stop), words)
    for words in dram_words:
        detail += (*dram_window, words)
    dram_span = dram_window[1] - dram_window[0] + 1
    bandwidth = (layer_id, *(w / total for w in sram_words), *(w / dram_span for w in dram_words))
    return compute, bandwidth, detail


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    # SCALE-Sim's layout: ", " between fields and a trailing comma on every line.
    lines = [", ".join(columns) + ","] + [", ".join(str(x) for x in row) + "," for row in rows]
    path.write_text("\n".join(lines) + "\n")


def simulate_topology(
    cfg: ScaleSimConfig | AcceleratorConfig, layers: list[Gemm], mode: str = "scalesim", out_dir: str | Path = "."
) -> TopologyReport:
    """Run the MatMul model over a GEMM topology and write SCALE-Sim's reports.

    Parameters
    ----------
    cfg : ScaleSimConfig or AcceleratorConfig
        A parsed ``scale.cfg`` or an intvit accelerator config.
    layers : list of Gemm
    mode : {"scalesim", "native"}
        Cycle convention; ``"scalesim"`` reproduces SCALE-Sim v2's compute cycles exactly.
    out_dir : str or Path
        Created if missing; receives (all four, or on failure none of) COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv,
        DETAILED_ACCESS_REPORT.csv and INTVIT_REPORT.csv.

    Returns
    -------
    TopologyReport
    """
    if mode not in MODES:
        raise IntVitError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    accelerator = cfg.accelerator() if isinstance(cfg, ScaleSimConfig) else cfg
    unit = MatMulUnit(accelerator, mode)
    reports = tuple(unit.layer(g.m, g.k, g.n, name=g.name) for g in layers)
    rows = [_report_rows(i, report) for i, report in enumerate(reports)]
    compute, bandwidth, detail = (tuple(part) for part in zip(*rows)) if rows else ((), (), ())
    out = Path(out_dir)
    names = ("COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv", "INTVIT_REPORT.csv")
    # All four reports or none: they are written to a staging folder and moved in together.
    with atomic_folder(out) as staging:
        _write_csv(staging / names[0], COMPUTE_COLUMNS, list(compute))
        _write_csv(staging / names[1], BANDWIDTH_COLUMNS, list(bandwidth))
        _write_csv(staging / names[2], DETAIL_COLUMNS, list(detail))
        _write_intvit_report(staging / names[3], reports)
    return TopologyReport(mode, reports, compute, bandwidth, detail, tuple(out / name for name in names))


def _write_intvit_report(path: Path, reports: tuple[MatMulReport, ...]) -> None:
    scalar = [f.name for f in fields(MatMulReport) if f.name != "plan"]
    columns = ["layer_id", *scalar, "dataflow", "rows", "cols", "folds", "macs", "stall_cycles", "utilization"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, report in enumerate(reports):
            writer.writerow([
                i, *(getattr(report, name) for name in scalar), report.dataflow, report.plan.rows,
                report.plan.cols, report.folds, report.macs, report.stall_cycles, f"{report.utilization:.6f}",
            ])
