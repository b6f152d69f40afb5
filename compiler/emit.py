"""Emission with dependency tokens and scratchpad allocation, for ``compiler.codegen``.

``Emitter`` appends instructions in program order and turns the accesses each one declares
(resource keys of scratchpad chunks and external-memory blocks) into dependency tokens between
the load, compute and store modules; ``Buffers`` hands out scratchpad space (alternating halves
of A, B and PARAM, a ring of ACC tiles) with the keys that name it.
"""

from __future__ import annotations

from intvit.compiler.isa import QUEUE_OF, Geometry, Instruction, Memory, Opcode, Queue

__all__ = ["ACC_CHUNKS", "BANK_CHUNKS", "Emitter", "Buffers"]

ACC_CHUNKS = 16
BANK_CHUNKS = 64


class Emitter:
    """Instructions in program order, with dependency tokens derived from declared accesses.

    It tracks what each module knows to be complete (its own earlier instructions, and through
    every token it pops, everything the pushing instruction knew), so a dependency already
    ordered through a chain of tokens costs no new token. A LOAD that must wait for a STORE
    goes through a SYNC in the compute queue, which runs only when compute reaches it: the
    SYNC waits for the last STORE emitted so far into each external-memory tensor the LOAD
    reads, so that later LOADs of those tensors (the op's next tiles) need no SYNC of their
    own and stream ahead of compute instead of waiting behind it.
    """

    def __init__(self):
        self.ops: list[list] = []                        # [opcode, fields dict]
        self.last_writer: dict = {}
        self.readers: dict = {}
        self.popped: dict = {}
        self.origins: list[str] = []                     # the op each instruction serves
        self.current = ""
        # known[q][p]: the latest instruction of queue p complete whenever q's next one starts.
        self.known = {q: dict.fromkeys(Queue, -1) for q in Queue}
        self.known_at: list[dict] = []                   # the same, once each instruction completes
        self.tensor_store: dict = {}                     # external-memory tensor -> its last STORE

    def __len__(self) -> int:
        return len(self.ops)

    def queue(self, index: int) -> Queue:
        return QUEUE_OF[self.ops[index][0]]

    def emit(self, opcode: Opcode, reads=(), writes=(), **fields) -> int:
        Instruction(opcode, **fields)                    # every field fits its width, or one line says which
        queue = QUEUE_OF[opcode]
        known = self.known[queue]
        deps: dict[Queue, int] = {}

        def need(index):
            if index is not None and self.queue(index) != queue and index > known[self.queue(index)]:
                q = self.queue(index)
                deps[q] = max(deps.get(q, -1), index)

        for key in reads:
            need(self.last_writer.get(key))
        for key in writes:
            need(self.last_writer.get(key))
            for index in self.readers.get(key, {}).values():
                need(index)
        far = {Queue.LOAD: Queue.STORE, Queue.STORE: Queue.LOAD}.get(queue)
        if far in deps and Queue.COMPUTE in deps and self.known_at[deps[Queue.COMPUTE]][far] >= deps[far]:
            del deps[far]                                # the compute token it pops anyway implies it
        if far in deps:                                  # load <-> store meet through a SYNC in compute
            target = deps.pop(far)
            if queue == Queue.LOAD:
                target = max([target] + [self.tensor_store.get(key[1], -1) for key in reads if key[0] == "dram"])
            sync = self._append(Opcode.SYNC, {})
            self._tokens(sync, {far: target})
            deps[Queue.COMPUTE] = sync
        index = self._append(opcode, fields)
        self._tokens(index, deps)
        for key in reads:
            self.readers.setdefault(key, {})[queue] = index
        for key in writes:
            self.last_writer[key] = index
            self.readers[key] = {}
            if queue == Queue.STORE:
                self.tensor_store[key[1]] = index
        return index

    def _append(self, opcode: Opcode, fields: dict) -> int:
        self.ops.append([opcode, dict(fields)])
        self.origins.append(self.current)
        return len(self.ops) - 1

    def _tokens(self, index: int, deps: dict) -> None:
        queue = self.queue(index)
        known = self.known[queue]
        for producer_queue, producer in deps.items():
            pair = (producer_queue, queue)
            if producer <= self.popped.get(pair, -1):
                continue                                 # an earlier pop already ordered it
            self.popped[pair] = producer
            forward = producer_queue < queue
            self.ops[producer][1]["push_next" if forward else "push_prev"] = 1
            self.ops[index][1]["pop_prev" if forward else "pop_next"] = 1
            for q, latest in self.known_at[producer].items():
                known[q] = max(known[q], latest)
        known[queue] = index
        self.known_at.append(dict(known))

    def finish(self) -> list[Instruction]:
        deps = {}
        for q in (Queue.LOAD, Queue.STORE):
            last = max((i for i in range(len(self.ops)) if self.queue(i) == q), default=None)
            if last is not None:
                deps[q] = last
        end = self._append(Opcode.END, {})
        self._tokens(end, deps)
        return [Instruction(opcode, **fields) for opcode, fields in self.ops]


