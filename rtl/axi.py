"""AXI4 definitions the accelerator's masters share: the port signature and the encodings they drive.

The controller's instruction fetch (``rtl.controller``, port ``imem``) and the load and store
modules (``rtl.loadstore``, port ``dmem``) are AXI4 masters. They issue INCR bursts only, with
every ID at 0 (one in-order stream per port and direction) and ``*cache`` = ``CACHE_NORMAL``;
``*lock`` and ``*prot`` stay 0. Burst lengths and the 4 KiB rule are the modules' own
(``compiler.isa.AXI_BOUNDARY_BYTES``).
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError

__all__ = ["AxiSignature", "BURST_INCR", "CACHE_NORMAL"]

BURST_INCR = 0b01
# ARCACHE/AWCACHE "normal non-cacheable bufferable": the interconnect may merge or split bursts.
CACHE_NORMAL = 0b0011


def _check_int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise IntVitError(f"{name} must be an integer in [{low}, {high}], not {value!r}")


class AxiSignature(wiring.Signature):
    """An AXI4 master port (``Out`` members are driven by the master), AMBA names without prefix.

    Read: ``arid araddr arlen arsize arburst arlock arcache arprot arvalid arready`` and
    ``rid rdata rresp rlast rvalid rready``; write: ``awid awaddr awlen awsize awburst awlock
    awcache awprot awvalid awready``, ``wdata wstrb wlast wvalid wready`` and ``bid bresp
    bvalid bready`` (none with ``read_only``). A component with ``dmem: Out(AxiSignature(...))``
    written with ``rtl.top.flat_ports`` gets ports ``dmem_araddr``... as cocotbext-axi's
    ``AxiBus.from_prefix`` and SoC tools expect.

    Parameters
    ----------
    addr_width : int
        12 to 64 bits.
    data_width : int
        A power of two from 8 to 1024 bits.
    id_width : int
        1 to 32 bits.
    read_only : bool
        Only the read channels (AR, R).
    """

    def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1, *, read_only: bool = False):
        _check_int("addr_width", addr_width, 12, 64)
        _check_int("data_width", data_width, 8, 1024)
        if data_width & (data_width - 1):
            raise IntVitError(f"data_width must be a power of two from 8 to 1024, not {data_width}")
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
