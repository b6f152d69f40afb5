"""Plain-text tables and PNG charts for simulation reports, shared by the CLI commands.

``format_table`` is the one table printer of the command line; the plotting helpers draw
on a bare ``matplotlib.figure.Figure`` (Agg canvas), so they never open a window and work
on headless machines without touching pyplot's global backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from intvit.quant.atomic import atomic_file, check_output_file
from intvit.quant.errors import IntVitError

__all__ = ["format_table", "format_count", "op_groups", "check_plot_path", "plot_timeline", "plot_pareto",
           "UNIT_ORDER"]

# The op-level model's units, in the order its tables list them.
UNIT_ORDER = ("matmul", "requant", "softmax", "gelu", "layernorm")
TIMELINE_COLORS = {"array": "#4c72b0", "requant": "#dd8452", "softmax": "#55a868", "gelu": "#c44e52",
                   "layernorm": "#8172b3", "load": "#ccb974", "store": "#64b5cd", "control": "#8c8c8c"}
# Up to this many busy intervals and path segments a Gantt chart draws each one; beyond, bins.
EXACT_INTERVALS = 4000
BLOCK_NAME = re.compile(r"^(blocks\.\d+)(\.|$)")
FIGURE_DPI = 120


def _cell(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table: header, a rule of dashes, one line per row, columns padded.

    Parameters
    ----------
    headers : list of str
    rows : list of list
        Cells; strings are printed as they are, floats with 4 significant digits, anything
        else with ``str``. Format numbers yourself when the default does not suit.
    align : str, optional
        One letter per column, ``"l"`` or ``"r"``. By default a column is right-aligned
        when every cell in it is a number, left-aligned otherwise.

    Returns
    -------
    str
        The table without a trailing newline.
    """
    width = len(headers)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise IntVitError(f"table row {i} has {len(row)} cells, the header has {width}")
    if align is None:
        align = "".join("r" if rows and all(_is_number(row[c]) for row in rows) else "l" for c in range(width))
    if len(align) != width or set(align) - {"l", "r"}:
        raise IntVitError(f"align must be one letter l or r per column ({width}), not {align!r}")
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    sizes = [max(len(line[c]) for line in cells) for c in range(width)]

    def line(values: list[str]) -> str:
        padded = (v.rjust(n) if a == "r" else v.ljust(n) for v, n, a in zip(values, sizes, align))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * n for n in sizes)
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:])])


def format_count(value: float) -> str:
    """A count with thousands separators (``12,345``); non-integers keep one decimal."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def op_groups(names: Sequence[str]) -> list[str]:
    """The model part of each op, in program order: ``patch_embed``, ``blocks.N`` or ``head``.

    Ops named ``blocks.N...`` belong to block N; ops before the first block are the patch
    embedding (patchify, projection, class token, position embedding) and ops after the
    last one the classifier head (class-token select, final norm, head).
    """
    groups, seen_block = [], False
    for name in names:
        match = BLOCK_NAME.match(name)
        seen_block = seen_block or match is not None
        groups.append(match.group(1) if match else "head" if seen_block else "patch_embed")
    return groups


def check_plot_path(path: str | Path) -> Path:
    """``path`` as a Path if it names a PNG file that can be written; commands call this before any long work."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise IntVitError(f"{path}: plots are written as PNG; give a file name ending in .png")
    return check_output_file(path)


def _save(figure, path: str | Path) -> Path:
    path = check_plot_path(path)
    with atomic_file(path) as temp:
        figure.savefig(temp, dpi=FIGURE_DPI, format="png")
    return path


