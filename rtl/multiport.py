"""A memory with several write and read ports that an FPGA's two-port block RAMs can hold.

``MultiPortMemory`` behaves as one ``amaranth.lib.memory.Memory`` with ``write_ports`` write
ports and ``read_ports`` synchronous read ports, every read port transparent for every write
port, or (``transparent=False``) for none. How it is built depends on the target, told by the platform Amaranth passes to
``elaborate`` (``rtl.synth.synth_fpga`` passes ``FPGA``):

* plain (simulation, Verilog, the ASIC flow): that one Amaranth memory;
* replicated (``platform.single_write_port_memories``): block RAMs have at most two ports,
  and Yosys's ``memory_libmap`` copies a memory once per read port only when it has a single
  write port, so a memory with two or more writers becomes flip-flops. Here every write port
  ``i`` owns a bank, a memory with that one write port and a read port per read port (Yosys
  makes ``read_ports`` one-write one-read copies of it, each a block RAM or LUT RAM), and a
  live-value table (LVT) records which bank holds each word's latest value (LaForest and
  Steffan, "Efficient multi-ported memories for FPGAs", FPGA 2010). The LVT is itself a
  memory every write port writes; in flip-flops, an ACC lane (256 words, 3 writes, 4 reads)
  took 4,015 LUT4 after ``synth_ecp5`` (scan shell included): four lanes about 44 % of the
  8x4 System's 36,348 LUT4, which router1 could not route. So the LVT is XOR-coded
  (after LaForest et al., "Multi-ported memories for FPGAs via XOR", FPGA 2012): one tag
  memory of ``ceil(log2(write_ports))`` bits per write port, written by that port alone, so
  LUT RAM; the XOR of a word's tags is the index of its last writer. Write port ``i`` writes
  ``i`` XOR the other ports' tags of its word, read combinationally in that cycle (LUT RAM
  reads are asynchronous). A read returns the bank that its tags name: banks and tags are read
  with the same address, enable and transparency, so they are consistent (without transparency,
  the tags as they were name the bank whose old word was the latest).

Both give the same values cycle for cycle in simulation (``tests/rtl/test_multiport.py``),
including when two write ports write one word in the same cycle: the later port's value is
kept and read through, as Amaranth's simulator orders the write ports of one memory. The
replicated form keeps that order in hardware too (an earlier port's tag write is held back
when a later port writes the same word); the plain memory's Verilog, like Yosys, leaves such
a collision undefined. The replicated form costs ``write_ports * read_ports`` copies of the
data and ``write_ports * (read_ports + write_ports - 1)`` copies of the tags.
"""

from amaranth import Cat, Module, Mux
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out
from amaranth.utils import ceil_log2

from intvit.quant.errors import IntVitError

__all__ = ["MultiPortMemory", "FpgaPlatform", "FPGA", "SCRATCHPAD_ATTRIBUTE"]

# Marks the memory of a scratchpad MultiPortMemory: rtl.synth's ASIC flow leaves it to the SRAM
# model wherever it lies in the hierarchy.
SCRATCHPAD_ATTRIBUTE = "intvit_scratchpad"


class FpgaPlatform:
    """What ``rtl.synth.synth_fpga`` gives Amaranth as the platform: memories with one write port.

    Only components of this package look at it (``MultiPortMemory``); it is not an
    ``amaranth.build`` platform (no pins, no toolchain).
    """

    single_write_port_memories = True


FPGA = FpgaPlatform()


