"""Dask distributed as intvit's engine: a local cluster or an existing one, and an ordered map over it.

Why Dask: ``distributed`` starts a local cluster of worker processes in a couple of seconds on a
small machine, joins an existing cluster from its scheduler address (``dask scheduler`` +
``dask worker``, dask-jobqueue on SLURM/PBS, dask-kubernetes), reschedules the tasks of a worker
that dies, and is pure Python on top of numpy, which every intvit install already has.

Nothing here imports ``distributed`` at module level: intvit without ``--workers``/``--cluster``
never loads it, and without the ``cluster`` extra installed those options fail with one line.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager

from intvit.quant.errors import IntVitError

__all__ = ["CLUSTER_EXTRA", "ClusterMap", "add_cluster_arguments", "cluster_mapper", "open_client", "uses_cluster"]

CLUSTER_EXTRA = "pip install intvit[cluster]"
CONNECT_TIMEOUT_S = 20
# The local cluster stays quiet: a worker that dies is reported by ClusterMap in one line, and
# an error inside a task reaches the command line, which reports it as any other.
LOCAL_LOG_LEVEL = logging.CRITICAL


def add_cluster_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--workers N`` and ``--cluster ADDRESS``; ``unit`` names what is split (help text)."""
    from intvit.commands.common import positive_int

    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help=f"split the {unit} over N local worker processes (a Dask LocalCluster; "
                             "default: 1, in this process)")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help=f"split the {unit} over the workers of a running Dask cluster, given its "
                             "scheduler address (e.g. tcp://10.0.0.5:8786)")


def uses_cluster(args: argparse.Namespace) -> bool:
    """Whether the options ask for Dask (``--workers`` > 1 or ``--cluster``); checks they agree."""
    if args.cluster is not None and args.workers > 1:
        raise IntVitError("--workers and --cluster: give one (a --cluster has its own workers)")
    if args.cluster is not None and not args.cluster.strip():
        raise IntVitError("--cluster: empty scheduler address")
    return args.cluster is not None or args.workers > 1


def _import_distributed(option: str):
    try:
        import distributed
    except ImportError:
        raise IntVitError(f"{option} needs Dask distributed, which is not installed: {CLUSTER_EXTRA}") from None
    return distributed


@contextmanager
def open_client(workers: int = 1, address: str | None = None):
    """A ``distributed.Client`` on ``address``, or on a LocalCluster of ``workers`` processes.

    The local cluster has one thread per worker process (processes, not threads, sidestep the
    GIL and keep torch and numba from sharing one interpreter), its diagnostics server on a free
    port (8787 may belong to another cluster), and is closed on exit.
    """
    distributed = _import_distributed(f"--cluster {address}" if address else f"--workers {workers}")
    if address:
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise IntVitError(f"--cluster {address}: cannot connect to a Dask scheduler ({exc})") from None
        with client:
            yield client
        return
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=LOCAL_LOG_LEVEL) as cluster, \
            distributed.Client(cluster) as client:
        yield client


class _Shared:
    """Arguments common to every task, pickled once by intvit and unpickled once per worker process.

    Plain pickle, not Dask's per-type serialisers: those rebuild a torch module's hook dicts
    as plain dicts, which torch cannot hook into again.
    """

    def __init__(self, name: str, values: tuple):
        self.name = name
        self.payload = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)

    def values(self) -> tuple:
        if _unpickled.get("name") != self.name:
            _unpickled.clear()
            _unpickled.update(name=self.name, values=pickle.loads(self.payload))
        return _unpickled["values"]


# The worker process's copy of the last _Shared it saw (one map runs at a time).
_unpickled: dict = {}


def _apply(fn: Callable, shared: _Shared, item):
    return fn(*shared.values(), item)