class Buffers:
    """Alternating halves of A, B and PARAM (double buffering); ACC as a ring of tiles.

    ACC tiles are often far smaller than half of ACC; a ring lets as many be in flight as fit
    (computed, being stored, the next being filled). Hazards are tracked per ``ACC_CHUNKS``-th
    of ACC, so a tile waits only for the tiles it overwrites, and per ``BANK_CHUNKS``-th of the
    A and B bank depth, so the next block of an operand resident in a half loads while the
    array reads the blocks before it.
    """

    def __init__(self, geometry: Geometry):
        self.half = {Memory.A: geometry.a_depth // 2, Memory.B: geometry.b_depth // 2,
                     Memory.ACC: geometry.acc_words // 2, Memory.PARAM: geometry.param_records // 2}
        self.turn = {memory: 0 for memory in self.half}
        self.acc_words = geometry.acc_words
        self.chunk = max(1, geometry.acc_words // ACC_CHUNKS)
        self.acc_next = 0
        self.bank_chunk = {Memory.A: max(1, geometry.a_depth // BANK_CHUNKS),
                           Memory.B: max(1, geometry.b_depth // BANK_CHUNKS)}

    def span(self, memory: Memory, offset: int, length: int) -> tuple:
        """Resource keys of bytes ``[offset, offset + length)`` of every bank of A or B."""
        chunk = self.bank_chunk[memory]
        return tuple((memory, c) for c in range(offset // chunk, (offset + length - 1) // chunk + 1))

    def ring(self, words: int) -> tuple[int, tuple]:
        """The next ``words`` (at most half of ACC) of the ACC ring: (base word, resource keys)."""
        if self.acc_next + words > self.acc_words:
            self.acc_next = 0
        base = self.acc_next
        self.acc_next = -(-(base + words) // self.chunk) * self.chunk
        return base, tuple((Memory.ACC, c) for c in range(base // self.chunk, (base + words - 1) // self.chunk + 1))

    def pitch(self, memory: Memory, k: int, count: int, room: int) -> int:
        """Bytes between ``count`` resident blocks of ``k``: ``k`` rounded up to a hazard chunk if they fit ``room``."""
        chunk = self.bank_chunk[memory]
        padded = -(-k // chunk) * chunk
        return padded if count * padded <= room else k

    def whole(self, memory: Memory) -> tuple[int, tuple]:
        """Both halves of A or B at once, for an operand that fits only the whole scratchpad."""
        return 0, self.span(memory, 0, 2 * self.half[memory])

    def take(self, memory: Memory) -> tuple[int, tuple]:
        """The next half: (base offset, resource keys)."""
        h = self.turn[memory]
        self.turn[memory] ^= 1
        base = h * self.half[memory]
        return base, self.span(memory, base, self.half[memory]) if memory in self.bank_chunk else ((memory, h),)
