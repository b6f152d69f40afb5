"""The whole accelerator as one module for an SoC or FPGA: controller, DMA modules, scratchpads.

``System`` runs a compiled instruction stream (docs/isa.md) from external memory: the
controller (``rtl.controller``) fetches it on the read-only AXI4 master ``imem``, the load and
store modules (``rtl.loadstore``) move data on the AXI4 master ``dmem``, and the scratchpads
are ``amaranth.lib.memory`` memories:

* **A** (``rows`` banks) and **B** (``cols`` banks) of INT8: each bank is ``W`` byte-lane
  memories (``W`` = AXI bytes per beat), byte ``b`` in lane ``b % W`` at word ``b // W``, so a
  beat of ``W`` consecutive bytes lands in one cycle wherever it starts;
* **ACC**: ``cols`` lane memories of INT32, ``acc_words`` deep (word ``w`` lane ``l`` is
  element ``l`` of ACC word ``w``), with a write port each for the load module, the array and
  the vector units and read ports for the store module, the array (``accumulate``) and the
  vector units (two: ADD's operands), so that the array and the vector units run side by side
  (each lane a ``rtl.multiport.MultiPortMemory``: on an FPGA, block RAM banks and a live-value table);
* **PARAM**: ``cols`` lane memories of 128-bit records (record ``r`` in lane ``r % cols``), read
  by the array (bias) and the vector units on ports of their own.

Every read port is transparent for the writes of the other modules: an instruction may start
in the cycle its producer completes (docs/isa.md, "Tokens") and read in that cycle what the
producer writes in it.

Control and status (single-underscore Verilog names, ``rtl.top.flat_ports``): ``start`` (one
cycle), ``insn_base`` and ``data_base`` (byte addresses, read at ``start``), ``busy``, ``done``,
``error``, ``error_index`` (the instruction that raised ``error``) and ``cycles`` (the cycle
count of docs/isa.md's Timing section: END's completion cycle, counted from ``start``).

Every instruction of docs/isa.md runs: MATMUL and the element-wise ones in ``rtl.compute``.
"""

from dataclasses import asdict, dataclass

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory as SRAM
from amaranth.lib.wiring import In, Out

from intvit.compiler.isa import Opcode
from intvit.quant.errors import IntVitError
from intvit.rtl.compute import ComputeUnit
from intvit.rtl.controller import CYCLE_BITS, Controller
from intvit.rtl.axi import AxiSignature
from intvit.rtl.loadstore import LoadUnit, SpGeometry, StoreUnit
from intvit.rtl.multiport import MultiPortMemory

__all__ = ["SystemParams", "System", "IMPLEMENTED_OPCODES"]

IMPLEMENTED_OPCODES = tuple(Opcode)


