"""Energy per inference: the simulator's action counts times a documented table of per-action energies.

Every number of the default table is a published 45 nm figure or is derived from the NanGate
45 nm open cell library (typical corner, 1.1 V, 25 C) and intvit's own synthesised RTL
(``intvit synth --target nangate45``); each is cited where it is defined. A config file
overrides any of them in an ``[energy]`` table::

    [energy]
    dram_pj_per_64bit = 2600.0          # the top of Horowitz's range instead of the bottom
    sram_sizes_bytes = [8192, 32768, 1048576]
    sram_read_pj_per_64bit = [10.0, 20.0, 100.0]

What is counted (``energy_report``), per op of the simulated program:

============= =========================================================================
action        count
============= =========================================================================
MAC           M*K*N per GEMM, the products that happen (idle PEs and padded folds: none)
              at ``mult8_pj + add32_pj + mac_register_bits * register_pj_per_bit``
partial sum   WS/IS: (K folds - 1) * M * N INT32 additions in the output buffer
SRAM          bytes read and written per buffer (ifmap, weight, ofmap), each buffer at the
              per-byte cost of its size; off-chip fills and spills also access the SRAM
DRAM          off-chip bytes at ``dram_pj_per_64bit / 8``
element       elements through the Requantiser, Softmax, GELU and LayerNorm, each at its
              unit's ``*_pj_per_element``
leakage       the whole accelerator's leakage power times the latency: every PE leaks for
              the whole inference, busy or idle, and so does every lane
============= =========================================================================

The SRAM cost per byte at a buffer size interpolates Horowitz's three points log-log (and
extends the nearest segment beyond them); writes cost ``sram_write_pj_per_64bit``, the
read figures unless set (Horowitz gives reads only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from intvit.quant.errors import IntVitError

__all__ = ["EnergyTable", "OpEnergy", "EnergyReport", "sram_pj_per_byte", "sram_area_um2", "area_um2", "derive_unit_costs", "leakage_mw", "energy_report", "ELEMENT_UNITS"]

ELEMENT_UNITS = ("requant", "softmax", "gelu", "layernorm")
BYTES_PER_64BIT = 8
PJ_PER_UJ = 1e6

# Derivation of the per-element, area and leakage defaults, measured with
# ``intvit synth --target nangate45`` on the default accelerator (16x16 array, 8 lanes per unit,
# MNIST row lengths: softmax rows of 50, LayerNorm width 64), NanGate 45 nm typical corner,
# 2026-12-01, with the double-buffered PE (acc and result registers, 83 flip-flops):
#   PE                 1,102.57 um2    23.42 uW leakage
#   requant (8 lanes) 76,003.65 um2  1,713.74 uW        softmax   61,717.32 um2  1,351.38 uW
#   gelu              25,806.52 um2    571.97 uW        layernorm 187,152.01 um2  4,087.25 uW
# Switching energy density: the PE's energy per MAC (below, 0.654 pJ) over its area, 0.593 fJ per
# um2 of logic per active cycle. An element through a unit is charged that density times the
# unit's area per lane: the element exercises its lane's logic once (Softmax's and LayerNorm's
# three passes use different parts of it), the row-wise dividers and row buffers shared by the
# lanes included; for LayerNorm, whose row buffers are most of its area, an upper estimate.
PE_AREA_UM2 = 1102.57
PE_LEAKAGE_NW = 23415.647
UNIT_LANE_AREA_UM2 = {"requant": 9500.456, "softmax": 7714.665, "gelu": 3225.815, "layernorm": 23394.002}
UNIT_LANE_LEAKAGE_NW = {"requant": 214217.237, "softmax": 168922.258, "gelu": 71496.503, "layernorm": 510906.244}

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V:
HOROWITZ_MULT8_PJ = 0.2            # 8-bit integer multiply
HOROWITZ_ADD32_PJ = 0.1            # 32-bit integer add
HOROWITZ_SRAM_SIZES = (8 * 1024, 32 * 1024, 1024 * 1024)    # cache sizes, bytes
HOROWITZ_SRAM_PJ_PER_64BIT = (10.0, 20.0, 100.0)            # 64-bit read from an 8 KB / 32 KB / 1 MB SRAM
HOROWITZ_DRAM_PJ_PER_64BIT = 1300.0  # DRAM 1.3-2.6 nJ per 64-bit access: the low end (= 640 pJ per 32 bits)
# SRAM area per bit: the 0.346 um2 6T cell of Intel's 45 nm process (Mistry et al., "A 45nm
# Logic Technology with High-k+Metal Gate Transistors, Strained Silicon, 9 Cu Interconnect
# Layers, 193nm Dry Patterning, and 100% Pb-free Packaging", IEDM 2007) over an assumed
# array efficiency of 50 % (decoders, sense amplifiers, I/O: an assumption, not a measurement).
SRAM_BITCELL_UM2 = 0.346
SRAM_ARRAY_EFFICIENCY = 0.5
SRAM_BIT_AREA_UM2 = SRAM_BITCELL_UM2 / SRAM_ARRAY_EFFICIENCY
# NanGate 45 nm DFF_X1 (stdcells.lib, typical): internal energy of the CK pin per clock cycle,
# rise 2.44 fJ + fall 4.50 fJ at the smallest input slew table point.
NANGATE45_DFF_PJ_PER_BIT = 0.00694
# Flip-flops a PE clocks per MAC: the INT32 accumulator, the forwarded INT8 a and b, and the
# valid, clear and last controls (rtl.pe.ProcessingElement). Its INT32 result register is
# written once per sum, not per MAC, and is left out.
PE_REGISTER_BITS = 51


def _check_number(name: str, value, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= 0 if positive else value < 0):
        raise IntVitError(f"{name} must be a {'positive' if positive else 'non-negative'} number, not {value!r}")


def _switching_pj_per_um2() -> float:
    """Energy per µm² of logic per active cycle, calibrated on the PE: its energy per MAC over its area."""
    return (HOROWITZ_MULT8_PJ + HOROWITZ_ADD32_PJ + PE_REGISTER_BITS * NANGATE45_DFF_PJ_PER_BIT) / PE_AREA_UM2


@dataclass(frozen=True)
class EnergyTable:
    """Energy per action in pJ and leakage power in nW; defaults cited in the module.

    Parameters
    ----------
    mult8_pj, add32_pj : float
        INT8 multiply, INT32 add (Horowitz ISSCC 2014, 45 nm).
    register_pj_per_bit : float
        One flip-flop clocked once (NanGate45 DFF_X1 clock-pin energy).
    mac_register_bits : int
        Flip-flops a PE clocks per MAC.
    sram_sizes_bytes, sram_read_pj_per_64bit : sequences of equal length
        SRAM read energy per 64 bits at each size (Horowitz: 8 KB, 32 KB, 1 MB).
    sram_write_pj_per_64bit : sequence, optional
        Write energy per 64 bits at each size; the read figures when empty.
    dram_pj_per_64bit : float
        Off-chip access per 64 bits (Horowitz: 1.3-2.6 nJ).
    requant_pj_per_element, softmax_pj_per_element, gelu_pj_per_element, layernorm_pj_per_element : float
        One element through the unit (derived from its NanGate45 area per lane).
    pe_leakage_nw : float
        Leakage of one PE.
    requant_leakage_nw, softmax_leakage_nw, gelu_leakage_nw, layernorm_leakage_nw : float
        Leakage per lane of each unit.
    sram_leakage_nw_per_bit : float
        SRAM leakage per bit; 0 by default (not modelled: no per-bit figure to cite).
    pe_area_um2 : float
        One PE on NanGate45 (synthesised).
    requant_area_um2, softmax_area_um2, gelu_area_um2, layernorm_area_um2 : float
        Area per lane of each unit (synthesised at the default configuration).
    sram_bit_area_um2 : float
        SRAM macro area per bit: a 45 nm 6T cell over an assumed array efficiency.
    """

    mult8_pj: float = HOROWITZ_MULT8_PJ
    add32_pj: float = HOROWITZ_ADD32_PJ
    register_pj_per_bit: float = NANGATE45_DFF_PJ_PER_BIT
    mac_register_bits: int = PE_REGISTER_BITS
    sram_sizes_bytes: tuple = HOROWITZ_SRAM_SIZES
    sram_read_pj_per_64bit: tuple = HOROWITZ_SRAM_PJ_PER_64BIT
    sram_write_pj_per_64bit: tuple = ()
    dram_pj_per_64bit: float = HOROWITZ_DRAM_PJ_PER_64BIT
    requant_pj_per_element: float = round(_switching_pj_per_um2() * UNIT_LANE_AREA_UM2["requant"], 4)
    softmax_pj_per_element: float = round(_switching_pj_per_um2() * UNIT_LANE_AREA_UM2["softmax"], 4)
    gelu_pj_per_element: float = round(_switching_pj_per_um2() * UNIT_LANE_AREA_UM2["gelu"], 4)
    layernorm_pj_per_element: float = round(_switching_pj_per_um2() * UNIT_LANE_AREA_UM2["layernorm"], 4)
    pe_leakage_nw: float = PE_LEAKAGE_NW
    requant_leakage_nw: float = UNIT_LANE_LEAKAGE_NW["requant"]
    softmax_leakage_nw: float = UNIT_LANE_LEAKAGE_NW["softmax"]
    gelu_leakage_nw: float = UNIT_LANE_LEAKAGE_NW["gelu"]
    layernorm_leakage_nw: float = UNIT_LANE_LEAKAGE_NW["layernorm"]
    sram_leakage_nw_per_bit: float = 0.0
    pe_area_um2: float = PE_AREA_UM2
    requant_area_um2: float = UNIT_LANE_AREA_UM2["requant"]
    softmax_area_um2: float = UNIT_LANE_AREA_UM2["softmax"]
    gelu_area_um2: float = UNIT_LANE_AREA_UM2["gelu"]
    layernorm_area_um2: float = UNIT_LANE_AREA_UM2["layernorm"]
    sram_bit_area_um2: float = SRAM_BIT_AREA_UM2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("sram_") and f.name.endswith(("_bytes", "_64bit")):
                if not isinstance(value, (list, tuple)):
                    raise IntVitError(f"{f.name} must be a list of numbers, not {value!r}")
                object.__setattr__(self, f.name, tuple(value))
                for item in value:
                    _check_number(f.name, item, positive=True)
            elif f.name == "mac_register_bits":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise IntVitError(f"mac_register_bits must be a non-negative integer, not {value!r}")
            else:
                _check_number(f.name, value, positive="leakage" not in f.name)
        sizes = self.sram_sizes_bytes
        if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise IntVitError(f"sram_sizes_bytes must be increasing sizes, not {list(sizes)!r}")
        for name in ("sram_read_pj_per_64bit", *(("sram_write_pj_per_64bit",) if self.sram_write_pj_per_64bit else ())):
            if len(getattr(self, name)) != len(sizes):
                raise IntVitError(f"{name} must have one value per sram_sizes_bytes entry ({len(sizes)}), "
                                  f"not {len(getattr(self, name))}")

    @property
    def mac_pj(self) -> float:
        """One MAC in a PE: the multiply, the INT32 accumulation and the PE's clocked flip-flops."""
        return self.mult8_pj + self.add32_pj + self.mac_register_bits * self.register_pj_per_bit


