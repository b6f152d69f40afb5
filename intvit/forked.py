"""Run one piece of work in a forked child process while the parent gets on with another.

A command whose first job needs torch (calibration: 2-3 s to import torch, on one core) and whose
later jobs need numba's kernels and the simulator (another second or two of imports and cache
loading) spends seconds on one core of a machine that has two. ``run_beside`` forks before torch
is loaded: the child imports torch and calibrates, the parent meanwhile loads what it needs next,
and the child's result comes back through a pipe (pickled: numpy arrays and floats). What the
child needs from the parent, the parent can hand over while the child imports: ``Handover``, an
array in shared memory (the calibration images, which otherwise load in the child's process and
hold up its import on the interpreter lock).

Off Linux (no ``fork`` on Windows; on macOS a fork is unsafe once system frameworks run threads),
or where torch is already loaded in this process (a fork would copy its thread pools, and the
import it would hide is already paid), the work runs here, after the ``meanwhile`` job.
"""

from __future__ import annotations

import mmap
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from intvit.quant.errors import IntVitError

__all__ = ["run_beside", "Handover"]

T = TypeVar("T")


class ChildTraceback(Exception):
    """The formatted traceback of an exception raised in the child (the cause ``--debug`` shows)."""


class Handover:
    """One numpy array that this process makes and a child forked after it takes, without a copy.

    The buffer, ``capacity`` bytes of anonymous shared memory (pages are committed only as they are
    written), is mapped when the handover is made, before the fork, so both processes see it.
    ``put`` copies the array in and sends its shape and type down a pipe; ``get`` waits for them
    and returns a view of the buffer. Without a fork (``run_beside`` running the work here) the
    same calls hand the array over within this process.
    """

    def __init__(self, capacity: int):
        import multiprocessing

        if not isinstance(capacity, int) or capacity < 1:
            raise IntVitError(f"capacity must be a positive number of bytes, not {capacity!r}")
        self._buffer = mmap.mmap(-1, capacity)
        self._receive, self._send = multiprocessing.Pipe(duplex=False)

    def put(self, array: np.ndarray) -> None:
        """Copy ``array`` into the shared buffer and tell the taker its shape and type."""
        array = np.asarray(array)
        if array.nbytes > len(self._buffer):
            raise IntVitError(f"cannot hand over {array.nbytes:,} bytes: the buffer holds {len(self._buffer):,}")
        np.frombuffer(self._buffer, array.dtype, array.size).reshape(array.shape)[...] = array
        self._send.send((array.shape, array.dtype.str))

    def get(self) -> np.ndarray:
        """The array ``put`` handed over (waiting for it), a view of the shared buffer."""
        shape, dtype = self._receive.recv()
        return np.frombuffer(self._buffer, dtype, int(np.prod(shape))).reshape(shape)


def run_beside(work: Callable[[], T], meanwhile: Callable[[], object], what: str) -> T:
    """``work()`` in a forked child while ``meanwhile()`` runs here; ``work``'s result.

    An exception in ``work`` is raised here again, of the same type (``IntVitError`` with its
    message when it cannot be pickled), with the child's traceback as its cause. A child that
    dies without a result gives one line naming ``what`` and the exit status. Ctrl-C reaches both
    processes; the child then exits quietly and the parent sees ``KeyboardInterrupt``.
    """
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        meanwhile()
        return work()
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, send), name=f"intvit-{what}", daemon=True)
    child.start()
    send.close()
    received = False
    try:
        meanwhile()
        try:
            status, value, text = receive.recv()
            received = True
        except EOFError:
            child.join()
            raise IntVitError(f"{what} stopped: its process ended with exit status {child.exitcode}") from None
    finally:
        receive.close()
        if not received:                    # meanwhile failed or we were interrupted: the result is moot
            child.terminate()
        child.join()
    if status == "error":
        raise value from ChildTraceback(text)
    return value


def _child(work: Callable[[], object], send) -> None:
    import pickle

    try:
        message = ("ok", work(), "")
    except KeyboardInterrupt:
        return                                  # the parent got the same Ctrl-C
    except BaseException as exc:                # noqa: BLE001 - handed to the parent, which raises it
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
            message = ("error", exc, text)
        except Exception:                       # noqa: BLE001
            message = ("error", IntVitError(str(exc)), text)
    send.send(message)
    send.close()