@dataclass(frozen=True)
class SystemParams:
    """Elaboration parameters: the array, scratchpad sizes (bytes/words/records) and the AXI port.

    ``from_geometry(geometry, memory_config)`` builds them from ``compiler.isa.Geometry`` and
    the ``memory`` section of an accelerator config.
    """

    rows: int
    cols: int
    a_depth: int
    b_depth: int
    acc_words: int
    param_records: int
    axi_data_bits: int = 128
    max_burst_beats: int = 16
    requant_lanes: int = 8
    gelu_lanes: int = 8
    softmax_lanes: int = 8
    layernorm_lanes: int = 8
    softmax_max_length: int = 256
    layernorm_width: int = 192

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IntVitError(f"{name} must be a positive integer, not {value!r}")
        if not 1 <= self.max_burst_beats <= 256:
            raise IntVitError(f"max_burst_beats must be in 1..256, not {self.max_burst_beats}")

    @classmethod
    def from_geometry(cls, geometry, memory) -> "SystemParams":
        return cls(rows=geometry.rows, cols=geometry.cols, a_depth=geometry.a_depth, b_depth=geometry.b_depth,
                   acc_words=geometry.acc_words, param_records=geometry.param_records,
                   axi_data_bits=memory.axi_data_bits, max_burst_beats=memory.max_burst_beats,
                   requant_lanes=geometry.lanes["requant"], gelu_lanes=geometry.lanes["gelu"],
                   softmax_lanes=geometry.lanes["softmax"], layernorm_lanes=geometry.lanes["layernorm"],
                   softmax_max_length=geometry.softmax_max_length, layernorm_width=geometry.layernorm_width)

    @property
    def sp_geometry(self) -> SpGeometry:
        return SpGeometry(self.rows, self.cols, self.a_depth, self.b_depth, self.acc_words, self.param_records,
                          self.axi_data_bits // 8)


class System(wiring.Component):
    """The accelerator top (see the module docstring).

    Parameters
    ----------
    params : SystemParams

    Attributes
    ----------
    start : In(1); insn_base, data_base : In(32)
    busy, done, error : Out(1); error_index : Out(32); cycles : Out(48)
    imem : Out(AxiSignature(32, axi_data_bits, read_only=True))
    dmem : Out(AxiSignature(32, axi_data_bits))
    """

    def __init__(self, params: SystemParams):
        if not isinstance(params, SystemParams):
            raise IntVitError(f"params must be a SystemParams, not {type(params).__name__}")
        self._params = params
        self._geometry = g = params.sp_geometry
        self.controller = Controller(data_width=params.axi_data_bits, opcodes=IMPLEMENTED_OPCODES)
        self.load = LoadUnit(g, params.max_burst_beats)
        self.store = StoreUnit(g, params.max_burst_beats)
        self.compute = ComputeUnit(g, requant_lanes=params.requant_lanes, gelu_lanes=params.gelu_lanes,
                                   softmax_lanes=params.softmax_lanes, layernorm_lanes=params.layernorm_lanes,
                                   softmax_max_length=params.softmax_max_length,
                                   layernorm_width=params.layernorm_width)
        width = params.axi_data_bits
        super().__init__({
            "start": In(1), "insn_base": In(32), "data_base": In(32),
            "busy": Out(1), "done": Out(1), "error": Out(1), "error_index": Out(32), "cycles": Out(CYCLE_BITS),
            "imem": Out(AxiSignature(32, width, read_only=True)),
            "dmem": Out(AxiSignature(32, width)),
        })

    @property
    def params(self) -> SystemParams:
        return self._params

    def elaborate(self, platform):
        m = Module()
        p, g = self._params, self._geometry
        w = g.beat_bytes
        ctrl = m.submodules.controller = self.controller
        load = m.submodules.load = self.load
        store = m.submodules.store = self.store
        compute = m.submodules.compute = self.compute
        data_base = Signal(32)
        with m.If(self.start & ~ctrl.busy):
            m.d.sync += data_base.eq(self.data_base)
        m.d.comb += [ctrl.start.eq(self.start), ctrl.insn_base.eq(self.insn_base),
                     self.busy.eq(ctrl.busy), self.done.eq(ctrl.done), self.error.eq(ctrl.error),
                     self.error_index.eq(ctrl.error_index), self.cycles.eq(ctrl.cycles),
                     load.base.eq(data_base), store.base.eq(data_base)]
        wiring.connect(m, wiring.flipped(self.imem), ctrl.imem)
        for unit, port in ((load, ctrl.load), (store, ctrl.store), (compute, ctrl.compute)):
            m.d.comb += [unit.start.eq(port.start), unit.insn.eq(port.insn), port.done.eq(unit.done)]
        m.d.comb += ctrl.compute.array_ready.eq(compute.array_ready)
        # dmem: reads from the load module, writes from the store module.
        for name, member in self.dmem.signature.members.items():
            source = load.axi if name.startswith("ar") or name[0] == "r" else store.axi
            ours, theirs = getattr(self.dmem, name), getattr(source, name)
            m.d.comb += ours.eq(theirs) if member.flow == Out else theirs.eq(ours)

        # On an FPGA the scratchpads go to block RAM even when small: Yosys would put A's and PARAM's
        # short memories in LUT RAM, whose read multiplexers and write fan-out crowd the routing.
        block = {"ram_style": "block"}
        for name, banks, words in (("a", p.rows, g.a_words), ("b", p.cols, g.b_words)):
            for t in range(banks * w):
                sram = m.submodules[f"{name}_bank{t // w}_lane{t % w}"] = SRAM(shape=8, depth=words, init=[],
                                                                              attrs=block)
                _wire(m, sram, [(getattr(load, f"{name}_we")[t], getattr(load, f"{name}_addr")[t],
                                 getattr(load, f"{name}_data")[t])],
                      [(getattr(compute, f"{name}_ren"), getattr(compute, f"{name}_raddr")[t // w],
                        getattr(compute, f"{name}_rdata")[t])])
        for lane in range(p.cols):
            acc = m.submodules[f"acc_lane{lane}"] = MultiPortMemory(width=32, depth=g.acc_words, write_ports=3,
                                                                    read_ports=4, scratchpad=True)
            writes = [(load.acc_we[lane], load.acc_addr[lane], load.acc_data[lane]),
                      (compute.mm_acc_we, compute.mm_acc_waddr, compute.mm_acc_wdata[lane]),
                      (compute.acc_we[lane], compute.acc_waddr, compute.acc_wdata[lane])]
            reads = [(store.acc_ren, store.acc_raddr[lane], store.acc_rdata[lane]),
                     (compute.mm_acc_ren, compute.mm_acc_raddr, compute.mm_acc_rdata[lane]),
                     (compute.acc_ren, compute.acc_raddr, compute.acc_rdata[lane]),
                     (compute.acc_ren, compute.acc_rbaddr, compute.acc_rbdata[lane])]
            _wire(m, acc, writes, reads)
            param = m.submodules[f"param_lane{lane}"] = SRAM(shape=128, depth=g.param_words, init=[], attrs=block)
            _wire(m, param, [(load.param_we[lane], load.param_addr[lane], load.param_data[lane])],
                  [(compute.mm_param_ren, compute.mm_param_raddr[lane], compute.mm_param_rdata[lane]),
                   (compute.param_ren, compute.param_raddr[lane], compute.param_rdata[lane])])
        return m


def _wire(m: Module, memory: SRAM | MultiPortMemory, writes, reads) -> None:
    """Connect ``(enable, address, data)`` write and read ports; every read is transparent for every write."""
    if isinstance(memory, MultiPortMemory):
        write_ports, read_ports = list(memory.write), list(memory.read)
    else:
        write_ports = [memory.write_port() for _ in writes]
        read_ports = [memory.read_port(transparent_for=write_ports) for _ in reads]
    for port, (en, addr, value) in zip(write_ports, writes, strict=True):
        m.d.comb += [port.en.eq(en), port.addr.eq(addr), port.data.eq(value)]
    for port, (en, addr, value) in zip(read_ports, reads, strict=True):
        m.d.comb += [port.en.eq(en), port.addr.eq(addr), value.eq(port.data)]
