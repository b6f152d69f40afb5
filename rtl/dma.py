"""DMA engine: strided 2-D transfers between external memory (an AXI4 master port) and a scratchpad.

Two independent engines share one AXI4 master port without arbitration: ``DmaRead`` owns the
read channels (AR, R) and moves external memory into a scratchpad write port; ``DmaWrite``
owns the write channels (AW, W, B) and moves a scratchpad read port out to external memory.
``Dma`` puts both behind one ``m_axi`` interface, so a load and a store run at the same time.

A transfer is ``rows`` rows of ``row_beats`` bus words. Row ``r`` starts at byte address
``ext_addr + r * ext_stride`` outside and at word address ``sp_addr + r * sp_stride`` in the
scratchpad; one bus word is one scratchpad word (``data_width`` bits). External addresses and
strides are multiples of the word's byte count (the compiler lays memory out so). Each row is
split into INCR bursts of at most 256 beats that never cross a 4 KB boundary, as AXI4 requires.

Timing (one command at a time per engine; ``cmd.ready`` is high while the engine is idle):

* address channel: one burst request per cycle while the slave keeps ``a*ready`` high; the
  first request goes out the cycle after the command is accepted;
* ``DmaRead``: each R beat is written to the scratchpad in the cycle it is accepted (``rready``
  follows the scratchpad port's ``ready``); the engine is idle again the cycle after the last
  beat, so a load of ``n`` words takes ``1 + L_r + n`` cycles from command to idle when the
  memory answers its first request ``L_r`` cycles after it and then streams one beat a cycle;
* ``DmaWrite``: scratchpad reads run one word a cycle ahead of W through a 4-word buffer, a
  burst's data follows its AW handshake (never before it), ``wlast`` closes each burst, and the
  engine is idle the cycle after the last B response; a store of ``n`` words takes
  ``2 + n + L_b`` cycles with a slave that accepts W at once and answers B ``L_b`` cycles
  after the last beat.

``error`` goes high on a SLVERR/DECERR response and stays high until the next command.
"""

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError

__all__ = ["AxiSignature", "DmaCommand", "ScratchpadWriteSignature", "ScratchpadReadSignature",
           "DmaRead", "DmaWrite", "Dma", "AXI_MAX_BURST", "AXI_BOUNDARY_BYTES"]

AXI_MAX_BURST = 256              # AXI4 INCR bursts: 1..256 beats
AXI_BOUNDARY_BYTES = 4096        # no burst may cross a 4 KB boundary
BURST_INCR = 0b01
RESP_OKAY = 0b00
WRITE_BUFFER_WORDS = 4


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise IntVitError(f"{name} must be {bound}, not {value!r}")


def _check_data_width(data_width: int) -> None:
    _check_int("data_width", data_width, 8, 1024)
    if data_width & (data_width - 1):
        raise IntVitError(f"data_width must be a power of two from 8 to 1024, not {data_width}")