class ClusterMap:
    """``map(fn, shared, items)`` -> ``[fn(*shared, item) for item in items]`` on a cluster's workers, in order.

    ``shared`` (a model, a program) is pickled once and scattered to every worker once, not sent
    with each task; calling again with the same ``shared`` object reuses the copies the workers
    hold. One progress bar counts finished items across calls as they come back from any
    worker. A worker that dies has its running items rescheduled by the Dask scheduler on the
    others (each item at most ``distributed.scheduler.allowed-failures`` times); if that
    happened during a call, ``notice`` gets one line.

    Parameters
    ----------
    client : distributed.Client
    desc, unit : str
        Progress bar label and unit ("batch", "config").
    notice : callable
        Called with one line of text when workers died during a call.

    Notes
    -----
    ``fn`` must be a module-level function: workers import it by name.
    """

    def __init__(self, client, desc: str, unit: str, notice: Callable[[str], None]):
        from intvit.commands.common import progress

        self.client, self.desc, self.unit, self.notice = client, desc, unit, notice
        self._scattered: tuple | None = None        # (the shared tuple, its future on the cluster)
        self._bar = progress(None, desc, total=0, unit=unit)

    def __call__(self, fn: Callable, shared: tuple, items: Iterable) -> list:
        from distributed import as_completed

        items = list(items)
        name = f"intvit-{self.desc}-{uuid.uuid4().hex[:8]}"
        since = self.client.run_on_scheduler(_scheduler_time)
        if self._scattered is None or self._scattered[0] is not shared:
            [future] = self.client.scatter([_Shared(name, shared)], broadcast=True, hash=False)
            self._scattered = (shared, future)
        futures = [self.client.submit(_apply, fn, self._scattered[1], item, key=(name, index), pure=False)
                   for index, item in enumerate(items)]
        self._bar.total += len(items)
        self._bar.refresh()
        results: list = [None] * len(items)
        for future, result in as_completed(futures, with_results=True):
            if future.status == "cancelled":     # every worker holding the scattered arguments died at once
                raise RuntimeError(f"{self.desc}: every worker died and the shared model/program was lost "
                                   "with them; run again")
            results[future.key[1]] = result
            future.release()     # a result in hand need not be recomputed if its worker dies later
            self._bar.update()
        lost = self.client.run_on_scheduler(_lost_workers, since=since, name=name)
        if lost:
            rerun = sum(len(keys) for keys in lost.values())
            self.notice(f"{_count(len(lost), 'worker')} died during the run ({', '.join(lost)}); "
                        f"{_count(rerun, self.unit)} re-run on the others, result complete")
        return results

    def close(self) -> None:
        self._bar.close()


@contextmanager
def cluster_mapper(args: argparse.Namespace, desc: str, unit: str):
    """``None`` for an in-process run, else a :class:`ClusterMap` on the cluster the options name.

    The cluster lives as long as the ``with`` block; worker losses are reported on stderr as
    ``intvit COMMAND: ...``.
    """
    if not uses_cluster(args):
        yield None
        return
    command = getattr(args, "command", None) or "intvit"
    notice = lambda line: print(f"intvit {command}: {line}", file=sys.stderr, flush=True)
    with open_client(args.workers, args.cluster) as client:
        mapper = ClusterMap(client, desc, unit, notice)
        try:
            yield mapper
        finally:
            mapper.close()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('ch', 's')) else 's'}"


def _scheduler_time(dask_scheduler=None) -> float:
    return time.time()


def _lost_workers(dask_scheduler=None, *, since: float, name: str) -> dict[str, list]:
    """On the scheduler: worker address -> keys of map ``name`` it was running, per unexpected loss since ``since``.

    Read from the scheduler's own event log; returned as plain data (the log also holds
    objects that do not serialise).
    """
    lost = {}
    for stamp, event in dask_scheduler.get_events("all"):
        if (stamp >= since and isinstance(event, dict) and event.get("action") == "remove-worker"
                and not event.get("expected")):
            lost[event["worker"]] = [list(key) for key in event.get("processing-tasks", ())
                                     if isinstance(key, tuple) and key[0] == name]
    return lost
