"""Where one inference spends its cycles: units' busy intervals, exposed cycles, the critical path.

A ``Timeline`` is built from a schedule (``sim.schedule.ScheduleReport.timeline`` for the
compiled instruction stream, ``sim.simulator.SimReport.timeline`` for the op-level model) and
holds, per unit of ``LANES``, the half-open intervals ``[start, end)`` in which the unit is
busy, plus the critical path as consecutive segments that partition ``[0, total_cycles)``,
each attributed to the resource that bounds it. Per unit it reports:

* **busy** cycles: the length of the union of its intervals;
* **exposed** cycles: busy cycles in which the array is idle, i.e. what the unit would stop
  costing if it ran entirely under the array (for the array itself: none);
* **critical** cycles: cycles of the critical path attributed to it. They sum to the total;
  ``control`` takes instruction fetch, dispatch, SYNC and END.

``bins`` aggregates both into fixed-width bins for a readable Gantt chart of a long run
(``sim.report.plot_timeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intvit.quant.errors import IntVitError

__all__ = ["LANES", "CRITICAL_UNITS", "Timeline", "merge_intervals", "interval_length", "overlap_length"]

LANES = ("array", "requant", "softmax", "gelu", "layernorm", "load", "store")
CRITICAL_UNITS = (*LANES, "control")


def merge_intervals(intervals) -> np.ndarray:
    """Sorted, disjoint ``(n, 2)`` int64 intervals covering the same cycles as ``intervals``.

    Empty intervals (``end <= start``) are dropped; touching ones are joined.
    """
    spans = np.asarray(intervals, dtype=np.int64).reshape(-1, 2)
    spans = spans[spans[:, 1] > spans[:, 0]]
    if spans.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    reach = np.maximum.accumulate(spans[:, 1])
    new = np.ones(len(spans), dtype=bool)
    new[1:] = spans[1:, 0] > reach[:-1]             # a gap before this interval starts a new one
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(spans) - 1)
    return np.stack([spans[first, 0], reach[last]], axis=1)


def interval_length(intervals: np.ndarray) -> int:
    """Cycles covered by merged (disjoint) intervals."""
    return int((intervals[:, 1] - intervals[:, 0]).sum())


def overlap_length(a: np.ndarray, b: np.ndarray) -> int:
    """Cycles covered by both of two sets of merged intervals."""
    both = merge_intervals(np.concatenate([a, b]))
    return interval_length(a) + interval_length(b) - interval_length(both)


def _covered(intervals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Cycles of merged ``intervals`` inside each bin ``[edges[i], edges[i+1])``."""
    if intervals.size == 0:
        return np.zeros(len(edges) - 1, dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(intervals[:, 1] - intervals[:, 0])])
    # Per edge: whole intervals ending before it, plus the part of the one it cuts.
    index = np.searchsorted(intervals[:, 1], edges, side="right")
    whole = cumulative[index]
    cut = np.minimum(index, len(intervals) - 1)
    partial = np.where(index < len(intervals), np.clip(edges - intervals[cut, 0], 0, None), 0)
    return np.diff(whole + partial)


