"""Accelerator configuration: one frozen record per unit, loaded from TOML with defaults.

A config file names only what it changes::

    clock_mhz = 400
    [matmul]
    rows = 32
    cols = 32
    dataflow = "ws"
    [buffers]
    weight_bytes = 131072

Every field is checked when the record is built; a file's mistakes come back as one line
that names the file and the dotted field (``accel.toml: matmul.rows must be a positive
integer, not 0``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intvit.quant.errors import IntVitError
from intvit.sim.energy import EnergyTable

__all__ = [
    "DATAFLOWS",
    "MatMulConfig",
    "UnitConfig",
    "BufferConfig",
    "MemoryConfig",
    "AcceleratorConfig",
    "load_config",
    "config_from_dict",
    "dump_config",
    "read_user_text",
]

DATAFLOWS = ("os", "ws", "is")
KIB = 1024
MAX_CONFIG_BYTES = 1 << 20
# Sections that hold a UnitConfig: the element-wise pipelines behind the MatMul unit.
ELEMENTWISE_UNITS = ("requant", "softmax", "gelu", "layernorm")
AXI_DATA_BITS = (32, 64, 128, 256, 512, 1024)


# Size guards: beyond these a configuration describes no buildable accelerator, and the
# closed forms' floats (or the RTL's elaboration) would overflow or run without end.
MAX_ARRAY_SIDE = 1 << 16          # rows, cols
MAX_LANES = 1 << 16
MAX_LATENCY = 1 << 20             # cycles
MAX_BUFFER_BYTES = 1 << 40        # 1 TiB of SRAM per operand
MAX_CLOCK_MHZ = 1e6               # 1 THz
MIN_BANDWIDTH = 1e-3              # one byte per thousand cycles; inf is allowed (no memory limit)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any, limit: int) -> None:
    if not _is_int(value) or value <= 0:
        raise IntVitError(f"{name} must be a positive integer, not {_short(value)}")
    if value > limit:
        raise IntVitError(f"{name} must be at most {limit}, not {_short(value)}")


def _check_nonnegative_int(name: str, value: Any, limit: int) -> None:
    if not _is_int(value) or value < 0:
        raise IntVitError(f"{name} must be a non-negative integer, not {_short(value)}")
    if value > limit:
        raise IntVitError(f"{name} must be at most {limit}, not {_short(value)}")


def _check_positive_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise IntVitError(f"{name} must be a positive number, not {_short(value)}")
    if not low <= value <= high:
        bounds = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
        raise IntVitError(f"{name} must be {bounds}, not {_short(value)}")


def _short(value: Any) -> str:
    """``repr`` of a value for a one-line message, huge integers abbreviated."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


@dataclass(frozen=True)
class MatMulConfig:
    """The systolic MatMul unit.

    Parameters
    ----------
    rows, cols : int
        Array height R and width C in processing elements.
    dataflow : str
        ``"os"`` (output stationary), ``"ws"`` (weight stationary) or ``"is"`` (input stationary).
    latency : int
        Pipeline register stages between the operand SRAMs and the array, paid once per fold.
    """

    rows: int = 16
    cols: int = 16
    dataflow: str = "os"
    latency: int = 1

    def __post_init__(self):
        _check_positive_int("rows", self.rows, MAX_ARRAY_SIDE)
        _check_positive_int("cols", self.cols, MAX_ARRAY_SIDE)
        if self.dataflow not in DATAFLOWS:
            raise IntVitError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not {_short(self.dataflow)}")
        _check_nonnegative_int("latency", self.latency, MAX_LATENCY)


@dataclass(frozen=True)
class UnitConfig:
    """An element-wise pipeline (requantiser, softmax, GELU, LayerNorm).

    Parameters
    ----------
    lanes : int
        Elements accepted per cycle.
    latency : int
        Fixed cycles on top of the streaming beats: for the streaming requantiser and GELU the
        pipeline depth; for Softmax and LayerNorm, which need a whole row before the first
        output, the first row's cost of the row reductions and their divisions (further rows
        follow one period of the unit's slowest stage apart: ``sim.softmax`` and
        ``sim.layernorm``). Defaults are the RTL's measured values.
    """

    lanes: int = 8
    latency: int = 4

    def __post_init__(self):
        _check_positive_int("lanes", self.lanes, MAX_LANES)
        _check_nonnegative_int("latency", self.latency, MAX_LATENCY)


