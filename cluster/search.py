"""Design-space search: Optuna proposes accelerators, the cycle model scores them, the Pareto front is kept.

A space is the product of array shapes, dataflows, off-chip bandwidths, element-wise unit lanes
and on-chip buffer sizes. Instead of simulating every point, :func:`search` asks Optuna's
sampler (NSGA-II or multi-objective TPE, seeded) for a generation of configurations at a time,
evaluates the ones not seen before (in this process or on a cluster, the same numbers either
way), and tells the sampler the objectives to minimise. Generations have a fixed size and are
told in order, so a seed gives the same search on any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from intvit.cluster.engine import CLUSTER_EXTRA
from intvit.quant.errors import IntVitError

__all__ = ["SAMPLERS", "SEARCH_COLUMNS", "SearchSpace", "check_objectives", "objective_values", "pareto_mask", "search"]

SAMPLERS = ("tpe", "nsga2")
SEARCH_COLUMNS = ("array", "rows", "cols", "dataflow", "bandwidth", "lanes", "buffer_bytes")
# Objectives that follow from the point itself: hardware-cost proxies for when no area model exists.
DERIVED = {
    "macs": lambda row: row["rows"] * row["cols"],
    "sram_bytes": lambda row: 3 * row["buffer_bytes"],
}
ELEMENTWISE_UNITS = ("requant", "softmax", "gelu", "layernorm")
# A generation gives the sampler several points at once (a cluster evaluates them in parallel).
GENERATION = 8
# Proposals of already-seen points tolerated in a row before the search ends: the sampler has converged.
MAX_STALE_GENERATIONS = 25


@dataclass(frozen=True)
class SearchSpace:
    """Every combination of the listed values.

    Parameters
    ----------
    arrays : tuple of (int, int)
        MatMul array shapes, rows x cols.
    dataflows : tuple of str
    bandwidths : tuple of number
        Off-chip bytes per cycle.
    lanes : tuple of int
        Lanes of every element-wise unit (requantiser, softmax, GELU, LayerNorm).
    buffers : tuple of int
        Bytes of each of the three on-chip buffers (ifmap, weight, ofmap).
    """

    arrays: tuple
    dataflows: tuple
    bandwidths: tuple
    lanes: tuple
    buffers: tuple

    def __post_init__(self):
        for name in ("arrays", "dataflows", "bandwidths", "lanes", "buffers"):
            values = getattr(self, name)
            if not values:
                raise IntVitError(f"search space: {name} must list at least one value")
            if len(set(values)) != len(values):
                raise IntVitError(f"search space: {name} lists a value twice")

    @property
    def size(self) -> int:
        return len(self.arrays) * len(self.dataflows) * len(self.bandwidths) * len(self.lanes) * len(self.buffers)

    def points(self) -> list[dict]:
        """Every point of the space, arrays varying slowest, as ``SEARCH_COLUMNS`` dicts."""
        return [_point(a, d, b, n, m) for a in self.arrays for d in self.dataflows for b in self.bandwidths
                for n in self.lanes for m in self.buffers]

    def suggest(self, trial) -> dict:
        """The point an Optuna trial picks: categorical array and dataflow, ordinal indices for the rest."""
        array = trial.suggest_categorical("array", [f"{r}x{c}" for r, c in self.arrays])
        flow = trial.suggest_categorical("dataflow", list(self.dataflows))
        pick = lambda name, values: sorted(values)[trial.suggest_int(name, 0, len(values) - 1)]
        rows, cols = (int(n) for n in array.split("x"))
        return _point((rows, cols), flow, pick("bandwidth", self.bandwidths), pick("lanes", self.lanes),
                      pick("buffer_bytes", self.buffers))

    @staticmethod
    def config(base, point: dict):
        """``base`` with the point's fields set."""
        return base.with_(matmul__rows=point["rows"], matmul__cols=point["cols"], matmul__dataflow=point["dataflow"],
                          memory__bandwidth_bytes_per_cycle=point["bandwidth"],
                          **{f"{unit}__lanes": point["lanes"] for unit in ELEMENTWISE_UNITS},
                          **{f"buffers__{b}_bytes": point["buffer_bytes"] for b in ("ifmap", "weight", "ofmap")})