def sram_area_um2(table: EnergyTable, bits: int) -> float:
    """Area of an SRAM macro of ``bits`` bits in µm² (``table.sram_bit_area_um2`` per bit)."""
    return bits * table.sram_bit_area_um2


def area_um2(config) -> float:
    """Estimated area of an accelerator configuration in µm²: PEs, unit lanes and buffers, each times
    its synthesised (or SRAM-model) area in ``config.energy``. ``intvit synth --target nangate45``
    gives the synthesised figure; this linear model leaves out the array's skew registers and
    control, a few per cent."""
    table, m = config.energy, config.matmul
    logic = m.rows * m.cols * table.pe_area_um2
    logic += sum(getattr(config, unit).lanes * getattr(table, f"{unit}_area_um2") for unit in ELEMENT_UNITS)
    return logic + sram_area_um2(table, 8 * sum(dataclasses.asdict(config.buffers).values()))


def derive_unit_costs(table: EnergyTable, pe_area_um2: float, units: dict[str, tuple[float, float, int]]) -> dict:
    """``[energy]`` entries for synthesised units: per-element energy, per-lane leakage and area.

    Parameters
    ----------
    table : EnergyTable
        Gives the PE's energy per MAC (``mac_pj``).
    pe_area_um2 : float
        The synthesised PE's area: with ``mac_pj``, the switching energy per µm² per active cycle.
    units : dict of unit -> (area in µm², leakage in nW, lanes)
    """
    density = table.mac_pj / pe_area_um2
    entries = {"pe_area_um2": round(pe_area_um2, 3)}
    for unit, (area, leakage, lanes) in units.items():
        entries[f"{unit}_pj_per_element"] = round(density * area / lanes, 4)
        entries[f"{unit}_leakage_nw"] = round(leakage / lanes, 3)
        entries[f"{unit}_area_um2"] = round(area / lanes, 3)
    return entries