@dataclass(frozen=True)
class BufferConfig:
    """On-chip SRAM sizes in bytes, one per MatMul operand (SCALE-Sim's ifmap, filter, ofmap).

    The compiled accelerator (``docs/isa.md``) uses them as its scratchpads: ``ifmap_bytes``
    is A (``matmul.rows`` banks), ``weight_bytes`` is B (``matmul.cols`` banks),
    ``ofmap_bytes`` is ACC (words of ``matmul.cols`` INT32), and ``param_bytes`` holds the
    128-bit per-channel parameter records.
    """

    ifmap_bytes: int = 64 * KIB
    weight_bytes: int = 64 * KIB
    ofmap_bytes: int = 64 * KIB
    param_bytes: int = 32 * KIB

    def __post_init__(self):
        for name in ("ifmap_bytes", "weight_bytes", "ofmap_bytes", "param_bytes"):
            _check_positive_int(name, getattr(self, name), MAX_BUFFER_BYTES)


@dataclass(frozen=True)
class MemoryConfig:
    """Off-chip interface.

    ``bandwidth_bytes_per_cycle`` is the op-level model's (``sim.simulator``); the compiled
    schedule (``sim.schedule``) models the AXI4 port instead: ``axi_data_bits`` per beat, a
    read burst costing ``read_latency_cycles`` plus its beats, a write burst
    ``write_latency_cycles`` plus its beats, at most ``max_burst_beats`` beats per burst.
    """

    bandwidth_bytes_per_cycle: int | float = 16
    axi_data_bits: int = 128
    read_latency_cycles: int = 8
    write_latency_cycles: int = 8
    max_burst_beats: int = 16

    def __post_init__(self):
        _check_positive_number("bandwidth_bytes_per_cycle", self.bandwidth_bytes_per_cycle, MIN_BANDWIDTH, math.inf)
        if self.axi_data_bits not in AXI_DATA_BITS:
            raise IntVitError(f"axi_data_bits must be one of {', '.join(map(str, AXI_DATA_BITS))}, "
                              f"not {self.axi_data_bits!r}")
        _check_nonnegative_int("read_latency_cycles", self.read_latency_cycles, MAX_LATENCY)
        _check_nonnegative_int("write_latency_cycles", self.write_latency_cycles, MAX_LATENCY)
        if not _is_int(self.max_burst_beats) or not 1 <= self.max_burst_beats <= 256:
            raise IntVitError(f"max_burst_beats must be an integer in 1..256 (AXI4 INCR), not {self.max_burst_beats!r}")


def _default_latency(unit: str) -> int:
    # The unit models take their latencies from the integer kernels' constants, whose modules load numba:
    # imported when a config is built, not with the command line (``intvit --help`` stays well under 1 s).
    from intvit.sim import gelu, layernorm, requant, softmax

    return {"requant": lambda: requant.REQUANT_LATENCY, "softmax": softmax.softmax_latency,
            "gelu": lambda: gelu.GELU_LATENCY, "layernorm": layernorm.layernorm_latency}[unit]()