def plot_timeline(timeline, path: str | Path, title: str = "", bins: int = 600) -> Path:
    """A Gantt chart of one inference (``sim.timeline.Timeline``) and its critical path; write a PNG.

    Top panel: one lane per unit (array, requant, softmax, gelu, layernorm, load, store) and a
    last lane for the critical path, coloured by the resource that bounds it. A run of more than
    ``EXACT_INTERVALS`` busy intervals is aggregated into ``bins`` equal bins, each drawn as high as
    the unit is busy in it (the critical lane: stacked shares of each resource). Bottom panel:
    critical-path cycles per model part, stacked by resource.

    Parameters
    ----------
    timeline : Timeline
    path : str or Path
        ``.png`` file to write.
    title : str
    bins : int
        Bins of an aggregated run.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from intvit.sim.timeline import CRITICAL_UNITS, LANES

    path = check_plot_path(path)
    total = max(timeline.total_cycles, 1)
    lanes = list(LANES) + ["critical"]
    figure = Figure(figsize=(12, 7.5), layout="constrained")
    gantt, parts = figure.subplots(2, 1, height_ratios=(3, 2))
    height = 0.8
    exact = sum(len(spans) for spans in timeline.busy.values()) + len(timeline.path_start) <= EXACT_INTERVALS
    for row, unit in enumerate(LANES):
        y = len(lanes) - 1 - row
        if exact:
            spans = timeline.busy[unit]
            gantt.broken_barh(list(zip(spans[:, 0], spans[:, 1] - spans[:, 0])), (y - height / 2, height),
                              color=TIMELINE_COLORS[unit])
    if exact:
        for u, unit in enumerate(CRITICAL_UNITS):
            mask = timeline.path_unit == u
            starts, ends = timeline.path_start[mask], timeline.path_end[mask]
            gantt.broken_barh(list(zip(starts, ends - starts)), (-height / 2, height), color=TIMELINE_COLORS[unit])
    else:
        edges, busy, critical = timeline.bins(bins)
        width = np.diff(edges)
        for row, unit in enumerate(LANES):
            y = len(lanes) - 1 - row
            gantt.bar(edges[:-1], busy[unit] * height, width=width, bottom=y - height / 2, align="edge",
                      color=TIMELINE_COLORS[unit], linewidth=0)
        bottom = np.full(len(width), -height / 2)
        for u, unit in enumerate(CRITICAL_UNITS):
            gantt.bar(edges[:-1], critical[u] * height, width=width, bottom=bottom, align="edge",
                      color=TIMELINE_COLORS[unit], linewidth=0)
            bottom = bottom + critical[u] * height
    gantt.set_yticks(range(len(lanes)), lanes[::-1])
    gantt.set_xlim(0, total)
    gantt.set_xlabel("cycle" if exact else f"cycle (bins of {total // bins:,} cycles; bar height = share busy)")
    gantt.set_title(title)
    by_part = timeline.critical_by_part()
    names = [part for part, _ in by_part]
    bottom = np.zeros(len(names))
    for unit in CRITICAL_UNITS:
        values = np.array([cycles[unit] for _, cycles in by_part], dtype=float)
        if values.any():
            parts.bar(names, values, bottom=bottom, color=TIMELINE_COLORS[unit])
            bottom += values
    parts.set_ylabel("critical-path cycles")
    parts.tick_params(axis="x", labelrotation=45)
    figure.legend(handles=[Patch(color=TIMELINE_COLORS[unit], label=unit) for unit in CRITICAL_UNITS],
                  loc="outside right upper")
    return _save(figure, path)


def plot_pareto(panels: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Every configuration as a point and its Pareto front as a step line, one panel per pair of
    quantities (both minimised, log axes); write a PNG.

    Parameters
    ----------
    panels : sequence of dict
        ``{"x": label, "y": label, "points": [(x, y, group), ...], "front": [bool, ...]}``;
        points of one ``group`` (e.g. the array size) share a colour across panels.
    path : str or Path
        ``.png`` file to write.
    title : str
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6 * len(panels), 3.9), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    groups = list(dict.fromkeys(group for panel in panels for _, _, group in panel["points"]))
    colors = {group: f"C{i % 10}" for i, group in enumerate(groups)}
    for ax, panel in zip(axes, panels):
        for group in groups:
            xy = [(x, y) for x, y, g in panel["points"] if g == group]
            if xy:
                ax.scatter(*zip(*xy), s=14, alpha=0.75, color=colors[group], label=group)
        front = sorted((x, y) for (x, y, _), on in zip(panel["points"], panel["front"]) if on)
        if front:
            ax.step(*zip(*front), where="post", color="black", linewidth=1.2, marker="o", markersize=6,
                    markerfacecolor="none", label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(panel["x"])
        ax.set_ylabel(panel["y"])
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    figure.suptitle(title, fontsize="medium")
    return _save(figure, path)