def sram_pj_per_byte(table: EnergyTable, size_bytes: int, *, write: bool = False) -> float:
    """Energy of one byte read (or written) in an SRAM of ``size_bytes``: log-log interpolation of the table.

    Beyond the table's smallest or largest size the nearest segment is extended; a one-point
    table is a constant.
    """
    sizes = table.sram_sizes_bytes
    energies = (table.sram_write_pj_per_64bit or table.sram_read_pj_per_64bit) if write else table.sram_read_pj_per_64bit
    if len(sizes) == 1:
        return energies[0] / BYTES_PER_64BIT
    i = min(max(next((j for j, s in enumerate(sizes) if s >= size_bytes), len(sizes) - 1), 1), len(sizes) - 1)
    slope = math.log(energies[i] / energies[i - 1]) / math.log(sizes[i] / sizes[i - 1])
    return energies[i - 1] * (size_bytes / sizes[i - 1]) ** slope / BYTES_PER_64BIT


@dataclass(frozen=True)
class OpEnergy:
    """Dynamic energy of one op in pJ, by action."""

    name: str
    unit: str
    mac_pj: float = 0.0
    add_pj: float = 0.0
    element_pj: float = 0.0
    sram_pj: float = 0.0
    dram_pj: float = 0.0

    @property
    def total_pj(self) -> float:
        return self.mac_pj + self.add_pj + self.element_pj + self.sram_pj + self.dram_pj