@dataclass(frozen=True)
class AcceleratorConfig:
    """The whole accelerator: clock, MatMul array, element-wise units, SRAMs, memory interface.

    Parameters
    ----------
    clock_mhz : float
        Clock frequency, used only to turn cycles into time.
    matmul : MatMulConfig
    requant, softmax, gelu, layernorm : UnitConfig
    buffers : BufferConfig
    memory : MemoryConfig
    energy : EnergyTable
        Energy per action and leakage (``sim.energy``); only for energy reports.
    """

    clock_mhz: int | float = 500
    matmul: MatMulConfig = field(default_factory=MatMulConfig)
    # The units' latencies as their cycle models predict them for the RTL (one place each).
    requant: UnitConfig = field(default_factory=lambda: UnitConfig(lanes=8, latency=_default_latency("requant")))
    softmax: UnitConfig = field(default_factory=lambda: UnitConfig(lanes=8, latency=_default_latency("softmax")))
    gelu: UnitConfig = field(default_factory=lambda: UnitConfig(lanes=8, latency=_default_latency("gelu")))
    layernorm: UnitConfig = field(default_factory=lambda: UnitConfig(lanes=8, latency=_default_latency("layernorm")))
    buffers: BufferConfig = field(default_factory=BufferConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    energy: EnergyTable = field(default_factory=EnergyTable)

    def __post_init__(self):
        _check_positive_number("clock_mhz", self.clock_mhz, 1e-6, MAX_CLOCK_MHZ)
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise IntVitError(f"{name} must be a {kind.__name__}, not {getattr(self, name)!r}")

    def with_(self, **changes: Any) -> AcceleratorConfig:
        """A copy with some fields changed, for sweeps.

        Keys are field names, with ``__`` between section and field for nested ones:
        ``cfg.with_(matmul__rows=32, matmul__dataflow="ws", clock_mhz=800)``. Errors name
        the field in dotted form (``matmul.rows must be a positive integer, not 0``).
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                nested.setdefault(section, {})[name] = value
            else:
                top[key] = value
        data = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        data["clock_mhz"] = self.clock_mhz
        for section, values in nested.items():
            if section not in SECTIONS:
                raise IntVitError(f"unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
            data[section].update(values)
        data.update(top)
        return config_from_dict(data)


SECTIONS: dict[str, type] = {
    "matmul": MatMulConfig,
    **{name: UnitConfig for name in ELEMENTWISE_UNITS},
    "buffers": BufferConfig,
    "memory": MemoryConfig,
    "energy": EnergyTable,
}


def _build_section(section: str, kind: type, values: Any, default: Any) -> Any:
    if not isinstance(values, dict):
        raise IntVitError(f"[{section}] must be a table, not {values!r}")
    known = [f.name for f in dataclasses.fields(kind)]
    for key in values:
        if key not in known:
            raise IntVitError(f"unknown key {section}.{key}; expected one of {', '.join(known)}")
    try:
        return dataclasses.replace(default, **values)
    except IntVitError as exc:
        raise IntVitError(f"{section}.{exc}") from None


def config_from_dict(data: dict[str, Any], source: str | None = None) -> AcceleratorConfig:
    """Build an AcceleratorConfig from nested dicts (as TOML gives), defaults for what is missing.

    Parameters
    ----------
    data : dict
        ``{"clock_mhz": ..., "matmul": {...}, "buffers": {...}, ...}``.
    source : str, optional
        File name put in front of error messages.
    """
    try:
        defaults = AcceleratorConfig()
        known = ("clock_mhz", *SECTIONS)
        for key in data:
            if key not in known:
                raise IntVitError(f"unknown key {key}; expected one of {', '.join(known)}")
        sections = {
            name: _build_section(name, kind, data[name], getattr(defaults, name))
            for name, kind in SECTIONS.items()
            if name in data
        }
        if "clock_mhz" in data:
            sections["clock_mhz"] = data["clock_mhz"]
        return dataclasses.replace(defaults, **sections)
    except IntVitError as exc:
        if source is None:
            raise
        raise IntVitError(f"{source}: {exc}") from None


def load_config(path: str | Path | None = None) -> AcceleratorConfig:
    """Read an accelerator TOML file; ``None`` gives the built-in defaults.

    Raises
    ------
    IntVitError
        For malformed TOML, unknown keys or invalid values, naming the file and field.
    """
    if path is None:
        return AcceleratorConfig()
    path = Path(path)
    text = read_user_text(path, MAX_CONFIG_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IntVitError(f"{path.name}: invalid TOML: {exc}") from None
    except RecursionError:
        raise IntVitError(f"{path.name}: invalid TOML: nested too deeply") from None
    return config_from_dict(data, source=path.name)


def read_user_text(path: str | Path, limit: int) -> str:
    """The UTF-8 text of a file a user gave (config, topology), refused if not text or over ``limit`` bytes."""
    path = Path(path)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise IntVitError(f"{path.name}: larger than {limit:,} bytes; not a plausible {path.suffix or 'text'} file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntVitError(f"{path.name}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None


def dump_config(config: AcceleratorConfig) -> str:
    """The config as TOML text that ``load_config`` reads back to an equal record."""
    lines = [f"clock_mhz = {config.clock_mhz!r}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for key, value in dataclasses.asdict(getattr(config, name)).items():
            if isinstance(value, tuple):        # the energy table's SRAM columns: TOML arrays
                value = list(value)
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value!r}")
    return "\n".join(lines) + "\n"
