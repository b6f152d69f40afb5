"""Placing a matmul tile's element-wise steps among the next tile's MATMULs, for ``compiler.codegen``.

The compute module issues in program order (``docs/isa.md``, "Execution rules" 3): a vector
instruction placed before the vector units are free holds back every MATMUL behind it, and one
placed after them leaves the units idle. ``VectorPipe`` keeps a rough clock of the array (a
MATMUL streams ``k`` beats after its predecessor) and of the vector units (each step's exact
duration from the cycle model), and emits each queued step right after the MATMUL during which
it is expected to be able to start. ``TileSlots`` hands out the ACC slots of a matmul whose tiles
end in a residual ADD (and a fused LayerNorm) so that no LOAD ever writes words a STORE still
has to read, which would cost a SYNC of the whole compute module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from intvit.compiler.isa import Memory

__all__ = ["Step", "TileSlots", "VectorPipe"]


@dataclass
class Step:
    """One compute instruction of a tile's chain (and the STOREs that follow it).

    Attributes
    ----------
    emit : callable
        Emits the instruction (and its STOREs) when called.
    cycles : int
        Its duration by the cycle model.
    tile : int
        The tile it belongs to.
    wait : int
        Cycles after the previous step's end before it can start (a STORE it must let finish).
    drain : int
        For a tile's first step: cycles its MATMULs' last rows take to drain after their last
        beat; 0 otherwise. It reads those rows, so unless it follows two later MATMULs (the array
        holds two at most: the second's start proves the tile's rows delivered, and
        ``verify.mark_overlaps`` sets its ``overlap``), it waits for the array to be idle.
    """

    emit: Callable[[], None]
    cycles: int
    tile: int
    wait: int = 0
    drain: int = 0


class VectorPipe:
    """Queued steps of finished tiles, emitted between later MATMULs where they fit (module docstring)."""

    def __init__(self):
        self.array = 0                 # estimated cycle the array takes the next MATMUL's first beat
        self.issued = 0                # ... and the last emitted MATMUL's: a step behind it starts no earlier
        self.vector = 0                # estimated cycle the vector units finish the last emitted step
        self.matmuls = 0               # MATMULs emitted
        self.steps: deque[tuple[Step, int, int]] = deque()    # (step, ready cycle, MATMULs to follow)

    def matmul(self, beats: int) -> None:
        """A MATMUL of ``beats`` beats was emitted: emit the steps that can start before it ends."""
        self.issued = self.array
        self.array += beats
        self.matmuls += 1
        while self.steps and self.steps[0][2] <= self.matmuls and self._start(*self.steps[0][:2]) <= self.array:
            self._emit()

    def queue(self, steps: list[Step]) -> None:
        """A tile's chain, ready once the MATMULs emitted so far have drained."""
        for step in steps:
            self.steps.append((step, self.array + step.drain, self.matmuls + 2) if step.drain else (step, 0, 0))

    def flush(self, keep: int | None = None) -> None:
        """Emit every queued step, or those of tiles other than ``keep`` (the oldest first)."""
        while self.steps and self.steps[0][0].tile != keep:
            self._emit()

    def _start(self, step: Step, ready: int) -> int:
        return max(self.vector + step.wait, ready, self.issued)

    def _emit(self) -> None:
        step, ready, after = self.steps.popleft()
        start = self._start(step, ready)
        if after > self.matmuls:                         # it waits for the array to be idle
            start = max(start, self.array + step.drain)
        step.emit()
        self.vector = start + step.cycles
        self.array = max(self.array, start)              # later MATMULs issue after it


class TileSlots:
    """ACC slots of ``words`` each (chunk-aligned), two per tile: ``x`` for the MATMULs and ``y`` for
    the LOADed operand (and the results that are stored).

    A slot a STORE read is *dirty*: reused as a LOAD target it would need a SYNC (load and store
    meet only through compute), reused as a MATMUL target it costs just a token from the store.
    ``y`` takes the least recently used clean slot and ``x`` the least recently used of the
    others, dirty first; the previous tile's slots are never taken (its steps may still follow).
    """

    def __init__(self, acc_words: int, chunk: int, words: int):
        size = -(-words // chunk) * chunk
        self.bases = [i * size for i in range(acc_words // size)]
        self.chunk = chunk
        self.words = words
        self.used = dict.fromkeys(range(len(self.bases)), -1)
        self.dirty = dict.fromkeys(range(len(self.bases)), True)
        self.previous: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.bases)

    def take(self, tile: int) -> tuple[tuple[int, tuple], tuple[int, tuple]]:
        """``(x, y)`` of ``tile``, each ``(base word, resource keys)``."""
        free = sorted((s for s in self.used if s not in self.previous), key=lambda s: self.used[s])
        y = next((s for s in free if not self.dirty[s]), free[0])
        x = next((s for s in free if s != y and self.dirty[s]), next(s for s in free if s != y))
        self.dirty[x], self.dirty[y] = False, True
        self.used[x] = self.used[y] = tile
        self.previous = (x, y)
        return self._place(x), self._place(y)

    def _place(self, slot: int) -> tuple[int, tuple]:
        base = self.bases[slot]
        return base, tuple((Memory.ACC, c) for c in range(base // self.chunk, (base + self.words - 1) // self.chunk + 1))