class AxiSignature(wiring.Signature):
    """An AXI4 master port (``Out`` members are driven by the master), AMBA names without prefix.

    Read: ``arid araddr arlen arsize arburst arlock arcache arprot arvalid arready`` and
    ``rid rdata rresp rlast rvalid rready``; write: ``awid awaddr awlen awsize awburst awlock
    awcache awprot awvalid awready``, ``wdata wstrb wlast wvalid wready`` and ``bid bresp
    bvalid bready`` (none with ``read_only``). A component with ``m_axi: Out(AxiSignature(...))`` written with
    ``rtl.top.flat_ports`` gets ports ``m_axi_araddr``... as cocotbext-axi and SoC tools expect.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1, *, read_only: bool = False):
        _check_int("addr_width", addr_width, 12, 64)
        _check_data_width(data_width)
        _check_int("id_width", id_width, 1, 32)
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        self.read_only = read_only
        members = {}
        for ch in ("ar",) if read_only else ("ar", "aw"):
            members |= {f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                        f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1), f"{ch}cache": Out(4),
                        f"{ch}prot": Out(3), f"{ch}valid": Out(1), f"{ch}ready": In(1)}
        members |= {"rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
                    "rvalid": In(1), "rready": Out(1)}
        if not read_only:
            members |= {"wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                    "wvalid": Out(1), "wready": In(1),
                    "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1)}
        super().__init__(members)


def DmaCommand(addr_width: int, sp_addr_width: int, count_width: int) -> data.StructLayout:
    """One 2-D transfer: ``rows`` rows of ``row_beats`` words (both >= 1), strides per row."""
    return data.StructLayout({
        "ext_addr": addr_width, "ext_stride": addr_width,
        "sp_addr": sp_addr_width, "sp_stride": sp_addr_width,
        "row_beats": count_width, "rows": count_width,
    })


def ScratchpadWriteSignature(addr_width: int, data_width: int) -> wiring.Signature:
    """A write request stream (master's view): ``payload.addr`` word address, ``payload.data``."""
    return stream.Signature(data.StructLayout({"addr": addr_width, "data": data_width}))


def ScratchpadReadSignature(addr_width: int, data_width: int) -> wiring.Signature:
    """A read port (master's view): ``addr`` stream out; ``data`` valid one cycle after each handshake."""
    return wiring.Signature({"addr": Out(stream.Signature(addr_width)), "data": In(data_width)})


class _RowWalker(wiring.Component):
    """Word addresses of a 2-D transfer, one per ``step``: ``sp_addr + r * sp_stride + b``.

    ``start`` loads the command (in any state); ``busy`` is high until the step that takes
    the last word (``last``), which also closes the transfer.
    """

    def __init__(self, sp_addr_width: int, count_width: int):
        layout = DmaCommand(1, sp_addr_width, count_width)
        super().__init__({"start": In(1), "cmd": In(layout), "step": In(1),
                          "busy": Out(1), "addr": Out(sp_addr_width), "last": Out(1)})
        self._count_width = count_width

    def elaborate(self, platform):
        m = Module()
        row_start = Signal.like(self.addr)
        stride = Signal.like(self.addr)
        beat = Signal(self._count_width)
        row = Signal(self._count_width)
        row_beats = Signal(self._count_width)
        rows = Signal(self._count_width)
        end_of_row = beat == row_beats - 1
        m.d.comb += [self.addr.eq(row_start + beat), self.last.eq(end_of_row & (row == rows - 1))]
        with m.If(self.start):
            m.d.sync += [row_start.eq(self.cmd.sp_addr), stride.eq(self.cmd.sp_stride), beat.eq(0), row.eq(0),
                         row_beats.eq(self.cmd.row_beats), rows.eq(self.cmd.rows), self.busy.eq(1)]
        with m.Elif(self.step & self.busy):
            with m.If(self.last):
                m.d.sync += self.busy.eq(0)
            with m.Elif(end_of_row):
                m.d.sync += [beat.eq(0), row.eq(row + 1), row_start.eq(row_start + stride)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        return m


class _BurstSplitter(wiring.Component):
    """AXI address-channel requests of a 2-D transfer: each row split into legal INCR bursts.

    A burst is ``min(words left in the row, 256, words to the next 4 KB boundary)`` long.
    ``burst`` is a stream of ``(addr, len)`` with ``len`` = beats - 1, as on the AXI bus.
    """

    def __init__(self, addr_width: int, sp_addr_width: int, count_width: int, data_width: int):
        layout = DmaCommand(addr_width, sp_addr_width, count_width)
        super().__init__({"start": In(1), "cmd": In(layout), "busy": Out(1),
                          "burst": Out(stream.Signature(data.StructLayout({"addr": addr_width, "len": 8})))})
        self._addr_width, self._count_width = addr_width, count_width
        self._word_bits = (data_width // 8).bit_length() - 1

    def elaborate(self, platform):
        m = Module()
        word_bits = self._word_bits
        addr = Signal(self._addr_width)
        row_start = Signal(self._addr_width)
        stride = Signal(self._addr_width)
        left = Signal(self._count_width)               # words left in the current row
        row = Signal(self._count_width)
        row_beats = Signal(self._count_width)
        rows = Signal(self._count_width)
        to_boundary = Signal(range(AXI_BOUNDARY_BYTES // (1 << word_bits) + 1))
        m.d.comb += to_boundary.eq((AXI_BOUNDARY_BYTES - addr[:12]) >> word_bits)
        beats = Signal(range(AXI_MAX_BURST + 1))
        with m.If((left <= AXI_MAX_BURST) & (left <= to_boundary)):
            m.d.comb += beats.eq(left)
        with m.Elif(to_boundary <= AXI_MAX_BURST):
            m.d.comb += beats.eq(to_boundary)
        with m.Else():
            m.d.comb += beats.eq(AXI_MAX_BURST)
        m.d.comb += [self.burst.valid.eq(self.busy), self.burst.payload.addr.eq(addr),
                     self.burst.payload.len.eq(beats - 1)]
        with m.If(self.start):
            m.d.sync += [addr.eq(self.cmd.ext_addr), row_start.eq(self.cmd.ext_addr), stride.eq(self.cmd.ext_stride),
                         left.eq(self.cmd.row_beats), row.eq(0), row_beats.eq(self.cmd.row_beats),
                         rows.eq(self.cmd.rows), self.busy.eq(1)]
        with m.Elif(self.burst.valid & self.burst.ready):
            with m.If(left != beats):
                m.d.sync += [left.eq(left - beats), addr.eq(addr + (beats << word_bits))]
            with m.Elif(row == rows - 1):
                m.d.sync += self.busy.eq(0)
            with m.Else():
                m.d.sync += [row.eq(row + 1), left.eq(row_beats), addr.eq(row_start + stride),
                             row_start.eq(row_start + stride)]
        return m


class _Engine(wiring.Component):
    """What both engines share: parameters, the command stream, ``busy`` and ``error``."""

    def __init__(self, members: dict, *, addr_width: int, data_width: int, sp_addr_width: int, count_width: int):
        _check_int("addr_width", addr_width, 12, 64)
        _check_data_width(data_width)
        _check_int("sp_addr_width", sp_addr_width, 1, 32)
        _check_int("count_width", count_width, 1, 32)
        self.addr_width, self.data_width = addr_width, data_width
        self.sp_addr_width, self.count_width = sp_addr_width, count_width
        layout = DmaCommand(addr_width, sp_addr_width, count_width)
        super().__init__({"cmd": In(stream.Signature(layout)), "busy": Out(1), "error": Out(1), **members})

    def _parts(self, m: Module) -> tuple[_BurstSplitter, _RowWalker]:
        splitter = m.submodules.splitter = _BurstSplitter(self.addr_width, self.sp_addr_width,
                                                          self.count_width, self.data_width)
        walker = m.submodules.walker = _RowWalker(self.sp_addr_width, self.count_width)
        start = self.cmd.valid & self.cmd.ready
        m.d.comb += [self.cmd.ready.eq(~self.busy), splitter.start.eq(start), splitter.cmd.eq(self.cmd.payload),
                     walker.start.eq(start)]
        m.d.comb += [getattr(walker.cmd, name).eq(getattr(self.cmd.payload, name))
                     for name in ("sp_addr", "sp_stride", "row_beats", "rows")]
        with m.If(start):
            m.d.sync += self.error.eq(0)
        return splitter, walker

    def _size(self) -> int:
        return (self.data_width // 8).bit_length() - 1


class DmaRead(_Engine):
    """External memory to scratchpad over AXI4's read channels.

    Attributes
    ----------
    cmd : In(stream.Signature(DmaCommand(...)))
        Accepted only while idle.
    busy : Out(1)
        High from the cycle after a command is accepted until the last word is written.
    error : Out(1)
        A read response was not OKAY; sticky until the next command.
    axi : Out(AxiSignature(...))
        Only the AR and R channels are driven (AW/W/B members stay at rest).
    sp : Out(ScratchpadWriteSignature(sp_addr_width, data_width))
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 128, sp_addr_width: int = 12,
                 count_width: int = 16, id_width: int = 1):
        super().__init__({"axi": Out(AxiSignature(addr_width, data_width, id_width)),
                          "sp": Out(ScratchpadWriteSignature(sp_addr_width, data_width))},
                         addr_width=addr_width, data_width=data_width, sp_addr_width=sp_addr_width,
                         count_width=count_width)

    def elaborate(self, platform):
        m = Module()
        splitter, walker = self._parts(m)
        axi = self.axi
        m.d.comb += [axi.araddr.eq(splitter.burst.payload.addr), axi.arlen.eq(splitter.burst.payload.len),
                     axi.arsize.eq(self._size()), axi.arburst.eq(BURST_INCR), axi.arcache.eq(0b0011),
                     axi.arvalid.eq(splitter.burst.valid), splitter.burst.ready.eq(axi.arready)]
        m.d.comb += [self.sp.valid.eq(axi.rvalid & walker.busy), self.sp.payload.addr.eq(walker.addr),
                     self.sp.payload.data.eq(axi.rdata), axi.rready.eq(self.sp.ready & walker.busy),
                     walker.step.eq(axi.rvalid & axi.rready)]
        with m.If(axi.rvalid & axi.rready & (axi.rresp != RESP_OKAY)):
            m.d.sync += self.error.eq(1)
        m.d.comb += self.busy.eq(splitter.busy | walker.busy)
        return m


class DmaWrite(_Engine):
    """Scratchpad to external memory over AXI4's write channels.

    Attributes
    ----------
    cmd : In(stream.Signature(DmaCommand(...)))
        Accepted only while idle.
    busy : Out(1)
        High from the cycle after a command is accepted until the last B response.
    error : Out(1)
        A write response was not OKAY; sticky until the next command.
    axi : Out(AxiSignature(...))
        Only the AW, W and B channels are driven.
    sp : Out(ScratchpadReadSignature(sp_addr_width, data_width))
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 128, sp_addr_width: int = 12,
                 count_width: int = 16, id_width: int = 1):
        super().__init__({"axi": Out(AxiSignature(addr_width, data_width, id_width)),
                          "sp": Out(ScratchpadReadSignature(sp_addr_width, data_width))},
                         addr_width=addr_width, data_width=data_width, sp_addr_width=sp_addr_width,
                         count_width=count_width)

    def elaborate(self, platform):
        m = Module()
        splitter, walker = self._parts(m)
        axi = self.axi
        # Burst lengths travel from AW to W, so a burst's data never leaves before its address.
        lengths = m.submodules.lengths = fifo.SyncFIFOBuffered(width=8, depth=WRITE_BUFFER_WORDS)
        words = m.submodules.words = fifo.SyncFIFO(width=self.data_width, depth=WRITE_BUFFER_WORDS)
        m.d.comb += [axi.awaddr.eq(splitter.burst.payload.addr), axi.awlen.eq(splitter.burst.payload.len),
                     axi.awsize.eq(self._size()), axi.awburst.eq(BURST_INCR), axi.awcache.eq(0b0011),
                     axi.awvalid.eq(splitter.burst.valid & lengths.w_rdy),
                     splitter.burst.ready.eq(axi.awready & lengths.w_rdy),
                     lengths.w_en.eq(axi.awvalid & axi.awready), lengths.w_data.eq(splitter.burst.payload.len)]

        # Scratchpad reads: one word a cycle while the buffer has room for every word in flight.
        s1_valid = Signal()
        m.d.comb += [self.sp.addr.valid.eq(walker.busy & (words.level + s1_valid < WRITE_BUFFER_WORDS)),
                     self.sp.addr.payload.eq(walker.addr), walker.step.eq(self.sp.addr.valid & self.sp.addr.ready)]
        m.d.sync += s1_valid.eq(self.sp.addr.valid & self.sp.addr.ready)
        m.d.comb += [words.w_en.eq(s1_valid), words.w_data.eq(self.sp.data)]

        beat = Signal(8)
        m.d.comb += [axi.wdata.eq(words.r_data), axi.wstrb.eq(~0), axi.wlast.eq(beat == lengths.r_data),
                     axi.wvalid.eq(words.r_rdy & lengths.r_rdy), words.r_en.eq(axi.wvalid & axi.wready),
                     lengths.r_en.eq(axi.wvalid & axi.wready & axi.wlast)]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += beat.eq(beat + 1)
            with m.If(axi.wlast):
                m.d.sync += beat.eq(0)

        # Responses: count bursts whose B has not come back.
        pending = Signal(range(1 << 16))
        issued = axi.awvalid & axi.awready
        m.d.comb += axi.bready.eq(1)
        answered = axi.bvalid
        m.d.sync += pending.eq(pending + issued - answered)
        with m.If(answered & (axi.bresp != RESP_OKAY)):
            m.d.sync += self.error.eq(1)
        m.d.comb += self.busy.eq(splitter.busy | walker.busy | s1_valid | words.r_rdy | (pending != 0))
        return m


class Dma(wiring.Component):
    """A read and a write engine behind one AXI4 master port; they run concurrently.

    Parameters
    ----------
    addr_width : int
        AXI address bits (12 to 64).
    data_width : int
        AXI data bits, a power of two from 8 to 1024; one scratchpad word.
    sp_addr_width : int
        Scratchpad word-address bits.
    count_width : int
        Bits of ``rows`` and ``row_beats``.
    id_width : int
        AXI ID bits (IDs are always 0: one in-order stream per direction).

    Attributes
    ----------
    load, store : In(stream.Signature(DmaCommand(...)))
        Commands of the read (external -> scratchpad) and write (scratchpad -> external) engines.
    load_busy, store_busy, error : Out(1)
    m_axi : Out(AxiSignature(addr_width, data_width, id_width))
    sp_write : Out(ScratchpadWriteSignature(...))
    sp_read : Out(ScratchpadReadSignature(...))

    Timing: see the module docstring; each engine's figures hold whatever the other does.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 128, sp_addr_width: int = 12,
                 count_width: int = 16, id_width: int = 1):
        params = dict(addr_width=addr_width, data_width=data_width, sp_addr_width=sp_addr_width,
                      count_width=count_width, id_width=id_width)
        self._read, self._write = DmaRead(**params), DmaWrite(**params)
        layout = DmaCommand(addr_width, sp_addr_width, count_width)
        super().__init__({
            "load": In(stream.Signature(layout)), "store": In(stream.Signature(layout)),
            "load_busy": Out(1), "store_busy": Out(1), "error": Out(1),
            "m_axi": Out(AxiSignature(addr_width, data_width, id_width)),
            "sp_write": Out(ScratchpadWriteSignature(sp_addr_width, data_width)),
            "sp_read": Out(ScratchpadReadSignature(sp_addr_width, data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        read, write = m.submodules.read, m.submodules.write = self._read, self._write
        wiring.connect(m, wiring.flipped(self.load), read.cmd)
        wiring.connect(m, wiring.flipped(self.store), write.cmd)
        wiring.connect(m, wiring.flipped(self.sp_write), read.sp)
        wiring.connect(m, wiring.flipped(self.sp_read), write.sp)
        for name in self.m_axi.signature.members:
            channel = "read" if name[0] in "r" or name.startswith("ar") else "write"
            engine = read if channel == "read" else write
            ours, theirs = getattr(self.m_axi, name), getattr(engine.axi, name)
            if self.m_axi.signature.members[name].flow == Out:
                m.d.comb += ours.eq(theirs)
            else:
                m.d.comb += theirs.eq(ours)
        m.d.comb += [self.load_busy.eq(read.busy), self.store_busy.eq(write.busy),
                     self.error.eq(read.error | write.error)]
        return m
