"""``compile_program``: an ``IntProgram`` and an accelerator config to an instruction stream and a memory image.

The compiler walks the program's ops in order and emits, per op, the LOADs, compute
instructions and STOREs of its tiles (``docs/isa.md``, "The compiler's conventions"):

* a ``matmul`` and the element-wise ops that consume only its result (requantisers, GELU,
  Softmax of whole score rows) run tile by tile in ACC: ``R`` rows of A, a group of column
  blocks of ``C``, K in chunks that fit half an A or B bank; A and B stay resident when the
  whole operand fits half its scratchpad, and are streamed (double-buffered) otherwise; a
  resident B region (a head's, or a column group's) is loaded into the other half while the
  previous one computes, in pieces emitted between that one's tiles; a tile's element-wise steps
  (``compiler.chains``) follow among the next tile's MATMULs (``compiler.pipeline.VectorPipe``);
* a residual ADD's output that a LayerNorm reads is normalised on the tiles that complete its
  rows, in whole-row ACC slots (``compiler.pipeline.TileSlots``), and the LayerNorm op emits nothing;
* ``layernorm``, ``add`` and any element-wise op left over run row block by row block in ACC;
* ``concat_token`` copies the class token through ACC; the other data-layout ops are views.

Every instruction declares the scratchpad chunks and external-memory blocks it reads and
writes; ``compiler.emit.Emitter`` turns read-after-write, write-after-read and write-after-write between
modules into dependency tokens (through a SYNC in the compute queue between load and store),
leaving out those that earlier tokens already order, so the three modules overlap as far as
the data and the in-order queues allow. Program order is dispatch order: what a module should
do early (the next B region's loads) is emitted early.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from intvit.compiler.isa import (
    ISA_VERSION, PARAM_RECORD_BYTES, REQUANT_WIDTHS, Geometry, Instruction, Memory, Opcode, encode_program,
    pack_params,
)
from intvit.compiler.emit import Buffers, Emitter
from intvit.compiler.layout import MemoryMap, Place, plan_memory
from intvit.compiler.chains import VECTOR_OPCODES, Tile, TileChains
from intvit.compiler.pipeline import TileSlots, VectorPipe
from intvit.compiler.verify import mark_overlaps
from intvit.quant.errors import IntVitError
from intvit.quant.layernorm import layernorm_divisors
from intvit.quant.program import IntProgram, Op

__all__ = ["CompiledProgram", "compile_program", "geometry_for"]

CHAIN_KINDS = ("requant", "gelu", "softmax")
ELEM_CODE = {1: 0, 4: 1, 16: 2}
FUSED_ADD_MIN_ROW_BYTES = 32
ADDRESS_SPACE = 1 << 32                                  # dram_addr is 32 bits


def geometry_for(program: IntProgram, config) -> Geometry:
    """The scratchpads and units of ``config`` (an ``AcceleratorConfig``) for ``program``'s model."""
    m, b = config.matmul, config.buffers
    if m.dataflow != "os":
        raise IntVitError(f"compile: matmul.dataflow {m.dataflow!r} is not supported; the compiled "
                          "accelerator's array is output stationary (\"os\")")
    return Geometry(
        rows=m.rows, cols=m.cols, a_depth=b.ifmap_bytes // m.rows, b_depth=b.weight_bytes // m.cols,
        acc_words=b.ofmap_bytes // (4 * m.cols), param_records=b.param_bytes // PARAM_RECORD_BYTES,
        lanes={unit: getattr(config, unit).lanes for unit in ("requant", "softmax", "gelu", "layernorm")},
        softmax_max_length=program.config.num_tokens, layernorm_width=program.config.embed_dim,
    )


@dataclass
class CompiledProgram:
    """An instruction stream, its memory image and the address manifest.

    Attributes
    ----------
    instructions : list of Instruction
    image : uint8 array
        External memory from address 0 up to the end of the input region (constants,
        parameter records, a zero input); activations and logits follow up to ``memory_bytes``.
    memory : MemoryMap
    geometry : Geometry
    manifest : dict
        JSON-ready description: regions, input, output, geometry, counts.
    origins : list of str
        The program op each instruction was emitted for (END: the last op's), for reports.
    """

    instructions: list[Instruction]
    image: np.ndarray
    memory: MemoryMap
    geometry: Geometry
    manifest: dict = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)

    @property
    def memory_bytes(self) -> int:
        return self.memory.size

    def stream(self) -> bytes:
        """The binary instruction stream (``isa.encode_program``)."""
        return encode_program(self.instructions)

    def input_region(self) -> tuple[int, int]:
        return self.memory.regions["input"]

    def output_place(self) -> Place:
        return self.memory.places[self.manifest["output"]["name"]].matrix()


