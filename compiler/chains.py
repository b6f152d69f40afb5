"""A matmul tile's element-wise chain as steps for ``compiler.pipeline.VectorPipe``, for ``compiler.codegen``.

The chain (requantisers, GELU, the Softmax of whole score rows, the residual ADD and, fused into
it, a LayerNorm of the ADD's output, ``docs/isa.md``, "The compiler's conventions") runs over the
tile's ACC words; each step is one vector instruction with the STOREs that follow it, and knows
its duration so that the pipe can place it among the next tile's MATMULs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from intvit.compiler.isa import REQUANT_WIDTHS, Instruction, Opcode
from intvit.compiler.layout import Place
from intvit.compiler.pipeline import Step
from intvit.quant.program import Op

__all__ = ["VECTOR_OPCODES", "Tile", "TileChains"]

VECTOR_OPCODES = {"requant": Opcode.REQUANT, "gelu": Opcode.GELU, "softmax": Opcode.SOFTMAX,
                  "layernorm": Opcode.LAYERNORM, "add": Opcode.ADD}


@dataclass(frozen=True)
class Tile:
    """A matmul tile: rows ``m0 ..`` of column blocks ``g0 ..``; ``x`` the MATMULs' ACC words and ``y``
    the residual operand's (``(base, keys)``), rows ``pitch`` words apart, the tile's first column
    at word ``col0`` of a row; ``slotted`` for the whole-row slots of ``TileSlots``."""

    serial: int
    g0: int
    m0: int
    rows: int
    cols: int
    cbs: int
    x: tuple
    y: tuple | None
    pitch: int
    col0: int
    slotted: bool


class TileChains:
    """The chain steps of ``codegen._Compiler``'s matmul tiles (a mixin: it uses the compiler's
    ``geo``, ``memory``, ``readers``, ``out``, ``cycles``, ``drain``, ``load_rows``, ``_store`` and
    ``_shape``)."""

    def _layernorm_after(self, add: Op):
        """``(layernorm, first row, rows, rows per image)``, the rows of each image, when a LayerNorm
        reads ``add``'s output (or one row of it through ``select_token``); else None. Other readers
        read the stored output as before."""
        source, first = add.output, None
        readers = self.readers.get(source, [])
        view = next((r for r in readers if r.kind == "select_token"), None)
        if view is not None:
            source, first = view.output, view.attrs["index"]
            readers = self.readers.get(source, [])
        ln = next((r for r in readers if r.kind == "layernorm"), None)
        if ln is None:
            return None
        rows = self._shape(add.output)[-2]
        return (ln, 0, rows, rows) if first is None else (ln, first, 1, rows)

    def _layernorm_rows(self, ln, m0: int, rows: int) -> list[tuple[int, int, int]] | None:
        """The rows of ``m0 .. m0 + rows`` (of all images' token rows) that the fused LayerNorm ``ln``
        normalises, as ``(row, rows, its output's row)`` runs; None when there are none."""
        _, first, count, period = ln
        runs: list[list[int]] = []
        for image in range(m0 // period, (m0 + rows - 1) // period + 1):
            lo = max(m0, image * period + first)
            hi = min(m0 + rows, image * period + first + count)
            if lo >= hi:
                continue
            out = image * count + lo - image * period - first
            if runs and runs[-1][0] + runs[-1][1] == lo and runs[-1][2] + runs[-1][1] == out:
                runs[-1][1] += hi - lo
            else:
                runs.append([lo, hi - lo, out])
        return [tuple(run) for run in runs] or None

    def _tile_loads(self, op: Op, chain: list[Op], t: Tile, out: Place, ln) -> None:
        """The residual ADD's other operand into ``y`` (the tile's columns) and, for a fused LayerNorm,
        the columns of its rows that earlier column groups stored."""
        add = chain[-1]
        for row0, count, _ in ln[1] if ln is not None and t.g0 > 0 else ():
            self.load_rows(t.y[1], add.output, out, row0, count, 0, t.g0 * self.geo.cols,
                           t.y[0] + (row0 - t.m0) * t.pitch, t.pitch)
        other = self._other_operand(op, chain)
        self.load_rows(t.y[1], other, self.memory.places[other].matrix(), t.m0, t.rows, t.g0 * self.geo.cols,
                       t.cols, t.y[0] + t.col0, t.pitch)

    @staticmethod
    def _other_operand(op: Op, chain: list[Op]) -> str:
        """The residual ADD's (``chain[-1]``) input that is not the chain's own result."""
        result = chain[-2].output if len(chain) > 1 else op.output
        return next(name for name in chain[-1].inputs if name != result)

    def _tile_steps(self, op: Op, chain: list[Op], params: dict, t: Tile, out: Place, final: str,
                    ln) -> list[Step]:
        """A matmul tile's chain of element-wise steps over its ACC words, with its STOREs.

        The first step reads the MATMULs' rows (it waits for the array to drain). In whole-row
        slots a residual ADD writes its result over its operand in ``y``, from where it is stored,
        and a fused LayerNorm then normalises those rows in place once that STORE has read them:
        only ``y`` is ever stored, so ``x`` may next take a LOAD without a SYNC (``TileSlots``)."""
        c_ = self.geo.cols
        x, y = t.x[0] + t.col0, t.y[0] + t.col0 if t.y else 0
        specs, region = [], t.x
        for step in chain:
            p_off, p_keys = params.get((f"{step.name}.params", t.g0 * c_, t.cbs * c_), (0, ()))
            fields = dict(width=REQUANT_WIDTHS.index(step.attrs["bits"]) if step.kind == "requant" else 0,
                          src=x, src_b=0, dst=x, rows=t.rows, length=t.cols, stride=t.pitch, param_addr=p_off)
            reads, writes = t.x[1] + p_keys, t.x[1]
            if step.kind == "add":
                first_is_other = step.inputs[0] == self._other_operand(op, chain)
                fields.update(src=y if first_is_other else x, src_b=x if first_is_other else y)
                reads = t.x[1] + t.y[1] + p_keys
                if t.slotted:
                    fields["dst"], region, writes = y, t.y, t.y[1]
            specs.append([VECTOR_OPCODES[step.kind], fields, reads, writes, 0, []])
        stores = [(region[1], store) for store in
                  self._store(final, out, t.m0, t.rows, t.g0 * c_, t.cols, region[0] + t.col0, t.pitch)]
        if not specs:                                    # a bare matmul: its STOREs alone
            return [Step(functools.partial(self._emit_stores, stores), 0, t.serial)]
        specs[-1][5].extend(stores)
        if ln is not None:
            norm, runs = ln[0][0], ln[1]
            n = self.geo.layernorm_width
            p_off, p_keys = params[(f"{norm.name}.params", 0, n)]
            wait = sum(self.cycles(Instruction(Opcode.STORE, **{k: v for k, v in store.items() if k != "writes"}))
                       for _, store in stores)
            for row0, count, out_row in runs:
                at = t.y[0] + (row0 - t.m0) * t.pitch
                norm_out = self._store(norm.output, self.memory.places[norm.output].matrix(), out_row, count, 0, n,
                                       at, t.pitch)
                specs.append([Opcode.LAYERNORM, dict(src=at, dst=at, rows=count, length=n, stride=t.pitch,
                                                     param_addr=p_off), t.y[1] + p_keys, t.y[1], wait,
                              [(t.y[1], store) for store in norm_out]])
        return [Step(functools.partial(self._emit_step, *spec), self.cycles(Instruction(spec[0], **spec[1])),
                     t.serial, wait=spec[4], drain=self.drain if i == 0 else 0) for i, spec in enumerate(specs)]

    def _emit_step(self, opcode: Opcode, fields: dict, reads: tuple, writes: tuple, wait: int, stores: list) -> None:
        self.out.emit(opcode, reads=reads, writes=writes, **fields)
        self._emit_stores(stores)

    def _emit_stores(self, stores: list) -> None:
        for keys, store in stores:
            self.out.emit(Opcode.STORE, reads=keys, **store)