@dataclass(frozen=True)
class EnergyReport:
    """Energy of one simulated batch.

    Attributes
    ----------
    ops : list of OpEnergy
        Dynamic energy per op, program order.
    leakage_pj : float
        Leakage of the whole accelerator over the latency.
    leakage_mw : float
        Its leakage power.
    latency_s : float
    batch : int
    """

    ops: list
    leakage_pj: float
    leakage_mw: float
    latency_s: float
    batch: int

    @property
    def dynamic_pj(self) -> float:
        return sum(op.total_pj for op in self.ops)

    @property
    def total_pj(self) -> float:
        return self.dynamic_pj + self.leakage_pj

    @property
    def energy_uj(self) -> float:
        """Energy per image in µJ."""
        return self.total_pj / PJ_PER_UJ / self.batch

    @property
    def average_power_mw(self) -> float:
        return self.total_pj * 1e-9 / self.latency_s

    def by_unit(self) -> dict[str, float]:
        """µJ per batch by unit (each op's arithmetic, SRAM and DRAM energy), plus ``leakage``."""
        totals: dict[str, float] = {}
        for op in self.ops:
            if op.total_pj:
                totals[op.unit] = totals.get(op.unit, 0.0) + op.total_pj / PJ_PER_UJ
        return {**totals, "leakage": self.leakage_pj / PJ_PER_UJ}

    def by_action(self) -> dict[str, float]:
        """µJ per batch by action: MACs, INT32 additions, unit elements, SRAM, DRAM, leakage."""
        return {"mac": sum(op.mac_pj for op in self.ops) / PJ_PER_UJ,
                "add": sum(op.add_pj for op in self.ops) / PJ_PER_UJ,
                "element": sum(op.element_pj for op in self.ops) / PJ_PER_UJ,
                "sram": sum(op.sram_pj for op in self.ops) / PJ_PER_UJ,
                "dram": sum(op.dram_pj for op in self.ops) / PJ_PER_UJ,
                "leakage": self.leakage_pj / PJ_PER_UJ}

    def by_layer(self, groups: list[str]) -> dict[str, float]:
        """Dynamic µJ per batch by model part; ``groups`` gives each op's part (``sim.report.op_groups``)."""
        totals: dict[str, float] = {}
        for group, op in zip(groups, self.ops):
            totals[group] = totals.get(group, 0.0) + op.total_pj / PJ_PER_UJ
        return totals

    def as_dict(self, groups: list[str]) -> dict:
        return {"energy_uj": self.energy_uj, "batch_energy_uj": self.total_pj / PJ_PER_UJ,
                "dynamic_uj": self.dynamic_pj / PJ_PER_UJ, "leakage_uj": self.leakage_pj / PJ_PER_UJ,
                "leakage_mw": self.leakage_mw, "average_power_mw": self.average_power_mw,
                "by_unit_uj": self.by_unit(), "by_action_uj": self.by_action(), "by_layer_uj": self.by_layer(groups),
                "ops": [{"name": op.name, "unit": op.unit, "energy_pj": op.total_pj,
                         **{k: getattr(op, k) for k in ("mac_pj", "add_pj", "element_pj", "sram_pj", "dram_pj")}}
                        for op in self.ops]}