def _point(array, flow, bandwidth, lanes, buffer_bytes) -> dict:
    rows, cols = array
    return {"array": f"{rows}x{cols}", "rows": rows, "cols": cols, "dataflow": flow, "bandwidth": bandwidth,
            "lanes": lanes, "buffer_bytes": buffer_bytes}


def objective_values(row: dict, objectives: Sequence[str]) -> tuple | None:
    """The row's objectives (to minimise), or ``None`` for a configuration that does not fit."""
    if row.get("note"):
        return None
    return tuple(float(DERIVED[name](row) if name in DERIVED else row[name]) for name in objectives)


def check_objectives(objectives: Sequence[str], columns: Sequence[str]) -> None:
    """Each objective is a numeric result column or a derived cost; one-line error otherwise."""
    known = [c for c in columns if c not in SEARCH_COLUMNS and c != "note"] + list(DERIVED)
    for name in objectives:
        if name not in known:
            raise IntVitError(f"--objectives: unknown objective {name!r}; expected some of {', '.join(known)}")
    if len(set(objectives)) != len(objectives):
        raise IntVitError("--objectives: an objective is listed twice")


def pareto_mask(values: Sequence[tuple | None]) -> list[bool]:
    """For each point, whether no other point is at least as good in every objective and better in one.

    ``None`` (a point that does not fit) is never on the front and dominates nothing.
    """
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [v is not None and not any(w is not None and dominates(w, v) for w in values) for v in values]


def search(space: SearchSpace, evaluate: Callable[[list[dict]], list[dict]], objectives: Sequence[str], *,
           budget: int, seed: int = 0, sampler: str = "tpe") -> list[dict]:
    """Explore ``space`` towards ``objectives``, evaluating at most ``budget`` distinct points.

    Parameters
    ----------
    space : SearchSpace
    evaluate : callable
        ``evaluate(points)`` -> one result dict per point, in order (``note`` non-empty for a
        configuration that does not fit).
    objectives : sequence of str
        Result keys (or ``DERIVED`` names) to minimise.
    budget : int
        Most distinct configurations to evaluate; a budget that covers the space evaluates all of it.
    seed : int
        The sampler's seed.
    sampler : {"tpe", "nsga2"}

    Returns
    -------
    list of dict
        Every evaluated point with its results, in evaluation order, and ``pareto`` (bool): on the
        front of the evaluated points.
    """
    if sampler not in SAMPLERS:
        raise IntVitError(f"--sampler: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if budget >= space.size:
        rows = [{**point, **result} for point, result in zip(space.points(), evaluate(space.points()))]
    else:
        rows = _optimise(space, evaluate, objectives, budget, seed, sampler)
    for row, front in zip(rows, pareto_mask([objective_values(row, objectives) for row in rows])):
        row["pareto"] = front
    return rows


def _optimise(space, evaluate, objectives, budget, seed, sampler) -> list[dict]:
    try:
        import optuna
    except ImportError:
        raise IntVitError(f"--search needs Optuna, which is not installed: {CLUSTER_EXTRA}") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=GENERATION),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=2 * GENERATION),
    }
    study = optuna.create_study(directions=["minimize"] * len(objectives), sampler=samplers[sampler]())
    seen: dict[tuple, dict] = {}
    stale = 0
    while len(seen) < budget and stale < MAX_STALE_GENERATIONS:
        trials = [study.ask() for _ in range(GENERATION)]
        points = [space.suggest(trial) for trial in trials]
        fresh = list({_key(p): p for p in points if _key(p) not in seen}.values())[:budget - len(seen)]
        stale = 0 if fresh else stale + 1
        for point, result in zip(fresh, evaluate(fresh) if fresh else []):
            seen[_key(point)] = {**point, **result}
        for trial, point in zip(trials, points):
            row = seen.get(_key(point))
            values = None if row is None else objective_values(row, objectives)
            if values is None:          # does not fit, or past the budget: nothing to learn from
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, list(values))
    return list(seen.values())


def _key(point: dict) -> tuple:
    return tuple(point[name] for name in SEARCH_COLUMNS)
