"""Scratchpad: an on-chip SRAM of ``depth`` words of ``width`` bits with streamed write ports and
fixed-latency read ports, built on ``amaranth.lib.memory``.

Write ports share the memory's one write port with fixed priority (port 0 first): a request is
taken (``ready``) in the cycle it is granted and lands at the end of that cycle. Each read port
is a read port of the memory: an address is always taken (``addr.ready`` is high) and its word
is on ``data`` in the next cycle. A read of a word written in the same cycle returns the old
word (no transparency); the controller orders dependent accesses by its own rules.
"""

from amaranth import Const, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from intvit.quant.errors import IntVitError
from intvit.rtl.dma import ScratchpadReadSignature, ScratchpadWriteSignature

__all__ = ["Scratchpad"]


class Scratchpad(wiring.Component):
    """``depth`` x ``width``-bit SRAM, ``write_ports`` arbitrated writers, ``read_ports`` readers.

    Parameters
    ----------
    depth : int
        Words (>= 2).
    width : int
        Bits per word.
    write_ports, read_ports : int
        Number of each kind of port (>= 1).

    Attributes
    ----------
    write : In(ScratchpadWriteSignature(addr_width, width)).array(write_ports)
        ``payload.addr``, ``payload.data``; ``ready`` when granted (lower index wins).
    read : In(ScratchpadReadSignature(addr_width, width)).array(read_ports)
        ``addr`` always ready; ``data`` one cycle after the handshake, held until the next one.
    """

    def __init__(self, depth: int, width: int, *, write_ports: int = 1, read_ports: int = 1):
        for name, value, low in (("depth", depth, 2), ("width", width, 1), ("write_ports", write_ports, 1),
                                 ("read_ports", read_ports, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise IntVitError(f"{name} must be an integer >= {low}, not {value!r}")
        self._depth, self._width = depth, width
        self.addr_width = (depth - 1).bit_length()
        super().__init__({
            "write": In(ScratchpadWriteSignature(self.addr_width, width)).array(write_ports),
            "read": In(ScratchpadReadSignature(self.addr_width, width)).array(read_ports),
        })

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def width(self) -> int:
        return self._width

    def elaborate(self, platform):
        m = Module()
        memory = m.submodules.memory = Memory(shape=self._width, depth=self._depth, init=[])
        port = memory.write_port()
        granted = Const(0)
        for request in self.write:
            m.d.comb += request.ready.eq(~granted)
            with m.If(request.valid & ~granted):
                m.d.comb += [port.addr.eq(request.payload.addr), port.data.eq(request.payload.data), port.en.eq(1)]
            granted = granted | request.valid
        for reader in self.read:
            read_port = memory.read_port()
            m.d.comb += [reader.addr.ready.eq(1), read_port.addr.eq(reader.addr.payload),
                         read_port.en.eq(reader.addr.valid), reader.data.eq(read_port.data)]
        return m