@dataclass(frozen=True)
class Timeline:
    """Busy intervals per unit and the critical path of one inference.

    Attributes
    ----------
    total_cycles : int
    busy : dict of unit -> (n, 2) int64 array
        Merged busy intervals of every unit of ``LANES``.
    path_start, path_end : int64 arrays
        Consecutive critical-path segments, ``path_start[0] == 0``, ``path_end[-1] == total_cycles``.
    path_unit : int array
        Index into ``CRITICAL_UNITS`` of the resource bounding each segment.
    path_part : int array
        Index into ``parts`` of the model part (``sim.report.op_groups``) each segment belongs to.
    parts : tuple of str
    """

    total_cycles: int
    busy: dict
    path_start: np.ndarray
    path_end: np.ndarray
    path_unit: np.ndarray
    path_part: np.ndarray
    parts: tuple = ()

    def __post_init__(self):
        if set(self.busy) != set(LANES):
            raise IntVitError(f"a timeline needs busy intervals for {', '.join(LANES)}, got {', '.join(self.busy)}")
        starts, ends = self.path_start, self.path_end
        if len(starts) and (starts[0] != 0 or ends[-1] != self.total_cycles or np.any(starts[1:] != ends[:-1])
                            or np.any(ends < starts)):
            raise IntVitError(f"the critical path must cover cycles 0..{self.total_cycles} without gaps or overlaps")

    @classmethod
    def build(cls, total_cycles: int, intervals: dict, path: list[tuple[int, int, str, str]]) -> Timeline:
        """A timeline from raw busy intervals per unit and the critical path as ``(start, end, unit, part)``
        segments in time order (they must tile ``[0, total_cycles)``)."""
        unknown = set(intervals) - set(LANES)
        if unknown:
            raise IntVitError(f"unknown unit(s) {', '.join(sorted(unknown))}; units are {', '.join(LANES)}")
        parts = tuple(dict.fromkeys(part for _, _, _, part in path))
        part_index = {part: i for i, part in enumerate(parts)}
        unit_index = {unit: i for i, unit in enumerate(CRITICAL_UNITS)}
        for _, _, unit, _ in path:
            if unit not in unit_index:
                raise IntVitError(f"critical-path unit {unit!r} is none of {', '.join(CRITICAL_UNITS)}")
        return cls(
            total_cycles=int(total_cycles),
            busy={lane: merge_intervals(intervals.get(lane, ())) for lane in LANES},
            path_start=np.array([s for s, _, _, _ in path], dtype=np.int64),
            path_end=np.array([e for _, e, _, _ in path], dtype=np.int64),
            path_unit=np.array([unit_index[u] for _, _, u, _ in path], dtype=np.int64),
            path_part=np.array([part_index[p] for _, _, _, p in path], dtype=np.int64),
            parts=parts,
        )

    def busy_cycles(self, unit: str) -> int:
        return interval_length(self.busy[unit])

    def exposed_cycles(self, unit: str) -> int | None:
        """Busy cycles of ``unit`` in which the array is idle (``None`` for the array)."""
        if unit == "array":
            return None
        return self.busy_cycles(unit) - overlap_length(self.busy[unit], self.busy["array"])

    def critical_cycles(self) -> dict[str, int]:
        """Cycles of the critical path per resource of ``CRITICAL_UNITS`` (they sum to ``total_cycles``)."""
        cycles = np.bincount(self.path_unit, weights=self.path_end - self.path_start, minlength=len(CRITICAL_UNITS))
        return {unit: int(c) for unit, c in zip(CRITICAL_UNITS, cycles)}

    def critical_by_part(self) -> list[tuple[str, dict[str, int]]]:
        """Per model part, in order: critical cycles per resource."""
        lengths = self.path_end - self.path_start
        out = []
        for p, part in enumerate(self.parts):
            mask = self.path_part == p
            cycles = np.bincount(self.path_unit[mask], weights=lengths[mask], minlength=len(CRITICAL_UNITS))
            out.append((part, {unit: int(c) for unit, c in zip(CRITICAL_UNITS, cycles)}))
        return out

    def stretches(self) -> int:
        """Runs of consecutive critical-path segments bounded by the same resource."""
        units = self.path_unit[self.path_end > self.path_start]
        return int(np.count_nonzero(np.diff(units))) + 1 if units.size else 0

    def units(self) -> dict[str, dict]:
        """Per unit of ``CRITICAL_UNITS``: busy, exposed and critical cycles (JSON-ready)."""
        critical = self.critical_cycles()
        out = {}
        for unit in CRITICAL_UNITS:
            busy = self.busy_cycles(unit) if unit in self.busy else None
            out[unit] = {"busy_cycles": busy,
                         "exposed_cycles": self.exposed_cycles(unit) if unit in self.busy else None,
                         "critical_cycles": critical[unit]}
        return out

    def bins(self, count: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """``(edges, busy, critical)`` over ``count`` equal bins of the run.

        ``busy[unit]`` is the fraction of each bin the unit is busy; ``critical`` is a
        ``(len(CRITICAL_UNITS), count)`` array of the fraction of each bin's critical path per resource.
        """
        if not isinstance(count, int) or count < 1:
            raise IntVitError(f"bins must be a positive integer, not {count!r}")
        edges = np.unique(np.linspace(0, self.total_cycles, count + 1).round().astype(np.int64))
        if edges.size < 2:
            edges = np.array([0, max(1, self.total_cycles)])
        width = np.diff(edges).astype(float)
        busy = {unit: _covered(spans, edges) / width for unit, spans in self.busy.items()}
        critical = np.stack([
            _covered(np.stack([self.path_start, self.path_end], axis=1)[self.path_unit == u], edges) / width
            for u in range(len(CRITICAL_UNITS))])
        return edges, busy, critical

    def as_dict(self) -> dict:
        return {"units": self.units(), "array_idle_cycles": self.total_cycles - self.busy_cycles("array"),
                "critical_path_stretches": self.stretches(),
                "critical_by_part": {part: cycles for part, cycles in self.critical_by_part()}}