class _Compiler(TileChains):
    def __init__(self, program: IntProgram, geometry: Geometry, cycles: Callable[[Instruction], int]):
        self.program = program
        self.geo = geometry
        self.cycles = cycles                             # an instruction's duration (sim.schedule)
        self.drain = cycles(Instruction(Opcode.MATMUL, k=1)) - 2
        self.out = Emitter()
        self.buffers = Buffers(geometry)
        self.consumers: dict[str, int] = {}
        self.readers: dict[str, list[Op]] = {}
        for op in program.ops:
            for name in op.inputs:
                self.consumers[name] = self.consumers.get(name, 0) + 1
                self.readers.setdefault(name, []).append(op)
        self.fused: set[str] = set()                     # LayerNorms run on a matmul's tiles
        self.params: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.plan: list[tuple[str, Op, list[Op]]] = []
        self.memory: MemoryMap | None = None
        self.param_cache: dict | None = None

    # ------------------------------------------------------------------ planning
    def prepare(self) -> None:
        """Group ops into jobs, build parameter blocks and the constants the stream reads."""
        ops = self.program.ops
        i = 0
        c = self.geo.cols
        while i < len(ops):
            op = ops[i]
            if op.kind == "matmul":
                chain = []
                while i + 1 < len(ops) and self._chains(op, chain, ops[i + 1]):
                    chain.append(ops[i + 1])
                    i += 1
                self.plan.append(("matmul", op, chain))
                weight = op.inputs[1]
                if weight in self.program.constants:
                    self.constants[weight] = np.ascontiguousarray(self.program.constants[weight].T)   # (N, K)
                n = self._matmul_n(op)
                width = -(-n // c) * c
                if len(op.inputs) > 2:
                    self.params[f"{op.name}.params.bias"] = pack_params(
                        width, bias=np.pad(self.program.constants[op.inputs[2]], (0, width - n)))
                for rq in chain:
                    if rq.kind == "requant":
                        self.params[f"{rq.name}.params"] = self._requant_params(rq, n, width)
                    elif rq.kind == "add":
                        self.params[f"{rq.name}.params"] = self._add_params(rq, width)
            elif op.kind in VECTOR_OPCODES:
                self.plan.append(("vector", op, []))
                width = self._shape(op.inputs[0])[-1]
                if op.kind == "requant":
                    self.params[f"{op.name}.params"] = self._requant_params(op, width, width)
                elif op.kind == "add":
                    self.params[f"{op.name}.params"] = self._add_params(op, width)
                elif op.kind == "layernorm":
                    self._check_layernorm(op, width)
                    gamma, beta, mult, shift = (self.program.constants[n] for n in op.inputs[1:])
                    self.params[f"{op.name}.params"] = pack_params(width, gamma=gamma, bias=beta,
                                                                   multiplier=mult, shift=shift)
                for name in op.inputs[1:2] if op.kind == "add" else ():
                    if name in self.program.constants:
                        self.constants[name] = self.program.constants[name]
            elif op.kind == "concat_token":
                self.plan.append(("concat", op, []))
                self.constants[op.inputs[1]] = self.program.constants[op.inputs[1]]
            elif op.kind in ("patchify", "split_heads", "merge_heads", "select_token"):
                pass                                     # views (compiler.layout)
            else:
                raise IntVitError(f"compile: op {op.name!r} of kind {op.kind!r} is not supported by the accelerator")
            i += 1

    def _chains(self, op: Op, chain: list[Op], nxt: Op) -> bool:
        """Whether ``nxt`` runs on the matmul's tiles in ACC, after ``chain``: it must consume only
        the previous step's result (read by nothing else): a requantiser, GELU or Softmax of it,
        or, last, the residual ADD of it and an activation of the same shape (``matmul`` decides
        whether that ADD runs on the tiles or after the matmul)."""
        prev = chain[-1] if chain else op
        if self.consumers.get(prev.output) != 1 or prev.output == self.program.output or \
                (chain and chain[-1].kind == "add"):
            return False
        if nxt.kind in CHAIN_KINDS:
            return nxt.inputs[0] == prev.output
        other = [name for name in nxt.inputs if name != prev.output]
        return nxt.kind == "add" and op.inputs[1] in self.program.constants and len(other) == 1 and \
            other[0] not in self.program.constants and self._shape(other[0]) == self._shape(prev.output)

    def _add_params(self, op: Op, width: int) -> np.ndarray:
        a = op.attrs
        return pack_params(width, multiplier=a["m_a"], multiplier_b=a["m_b"], shift=a["shift"])

    def _shape(self, name: str) -> tuple[int, ...]:
        if name in self.program.constants:
            return self.program.constants[name].shape
        return self.program.tensor_shapes(1)[name][1:]

    def _matmul_n(self, op: Op) -> int:
        b = self._shape(op.inputs[1])
        return b[-2] if op.attrs.get("transpose_b") else b[-1]

    def _requant_params(self, op: Op, n: int, width: int) -> np.ndarray:
        mult, shift = (np.broadcast_to(self.program.constants[name], (n,)) for name in op.inputs[1:3])
        return pack_params(width, multiplier=np.pad(mult, (0, width - n)), shift=np.pad(shift, (0, width - n)))

    def _check_layernorm(self, op: Op, width: int) -> None:
        if width != self.geo.layernorm_width:
            raise IntVitError(f"compile: layernorm {op.name!r} has rows of {width}, the LayerNorm unit is built "
                              f"for {self.geo.layernorm_width}")
        divisors = tuple(op.attrs[k] for k in ("mean_multiplier", "mean_shift", "var_multiplier", "var_shift"))
        if divisors != layernorm_divisors(width):
            raise IntVitError(f"compile: layernorm {op.name!r} divisors {divisors} differ from the unit's "
                              f"{layernorm_divisors(width)}")

    # ------------------------------------------------------------------ emission helpers
    def load(self, memory: Memory, keys, dram: tuple, addr: int, *, elem: int = 1, z: int = 1,
             z_stride: int = 0, y: int = 1, y_stride: int = 0, x: int, sp_addr: int = 0, sp_bank: int = 0,
             sp_stride: int = 0, transpose: int = 0) -> None:
        self.out.emit(Opcode.LOAD, reads=dram, writes=keys, mem=memory, transpose=transpose, elem=ELEM_CODE[elem],
                      dram_addr=addr, x_count=x, y_count=y, z_count=z, y_stride=y_stride, z_stride=z_stride,
                      sp_addr=sp_addr, sp_bank=sp_bank, sp_stride=sp_stride)

    def load_rows(self, keys, name: str, place: Place, row0: int, rows: int, col0: int, cols: int,
                  acc_addr: int, words: int) -> None:
        """``rows`` rows of a matrix place into ACC words from ``acc_addr``, ``words`` per row (a LOAD
        per image the rows cross, ``Place.runs``)."""
        for addr, first, count in place.runs(row0, rows):
            addr += col0 * place.elem
            self.load(Memory.ACC, keys, self.dram(name, addr, count, place.strides[0], cols * place.elem), addr,
                      elem=place.elem, z=count, z_stride=place.strides[0], x=cols, sp_addr=acc_addr + first * words,
                      sp_stride=words)

    def store_rows(self, keys, name: str, place: Place, row0: int, rows: int, col0: int, cols: int,
                   acc_addr: int, words: int) -> None:
        for store in self._store(name, place, row0, rows, col0, cols, acc_addr, words):
            self.out.emit(Opcode.STORE, reads=keys, **store)

    def _store(self, name: str, place: Place, row0: int, rows: int, col0: int, cols: int, acc_addr: int,
               words: int) -> list[dict]:
        """The fields (and ``writes`` keys) of the STOREs of ``rows`` rows from ACC words ``words`` apart:
        one per image the rows cross."""
        stores = []
        for addr, first, count in place.runs(row0, rows):
            addr += col0 * place.elem
            stores.append(dict(writes=self.dram(name, addr, count, place.strides[0], cols * place.elem),
                               mem=Memory.ACC, elem=ELEM_CODE[place.elem], dram_addr=addr, x_count=cols, y_count=1,
                               z_count=count, z_stride=place.strides[0], sp_addr=acc_addr + first * words,
                               sp_stride=words))
        return stores

    def dram(self, name: str, addr: int, rows: int, stride: int, row_bytes: int) -> tuple:
        """Hazard keys of ``rows`` rows of ``row_bytes`` in external memory, ``stride`` apart from ``addr``.

        A key is a block of ``R`` rows of the region the tensor (or its view) lives in, so the next
        op's first row block may load while this op still stores its last.
        """
        root = self.memory.roots.get(name, name)
        base, size = self.memory.regions[root]
        place = self.memory.places.get(root)
        row = place.strides[-2] if isinstance(place, Place) and len(place.shape) >= 2 else size
        block = self.geo.rows * row
        last = addr + (rows - 1) * stride + row_bytes - 1
        return tuple(("dram", root, b) for b in range((addr - base) // block, (last - base) // block + 1))

    def params_for(self, op: Op, blocks: list[tuple[str, int, int]]) -> dict:
        """Records ``(block, first, count)`` in a PARAM half: ``{key: (offset, resource keys)}``.

        The set loaded last is reused when it holds them all; otherwise they load into the next half.
        """
        if not blocks:
            return {}
        if self.param_cache and all(key in self.param_cache for key in blocks):
            return self.param_cache
        total = sum(count for _, _, count in blocks)
        if total > self.buffers.half[Memory.PARAM]:
            raise IntVitError(f"compile: {op.kind} {op.name!r}: {total} parameter records do not fit half of PARAM "
                              f"({self.buffers.half[Memory.PARAM]} records)")
        base, keys = self.buffers.take(Memory.PARAM)
        cache, offset = {}, base
        for block, first, count in blocks:
            addr = self.memory.regions[block][0] + first * PARAM_RECORD_BYTES
            self.load(Memory.PARAM, keys, (), addr, elem=PARAM_RECORD_BYTES, x=count, sp_addr=offset)
            cache[(block, first, count)] = (offset, keys)
            offset += count
        self.param_cache = cache
        return cache

    # ------------------------------------------------------------------ jobs
    def run(self) -> None:
        for kind, op, chain in self.plan:
            if op.name in self.fused:
                continue
            self.out.current = op.name
            try:
                {"matmul": self.matmul, "vector": self.vector, "concat": self.concat}[kind](op, chain)
            except IntVitError as exc:
                if str(exc).startswith("compile:"):
                    raise
                raise IntVitError(f"compile: {op.kind} {op.name!r}: {exc}") from None

    def concat(self, op: Op, chain) -> None:
        """The class token, loaded once, stored as row 0 of each image's token rows."""
        token, out = op.inputs[1], op.output
        images, n, width = self.memory.places[out].shape
        place = self.memory.places[out].matrix()
        words = -(-width // self.geo.cols)
        base, keys = self.buffers.ring(words)
        src = self.memory.places[token].matrix()
        self.load_rows(keys, token, src, 0, 1, 0, width, base, words)
        for image in range(images):
            self.store_rows(keys, out, place, image * n, 1, 0, width, base, words)

    def vector(self, op: Op, chain) -> None:
        geo = self.geo
        x = self.memory.places[op.inputs[0]].matrix()
        out = self.memory.places[op.output].matrix()
        rows, length = x.shape
        words = -(-length // geo.cols)
        operands = 2 if op.kind == "add" else 1
        per_tile = self.buffers.half[Memory.ACC] // (words * operands)
        if per_tile < 1:
            raise IntVitError(f"compile: {op.kind} {op.name!r}: a row of {length} elements needs {words * operands} "
                              f"ACC words, half of ACC holds {self.buffers.half[Memory.ACC]}")
        per_tile = min(per_tile, geo.rows)              # row blocks of R rows pipeline with the next op's loads
        if op.kind == "softmax" and length > geo.softmax_max_length:
            raise IntVitError(f"compile: softmax {op.name!r}: rows of {length} exceed the unit's "
                              f"{geo.softmax_max_length}")
        has_params = op.kind in ("requant", "add", "layernorm")
        param_addr, param_keys = self.params_for(op, [(f"{op.name}.params", 0, length)]).get(
            (f"{op.name}.params", 0, length), (0, ())) if has_params else (0, ())
        for row0 in range(0, rows, per_tile):
            n = min(per_tile, rows - row0)
            base, keys = self.buffers.ring(n * words * operands)
            self.load_rows(keys, op.inputs[0], x, row0, n, 0, length, base, words)
            src_b = base + n * words
            if op.kind == "add":
                b = self.memory.places[op.inputs[1]].matrix()
                if op.inputs[1] in self.program.constants:       # one image's rows (the position embedding)
                    b = b.repeat(rows // b.shape[0])
                self.load_rows(keys, op.inputs[1], b, row0, n, 0, length, src_b, words)
            self.out.emit(VECTOR_OPCODES[op.kind], reads=keys + param_keys, writes=keys,
                          width=REQUANT_WIDTHS.index(op.attrs["bits"]) if op.kind == "requant" else 0,
                          src=base, src_b=src_b if op.kind == "add" else 0, dst=base, rows=n, length=length,
                          stride=words, param_addr=param_addr)
            self.store_rows(keys, op.output, out, row0, n, 0, length, base, words)

    def matmul(self, op: Op, chain: list[Op]) -> None:
        geo, mem = self.geo, self.memory
        r_, c_ = geo.rows, geo.cols
        a_all = mem.places[op.inputs[0]]
        b_all = mem.places[op.inputs[1]]
        transpose_b = bool(op.attrs.get("transpose_b"))
        heads = a_all.count                               # images x heads for attention, else 1
        m, k = a_all.matrix().shape
        n = self._matmul_n(op)
        n_rb, n_cb = -(-m // r_), -(-n // c_)
        half_a, half_b, half_acc = (self.buffers.half[x] for x in (Memory.A, Memory.B, Memory.ACC))
        k_chunk = min(k, half_a, half_b)
        n_kc = -(-k // k_chunk)
        # A residual ADD runs on the tiles, its other operand's tile loaded beside each, when K is
        # one chunk (chunked operands keep the load module busy already) and the tile rows are
        # long enough to load well (below); otherwise after the matmul, on whole rows.
        deferred = None
        if chain and chain[-1].kind == "add" and n_kc > 1:
            chain, deferred = chain[:-1], chain[-1]
        blocks = ([f"{op.name}.params.bias"] if len(op.inputs) > 2 else []) + \
                 [f"{rq.name}.params" for rq in chain if rq.kind in ("requant", "add")]
        group = min(half_acc // r_, self.buffers.half[Memory.PARAM] // (c_ * max(len(blocks), 1)))
        # A LayerNorm of the residual ADD's output runs on the tiles that complete rows when two
        # ACC slots of whole rows per tile, for this tile and the previous, fit, and its records
        # fit beside the others in half of PARAM.
        ln = self._layernorm_after(chain[-1]) if chain and chain[-1].kind == "add" else None
        slots = None
        if ln is not None:
            ln_group = (self.buffers.half[Memory.PARAM] - n) // (c_ * len(blocks))
            slots = TileSlots(geo.acc_words, self.buffers.chunk, r_ * n_cb)
            if ln_group < 1 or len(slots) < 4:
                ln = slots = None
            else:
                group = min(group, ln_group)
        if group < 1:
            raise IntVitError(f"compile: matmul {op.name!r}: one {r_}x{c_} tile does not fit half of ACC "
                              f"({half_acc} words) and PARAM")
        if any(rq.kind == "softmax" for rq in chain):
            if n_cb > group:
                raise IntVitError(f"compile: softmax {chain[-1].name!r}: {r_} rows of {n} scores need "
                                  f"{r_ * n_cb} ACC words, half of ACC holds {half_acc}")
            if n > geo.softmax_max_length:
                raise IntVitError(f"compile: softmax {chain[-1].name!r}: rows of {n} exceed the unit's "
                                  f"{geo.softmax_max_length}")
        # Row blocks outer re-reads B once per row block unless all of B stays on chip; column
        # groups outer (a group's B blocks resident while the row blocks pass) re-reads A once
        # per group unless all of A stays on chip. Take the cheaper; Softmax needs whole rows.
        b_whole = n_cb * k <= half_b
        # Whole rows for a fused LayerNorm spread it over every tile: worth both halves of B.
        b_both = ln is not None and not b_whole and group >= n_cb and n_cb * k <= geo.b_depth
        cols_outer = False
        if not b_whole and not b_both and n_kc == 1 and not any(step.kind == "softmax" for step in chain):
            cols_group = min(group, half_b // k)
            a_reads = 1 if n_rb * k <= geo.a_depth else -(-n_cb // cols_group)
            # Bytes of A re-read against bytes of B re-read (per K).
            cols_outer = a_reads * m < n_rb * n
            if cols_outer:
                group = cols_group
        n_groups = -(-n_cb // group)
        group = -(-n_cb // n_groups)                     # even groups
        groups = range(0, n_cb, group)
        if chain and chain[-1].kind == "add" and min(group * c_, n) < FUSED_ADD_MIN_ROW_BYTES:
            chain, deferred = chain[:-1], chain[-1]
            blocks.remove(f"{deferred.name}.params")
            ln = slots = None
        if ln is not None:
            self.fused.add(ln[0].name)
        final = chain[-1].output if chain else op.output
        out_all = mem.places[final]
        # Resident blocks start on hazard-chunk boundaries where they still fit, so that loading
        # one never waits for the array to finish reading its neighbour.
        a_pitch = self.buffers.pitch(Memory.A, k, n_rb, half_a if n_rb * k <= half_a else geo.a_depth)
        b_pitch = self.buffers.pitch(Memory.B, k, n_cb if b_whole or b_both else group,
                                     geo.b_depth if b_both else half_b)
        # An epoch computes with one resident B region: a head (all of B on chip) or a column
        # group of a head (cols_outer). The next epoch's B loads into the other half while this
        # one computes, its blocks emitted one by one between this epoch's tiles.
        resident_b = b_whole or b_both or cols_outer
        epochs = [(h, [(g0, rb) for rb in range(n_rb)]) for h in range(heads) for g0 in groups] if cols_outer else \
            [(h, [(g0, rb) for rb in range(n_rb) for g0 in groups]) for h in range(heads)]
        staged = None
        pipe, serial, ring_tile, loads = VectorPipe(), -1, None, None
        for e, (h, order) in enumerate(epochs):
            if e == 0 or epochs[e - 1][0] != h:
                a = a_all.matrix(h)
                out = out_all.matrix(h)
                a_loaded: dict = {}
                a_region = self.buffers.take(Memory.A) if n_rb * k <= half_a else \
                    self.buffers.whole(Memory.A) if cols_outer and n_rb * k <= geo.a_depth else None
            b = b_all.matrix(h)
            b_region, b_loaded = staged or ((self.buffers.whole(Memory.B) if b_both else self.buffers.take(Memory.B),
                                             {}) if resident_b else (None, {}))
            staged, prefetch = None, {}
            if resident_b and e + 1 < len(epochs):
                staged = (self.buffers.take(Memory.B), {})
                prefetch = self._prefetch_b(op, epochs[e + 1], staged, len(order), b_all, transpose_b, n, k,
                                            k_chunk, cols_outer, group, b_pitch)
            for tile, (g0, rb) in enumerate(order):
                serial += 1
                pipe.flush(keep=serial - 1)              # the tile before the previous: its slots may be reused
                b_first = g0 if cols_outer else 0
                m0, rows = rb * r_, min(r_, m - rb * r_)
                cbs = min(group, n_cb - g0)
                cols = min(cbs * c_, n - g0 * c_)
                ln_rows = self._layernorm_rows(ln, m0, rows) if ln is not None and g0 == groups[-1] else None
                params = self.params_for(op, [(blk, g0 * c_, cbs * c_) for blk in blocks] +
                                         ([(f"{ln[0].name}.params", 0, n)] if ln_rows else []))
                if slots is not None:                    # whole-row slots: this tile's columns at word g0
                    x, y = slots.take(serial)
                    pitch, col0 = n_cb, g0
                else:
                    x, y = self.buffers.ring(r_ * cbs), None
                    pitch, col0 = cbs, 0
                    if ring_tile is not None and ring_tile[0] < x[0] + r_ * cbs and x[0] < ring_tile[1]:
                        pipe.flush()                     # this tile overwrites the previous one's
                    ring_tile = (x[0], x[0] + r_ * cbs)
                for kc in range(n_kc):
                    k0, kl = kc * k_chunk, min(k_chunk, k - kc * k_chunk)
                    a_off, a_keys = self._operand(a_loaded, (rb, kc), a_region, rb * a_pitch + k0, kl, Memory.A,
                                                  lambda off, keys: self._load_a(op, a, m0, rows, k0, kl, off, keys))
                    for cb in range(g0, g0 + cbs):
                        n0, cv = cb * c_, min(c_, n - cb * c_)
                        b_off, b_keys = self._operand(
                            b_loaded, (kc, cb), b_region, (cb - b_first) * b_pitch + k0, kl,
                            Memory.B,
                            lambda off, keys: self._load_b(op, b, transpose_b, n0, cv, k0, kl, off, keys))
                        bias_key = (f"{op.name}.params.bias", g0 * c_, cbs * c_)
                        bias = kc == 0 and bias_key in params
                        p_off, p_keys = params[bias_key] if bias else (0, ())
                        self.out.emit(Opcode.MATMUL, reads=a_keys + b_keys + p_keys, writes=x[1],
                                      accumulate=int(kc > 0), bias=int(bias), a_addr=a_off, b_addr=b_off, k=kl,
                                      acc_addr=x[0] + col0 + cb - g0, acc_stride=pitch,
                                      param_addr=p_off + (cb - g0) * c_)
                        if loads is not None:            # behind this tile's operands in the load queue
                            loads = loads()
                        pipe.matmul(kl)
                # The tile's element-wise steps and STOREs follow among the next tile's MATMULs, so
                # that the array computes that tile while the vector units work on this one. Not when
                # K streams in chunks (the operand loads bound the tile; measured 6 % slower on
                # DeiT-Tiny with small scratchpads), nor for a residual ADD without whole-row slots
                # (its operand's ACC tile comes from the ring on the way).
                adds = bool(chain) and chain[-1].kind == "add"
                fused = ln_rows and (ln, ln_rows)
                if n_kc > 1 or (adds and slots is None):
                    pipe.flush()
                    if adds:
                        y = self.buffers.ring(r_ * cbs)
                    t = Tile(serial, g0, m0, rows, cols, cbs, x, y, pitch, col0, False)
                    if adds:
                        self._tile_loads(op, chain, t, out, None)
                    for step in self._tile_steps(op, chain, params, t, out, final, None):
                        step.emit()
                else:
                    t = Tile(serial, g0, m0, rows, cols, cbs, x, y, pitch, col0, slots is not None)
                    if adds:                             # emitted after the next tile's first MATMUL
                        loads = functools.partial(self._tile_loads, op, chain, t, out, fused)
                    pipe.queue(self._tile_steps(op, chain, params, t, out, final, fused))
                for load in prefetch.get(tile, ()):
                    load()
        if loads is not None:
            loads()
        pipe.flush()
        if deferred is not None:
            self.out.current = deferred.name
            self.vector(deferred, [])

    def _prefetch_b(self, op: Op, epoch, staged, steps: int, b_all, transpose_b: bool, n: int, k: int,
                    k_chunk: int, cols_outer: bool, group: int, b_pitch: int) -> dict[int, list]:
        """The next epoch's B blocks as loads into ``staged``, keyed by the tile of this epoch after
        which each is emitted. Blocks are cut along K into about one piece per tile and spread
        evenly, so that each tile's share fits beside its own A load on the load module."""
        c_ = self.geo.cols
        h, order = epoch
        first = order[0][0] if cols_outer else 0
        n_cb = -(-n // c_)
        columns = range(first, min(first + group, n_cb)) if cols_outer else range(n_cb)
        b = b_all.matrix(h)
        region, loaded = staged
        blocks = [(kc, cb) for kc in range(-(-k // k_chunk)) for cb in columns]
        pieces = -(-steps // len(blocks))
        plan: dict[int, list] = {}
        for j, (kc, cb) in enumerate(blocks):
            k0, kl = kc * k_chunk, min(k_chunk, k - kc * k_chunk)
            n0, cv = cb * c_, min(c_, n - cb * c_)
            base = region[0] + (cb - first) * b_pitch + k0
            loaded[(kc, cb)] = (base, self.buffers.span(Memory.B, base, kl))
            size = -(-kl // pieces)
            for p, lo in enumerate(range(0, kl, size)):
                part = min(size, kl - lo)
                keys = self.buffers.span(Memory.B, base + lo, part)
                plan.setdefault((j * pieces + p) * steps // (len(blocks) * pieces), []).append(
                    lambda n0=n0, cv=cv, lo=k0 + lo, part=part, at=base + lo, keys=keys:
                    self._load_b(op, b, transpose_b, n0, cv, lo, part, at, keys))
        return plan

    def _operand(self, loaded: dict, key, resident, offset: int, length: int, memory: Memory,
                 load) -> tuple[int, tuple]:
        """Where operand block ``key`` (``length`` bytes a bank) sits: resident blocks load once, at
        ``offset`` into the resident region, streamed ones into a fresh half."""
        if key in loaded:
            return loaded[key]
        if resident is not None:
            base = resident[0] + offset
            where = (base, self.buffers.span(memory, base, length))
        else:
            loaded.clear()                               # a streamed half holds one block at a time
            where = self.buffers.take(memory)
        load(*where)
        loaded[key] = where
        return where

    def _load_a(self, op: Op, a: Place, m0: int, rows: int, k0: int, kl: int, offset: int, keys) -> None:
        for addr, first, count in a.runs(m0, rows):     # a row per bank
            addr += k0
            self.load(Memory.A, keys, self.dram(op.inputs[0], addr, count, a.strides[0], kl), addr, z=count,
                      z_stride=a.strides[0], x=kl, sp_addr=offset, sp_bank=first)

    def _load_b(self, op: Op, b: Place, transpose_b: bool, n0: int, cv: int, k0: int, kl: int, offset: int,
                keys) -> None:
        name = op.inputs[1]
        if name in self.program.constants or transpose_b:   # (N, K) rows: a row per bank
            addr = b.addr + n0 * b.strides[0] + k0
            self.load(Memory.B, keys, self.dram(name, addr, cv, b.strides[0], kl), addr, z=cv,
                      z_stride=b.strides[0], x=kl, sp_addr=offset)
        else:                                               # (K, N) rows spread over the banks
            addr = b.addr + k0 * b.strides[0] + n0
            self.load(Memory.B, keys, self.dram(name, addr, kl, b.strides[0], cv), addr, z=kl,
                      z_stride=b.strides[0], x=cv, sp_addr=offset, transpose=1)


def compile_program(program: IntProgram, config, batch: int = 1) -> CompiledProgram:
    """Compile ``program`` for the accelerator ``config`` (an ``AcceleratorConfig``) and ``batch`` images.

    The images' token rows are stacked, so that each weight tile, loaded once, streams against
    the rows of every image; attention runs per image and head (``docs/isa.md``, "Batches").
    Batch 1 is the same program as ever.

    Raises
    ------
    IntVitError
        One line naming the op and the sizes when the program does not fit the config, or the
        batch and the limit when the batch does not fit the 32-bit address space.
    """
    from intvit.sim.schedule import instruction_cycles    # not at import: rtl.verilog imports geometry_for

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise IntVitError(f"compile: batch must be a positive integer, not {batch!r}")
    geometry = geometry_for(program, config)
    compiler = _Compiler(program, geometry, functools.partial(instruction_cycles, config=config))
    compiler.prepare()
    # A chain's intermediates stay in ACC, except the input of a residual ADD (``matmul`` may run it after).
    internal = {step.output for _, op, chain in compiler.plan for step in [op, *chain][:-1]
                if chain[-1].kind != "add" or step is not ([op, *chain][-2])}
    plan = functools.partial(plan_memory, program, compiler.constants, compiler.params, internal)
    compiler.memory, contents = plan(batch)
    if compiler.memory.size > ADDRESS_SPACE:
        # Regions grow by a batch's images, ALIGN-rounded: the largest batch that fits, from the first two.
        one, two = plan(1)[0].size, plan(2)[0].size
        fits = (ADDRESS_SPACE - (2 * one - two)) // (two - one)
        while fits > 0 and plan(fits)[0].size > ADDRESS_SPACE:
            fits -= 1
        raise IntVitError(f"compile: batch {batch}: the program's memory map takes {compiler.memory.size:,} bytes, "
                          f"beyond the 32-bit address space ({ADDRESS_SPACE:,} bytes); at most batch {fits} fits")
    compiler.run()
    instructions = mark_overlaps(compiler.out.finish(), geometry)
    memory = compiler.memory
    image = np.zeros(memory.image_bytes, dtype=np.uint8)
    for name, data in contents.items():
        addr, size = memory.regions[name]
        image[addr:addr + size] = np.frombuffer(data, dtype=np.uint8)
    out = memory.places[program.output].matrix()
    manifest = {
        "format": "intvit-compiled", "isa_version": ISA_VERSION, "model": program.config.name,
        "instructions": len(instructions), "image_bytes": memory.image_bytes, "memory_bytes": memory.size,
        "batch": batch,
        "input": {"addr": memory.regions["input"][0], "shape": list(memory.places["input"].shape[1:]), "dtype": "int8",
                  "image_shape": list(program.tensor_shapes(1)["input"][1:]), "patch": memory.input_patch},
        "output": {"name": program.output, "addr": out.addr, "shape": list(out.shape),
                   "dtype": "int32" if out.elem == 4 else "int8"},
        "geometry": {k: (dict(v) if isinstance(v, dict) else v) for k, v in geometry.__dict__.items()},
        "regions": {name: {"addr": addr, "bytes": size} for name, (addr, size) in memory.regions.items()},
    }
    return CompiledProgram(instructions, image, memory, geometry, manifest, compiler.out.origins)