def leakage_mw(config) -> float:
    """Leakage power of an accelerator configuration in mW: every PE, every unit lane, every SRAM bit."""
    table, m, b = config.energy, config.matmul, config.buffers
    nanowatts = m.rows * m.cols * table.pe_leakage_nw
    nanowatts += sum(getattr(config, unit).lanes * getattr(table, f"{unit}_leakage_nw") for unit in ELEMENT_UNITS)
    nanowatts += 8 * sum(dataclasses.asdict(b).values()) * table.sram_leakage_nw_per_bit
    return nanowatts * 1e-6


def energy_report(program, report, mode: str = "native") -> EnergyReport:
    """Energy of a simulated batch from its action counts and ``report.config.energy``.

    Parameters
    ----------
    program : IntProgram
        The program that was simulated (shapes and bit widths of its tensors).
    report : SimReport
        From ``sim.simulator.simulate``; one ``OpReport`` per op of ``program``.
    mode : {"native", "scalesim"}
        The MatMul convention the simulation used (it decides the per-buffer traffic).
    """
    from intvit.sim.matmul import MatMulUnit
    from intvit.sim.simulator import UNIT_OF, gemm_shape

    config = report.config
    table = config.energy
    buffers = config.buffers
    if len(report.ops) != len(program.ops):
        raise IntVitError(f"the report has {len(report.ops)} ops, the program {len(program.ops)}")
    shapes = program.tensor_shapes(report.batch)
    unit = MatMulUnit(config, mode)
    dram_per_byte = table.dram_pj_per_64bit / BYTES_PER_64BIT
    read = {name: sram_pj_per_byte(table, getattr(buffers, f"{name}_bytes")) for name in ("ifmap", "weight", "ofmap")}
    write = {name: sram_pj_per_byte(table, getattr(buffers, f"{name}_bytes"), write=True)
             for name in ("ifmap", "weight", "ofmap")}
    ops = []
    for op, costed in zip(program.ops, report.ops):
        if op.kind == "matmul":
            count, m, k, n = gemm_shape(op, shapes)
            layer = unit.layer(m, k, n, name=op.name)
            # WS and IS sum partial outputs over K folds in the ofmap buffer: read, add, write back.
            k_folds = layer.plan.row_folds if layer.dataflow in ("ws", "is") else 1
            partial_adds = (k_folds - 1) * m * n
            partial_reads = layer.out_sram_writes * (k_folds - 1) // k_folds
            sram = (layer.a_sram_reads * read["ifmap"] + layer.b_sram_reads * read["weight"]
                    + layer.out_sram_writes * write["ofmap"] + partial_reads * read["ofmap"]
                    # off-chip fills are written into their buffers, results read out of theirs
                    + layer.a_dram_bytes * write["ifmap"] + layer.b_dram_bytes * write["weight"]
                    + layer.out_dram_bytes * read["ofmap"])
            ops.append(OpEnergy(op.name, "matmul", mac_pj=count * layer.macs * table.mac_pj,
                                add_pj=count * partial_adds * table.add32_pj, sram_pj=count * sram,
                                dram_pj=count * layer.dram_bytes * dram_per_byte))
        elif UNIT_OF.get(op.kind) in ELEMENT_UNITS:
            name = UNIT_OF[op.kind]
            elements = math.prod(shapes[op.output])
            written = elements * (4 if op.output in program.tensors and program.tensors[op.output].bits > 8 else 1)
            ops.append(OpEnergy(op.name, name, element_pj=elements * getattr(table, f"{name}_pj_per_element"),
                                sram_pj=(costed.sram_bytes - written) * read["ifmap"] + written * write["ifmap"],
                                dram_pj=costed.dram_bytes * dram_per_byte))
        else:
            ops.append(OpEnergy(op.name, "none"))
    latency_s = report.latency_us * 1e-6
    power = leakage_mw(config)
    return EnergyReport(ops, power * 1e9 * latency_s, power, latency_s, report.batch)
