"""Where every tensor of a compiled program lives in external memory, and the memory image.

Each tensor of the integer program, for a batch of ``B`` images, is a ``Place``: a base byte
address, a shape (the batch dimension first), byte strides and an element size, like a numpy
view. Token tensors ``(B, N, D)`` are dense, so that their ``B*N`` rows form one matrix that a
weight streams against; head tensors ``(B, H, N, d)`` are ``B*H`` matrices, one per image and
head (``docs/isa.md``, "Batches"). Tensors that ops only re-index are
views of another tensor's region, so they cost no instruction: ``split_heads`` outputs are
column windows of the QKV tensor, the input of ``merge_heads`` is a column window of the
context, the input of ``concat_token`` is rows 1.. of each image's token rows and ``select_token``
a row of each image. The input region holds each image as the patch rows that ``patchify``
makes (the host rearranges it, ``MemoryMap.input_bytes``), so the patch embedding loads
contiguous rows.

The memory image is laid out as: constants (INT8 weights transposed to ``(N, K)``, so
that a block of B is one contiguous run; the position embedding and class token), parameter-record blocks, the input
(as patch rows), then every activation and the logits. Regions are aligned to ``ALIGN`` bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from intvit.quant.errors import IntVitError
from intvit.quant.executor import patch_rows
from intvit.quant.program import IntProgram

__all__ = ["ALIGN", "Place", "MemoryMap", "plan_memory"]

ALIGN = 64


def _align(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


@dataclass(frozen=True)
class Place:
    """A strided window of external memory: element ``idx`` is at ``addr + sum(idx * strides)``.

    Attributes
    ----------
    addr : int
    shape, strides : tuple of int
        Logical shape and byte strides.
    elem : int
        Bytes per element: 1 (INT8) or 4 (wider integers, stored as INT32).
    period, image_stride : int
        For a matrix whose rows come in images (``period > 0``): row ``r`` is at
        ``addr + (r // period) * image_stride + (r % period) * strides[0]``, e.g. the patch rows
        of each image's token rows (a gap for the class token), or a constant repeated for every
        image (``image_stride`` 0). ``runs`` cuts a block of rows into DMA-able pieces.
    """

    addr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    elem: int
    period: int = 0
    image_stride: int = 0

    @property
    def count(self) -> int:
        """How many matrices ``matrix`` indexes: ``B*H`` for a head tensor ``(B, H, N, d)``, else 1."""
        return self.shape[0] * self.shape[1] if len(self.shape) == 4 else 1

    def matrix(self, index: int = 0) -> Place:
        """A 2-D ``(rows, cols)`` matrix: matrix ``index`` (image-major) of a head tensor ``(B, H, rows,
        cols)``; the ``B*N`` rows of a token tensor ``(B, N, cols)`` (with a ``period`` unless its
        images are back to back); a 1-D place as one row."""
        if len(self.shape) == 2:
            return self
        if len(self.shape) == 1:
            return Place(self.addr, (1, self.shape[0]), (self.shape[0] * self.elem, self.strides[0]), self.elem)
        if len(self.shape) == 3:
            images, n, cols = self.shape
            shape = (images * n, cols)
            if images == 1 or self.strides[0] == n * self.strides[1]:
                return Place(self.addr, shape, self.strides[1:], self.elem)
            return Place(self.addr, shape, self.strides[1:], self.elem, n, self.strides[0])
        image, head = divmod(index, self.shape[1])
        return Place(self.addr + image * self.strides[0] + head * self.strides[1], self.shape[2:], self.strides[2:],
                     self.elem)

    def repeat(self, images: int) -> Place:
        """This matrix (a constant of one image's rows) as the rows of ``images`` images."""
        rows, cols = self.shape
        return Place(self.addr, (images * rows, cols), self.strides, self.elem, rows, 0) if images > 1 else self

    def runs(self, row0: int, rows: int) -> list[tuple[int, int, int]]:
        """Rows ``row0 .. row0 + rows`` of a matrix as ``(address, first row - row0, rows)`` pieces,
        each ``strides[0]`` bytes a row: one piece unless the rows cross from one image to the next."""
        if not self.period:
            return [(self.addr + row0 * self.strides[0], 0, rows)]
        pieces, row = [], row0
        while row < row0 + rows:
            image, local = divmod(row, self.period)
            count = min(self.period - local, row0 + rows - row)
            pieces.append((self.addr + image * self.image_stride + local * self.strides[0], row - row0, count))
            row += count
        return pieces


def _dense(addr: int, shape: tuple[int, ...], elem: int) -> Place:
    strides = [elem] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return Place(addr, tuple(shape), tuple(strides), elem)


@dataclass
class MemoryMap:
    """The external-memory layout of one compiled program.

    Attributes
    ----------
    places : dict of tensor or constant name -> Place
    roots : dict of view name -> the tensor whose region it shares
    regions : dict of region name -> (addr, bytes); the manifest's address table
    size : int
        Bytes of external memory the program uses (image, input, activations, logits).
    image_bytes : int
        Bytes that the memory image file holds (everything before the activations).
    input_patch : int
        For a model that starts with patches: their size, and the input region holds the
        image as patch rows (``input_bytes``); 0: the image as it is.
    """

    places: dict
    regions: dict
    roots: dict = field(default_factory=dict)
    size: int = 0
    image_bytes: int = 0
    input_patch: int = 0

    def reserve(self, name: str, nbytes: int) -> int:
        """A fresh aligned region of ``nbytes``; returns its address."""
        addr = _align(self.size)
        self.regions[name] = (addr, nbytes)
        self.size = addr + nbytes
        return addr

    def input_bytes(self, x: np.ndarray) -> np.ndarray:
        """The input region's contents for the INT8 image ``x`` (``IntProgram.quantize_input``).

        Patch rows where the model starts with patches: the host rearranges the image (a
        permutation, no arithmetic), so that the patch embedding loads rows of ``C*p*p``
        contiguous bytes instead of gathering ``p``-byte pixel runs.
        """
        x = np.asarray(x)
        if self.input_patch:
            x = patch_rows(x, self.input_patch)
        return x.reshape(-1).view(np.uint8)


def _elem(program: IntProgram, name: str) -> int:
    if name in program.constants:
        return program.constants[name].dtype.itemsize
    info = program.tensors.get(name)
    return 1 if info is None or info.bits <= 8 else 4


def plan_memory(program: IntProgram, constants: dict[str, np.ndarray],
                params: dict[str, np.ndarray], internal: set[str] = frozenset(),
                batch: int = 1) -> tuple[MemoryMap, dict]:
    """Lay out constants, parameter blocks, the input and every activation of ``program``.

    Parameters
    ----------
    program : IntProgram
    constants : name -> INT8 array the instruction stream reads (weights, already in the
        layout the compiler wants, e.g. transposed; tokens)
    params : name -> (n, 16) uint8 parameter records, each a block in the image
    internal : tensors that never leave the scratchpads (a fused chain's intermediates); no region
    batch : images the program runs at once; every activation region holds them all, image after image

    Returns
    -------
    (MemoryMap, image contents as name -> bytes to place at the region's address)
    """
    shapes = {name: shape for name, shape in program.tensor_shapes(batch).items() if name not in program.constants}
    memory = MemoryMap({}, {})
    contents = {}
    for name, value in constants.items():
        value = np.ascontiguousarray(value)
        memory.places[name] = _dense(memory.reserve(name, value.nbytes), value.shape, value.itemsize)
        contents[name] = value.tobytes()
    for name, records in params.items():
        memory.reserve(name, records.nbytes)
        contents[name] = records.tobytes()
    c = program.config
    input_addr = memory.reserve("input", math.prod(shapes["input"]))
    memory.places["input"] = _dense(input_addr, shapes["input"], 1)
    memory.image_bytes = memory.size

    # Views point from a tensor to the one whose region it shares; allocate roots first.
    parent: dict[str, tuple[str, object]] = {}
    for op in program.ops:
        if op.kind in ("split_heads", "select_token"):
            for out in op.outputs:
                parent[out] = (op.inputs[0], op)
        elif op.kind in ("merge_heads", "concat_token"):
            parent[op.inputs[0]] = (op.output, op)
        elif op.kind == "patchify":
            p = op.attrs["patch"]
            rows = _dense(input_addr, (batch, (c.img_size // p) ** 2, c.in_chans * p * p), 1)
            memory.places["input"] = memory.places[op.output] = rows
            memory.roots[op.output] = "input"
            memory.input_patch = p

    def place(name: str) -> Place:
        if name in memory.places:
            return memory.places[name]
        if name not in parent:
            shape = shapes[name]
            elem = _elem(program, name)
            memory.places[name] = _dense(memory.reserve(name, math.prod(shape) * elem), shape, elem)
            return memory.places[name]
        base_name, op = parent[name]
        base = place(base_name)
        memory.roots[name] = memory.roots.get(base_name, base_name)
        if op.kind == "split_heads":                     # (B, N, 3D) -> (B, H, N, d) windows
            heads = op.attrs["heads"]
            images, n, three_d = base.shape
            d = three_d // (3 * heads)
            part = op.outputs.index(name)
            view = Place(base.addr + part * heads * d * base.elem, (images, heads, n, d),
                         (base.strides[0], d * base.elem, base.strides[1], base.elem), base.elem)
        elif op.kind == "merge_heads":                   # (B, H, N, d) windows of (B, N, H*d)
            images, heads, n, d = shapes[name]
            view = Place(base.addr, (images, heads, n, d), (base.strides[0], d * base.elem, base.strides[1], base.elem),
                         base.elem)
        elif op.kind == "concat_token":                  # rows 1.. of each image's token rows
            view = Place(base.addr + base.strides[1], shapes[name], base.strides, base.elem)
        else:                                            # select_token: one row of each image
            index = op.attrs["index"]
            images, _, cols = base.shape               # one image's row: its stride is its length
            view = Place(base.addr + index * base.strides[1], shapes[name],
                         (base.strides[0] if images > 1 else cols * base.elem, base.strides[2]), base.elem)
        memory.places[name] = view
        return view

    for op in program.ops:
        for name in op.outputs:
            if name not in internal:
                place(name)
    if program.output not in memory.places:
        raise IntVitError(f"program output {program.output!r} is produced by no op")
    return memory, contents