class MultiPortMemory(wiring.Component):
    """Words of ``width`` bits, ``depth`` of them, zero at start; several write and read ports.

    Timing: a write port writes ``data`` to ``addr`` at the clock edge where ``en`` is high.
    A read port presents the word at ``addr`` on ``data`` one cycle after an edge where ``en``
    is high, and holds it while ``en`` is low; a word written in that same cycle by any write
    port is read with its new value (transparent), or its old one with ``transparent=False``.
    Of two write ports writing the same word in one cycle, the later one's value is kept.

    Parameters
    ----------
    width : int
        Bits per word.
    depth : int
        Words.
    write_ports, read_ports : int
        How many of each.
    scratchpad : bool
        A scratchpad (an SRAM macro in an ASIC): its memories carry ``SCRATCHPAD_ATTRIBUTE``.
    transparent : bool
        Whether reads see the same cycle's writes (default) or the words as they were.

    Attributes
    ----------
    write : Out(WritePort.Signature(addr_width, width)).array(write_ports)
        ``en``, ``addr``, ``data`` of each write port, in priority order (the last wins).
    read : Out(ReadPort.Signature(addr_width, width)).array(read_ports)
        ``en``, ``addr`` in and ``data`` out of each read port.
    """

    def __init__(self, *, width: int, depth: int, write_ports: int, read_ports: int, scratchpad: bool = False,
                 transparent: bool = True):
        for name, value in (("width", width), ("depth", depth), ("write_ports", write_ports),
                            ("read_ports", read_ports)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IntVitError(f"{name} must be a positive integer, not {value!r}")
        for name, value in (("scratchpad", scratchpad), ("transparent", transparent)):
            if not isinstance(value, bool):
                raise IntVitError(f"{name} must be True or False, not {value!r}")
        self._transparent = transparent
        self._width, self._depth = width, depth
        self._write_ports, self._read_ports = write_ports, read_ports
        self._attrs = {SCRATCHPAD_ATTRIBUTE: 1} if scratchpad else {}
        addr_width = ceil_log2(depth)
        super().__init__({
            "write": Out(WritePort.Signature(addr_width=addr_width, shape=width)).array(write_ports),
            "read": Out(ReadPort.Signature(addr_width=addr_width, shape=width)).array(read_ports),
        })

    @property
    def width(self) -> int:
        return self._width

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "single_write_port_memories", False) and self._write_ports > 1:
            self._replicated(m)
        else:
            memory = m.submodules.memory = Memory(shape=self._width, depth=self._depth, init=[],
                                                  attrs=self._attrs)
            data = self._connect(m, memory, [(w.en, w.addr, w.data) for w in self.write], self.read)
            m.d.comb += [read.data.eq(value) for read, value in zip(self.read, data)]
        return m

    def _connect(self, m: Module, memory: Memory, writes, reads) -> list:
        """Ports of ``memory`` for ``writes`` (``(en, addr, data)``) and ``reads`` (ports with ``en``
        and ``addr``), every read transparent for every write (or for none); the read ports' data."""
        ports = []
        for en, addr, value in writes:
            port = memory.write_port()
            m.d.comb += [port.en.eq(en), port.addr.eq(addr), port.data.eq(value)]
            ports.append(port)
        data = []
        for read in reads:
            port = memory.read_port(transparent_for=ports if self._transparent else ())
            m.d.comb += [port.en.eq(read.en), port.addr.eq(read.addr)]
            data.append(port.data)
        return data

    def _replicated(self, m: Module) -> None:
        # The XOR-coded LVT (module docstring). Holding back an earlier port's tag write when a
        # later port writes the same word keeps the later-wins order of the plain memory.
        tag_shape = ceil_log2(self._write_ports)
        tags = [Memory(shape=tag_shape, depth=self._depth, init=[], attrs={"ram_style": "distributed"})
                for _ in range(self._write_ports)]
        for index, tag in enumerate(tags):
            m.submodules[f"tag{index}"] = tag
        live = [0] * len(self.read)
        for index, write in enumerate(self.write):
            value = index
            for other, tag in enumerate(tags):
                if other != index:
                    port = tag.read_port(domain="comb")
                    m.d.comb += port.addr.eq(write.addr)
                    value ^= port.data
            later = [w.en & (w.addr == write.addr) for w in self.write[index + 1:]]
            en = write.en & ~Cat(*later).any() if later else write.en
            data = self._connect(m, tags[index], [(en, write.addr, value)], self.read)
            live = [word ^ tag for word, tag in zip(live, data)]
        banks = []
        for index, write in enumerate(self.write):
            bank = m.submodules[f"bank{index}"] = Memory(shape=self._width, depth=self._depth, init=[],
                                                         attrs=self._attrs)
            banks.append(self._connect(m, bank, [(write.en, write.addr, write.data)], self.read))
        for port, read in enumerate(self.read):
            value = banks[0][port]
            for index in range(1, self._write_ports):
                value = Mux(live[port] == index, banks[index][port], value)
            m.d.comb += read.data.eq(value)
