"""The units side by side: one instance of every unit, each unit's streams brought out as ports.

``Accelerator`` is what ``intvit verilog --units`` writes and the unit-level benches drive (one
attention block in ``tests/rtl/test_attention_block.py``); the complete accelerator, with the
controller, the AXI4 load/store modules and the scratchpads that feed these units from a
compiled program, is ``rtl.system.System``. The top fixes the units' parameters from plain
numbers (the command line reads them from the accelerator config; ``rtl`` never imports
``sim``). Its ports are the units' own signatures, one member per unit, so Verilog names read
``<unit>__<port>__<field>`` (``matmul__operands__payload``, ``requant__results__ready``).
``flat_ports`` gives any component single-underscore port names (``System``'s ``dmem_araddr``).
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

from amaranth import Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Out, connect, flipped

from intvit.quant.errors import IntVitError
from intvit.rtl.gelu import Gelu
from intvit.rtl.layernorm import LayerNorm
from intvit.rtl.matmul import MatMulArray
from intvit.rtl.requant import PROGRAM_WIDTHS, Requantiser
from intvit.rtl.softmax import Softmax

__all__ = ["TopParams", "Accelerator", "unit_builders", "flat_ports"]


@dataclass(frozen=True)
class TopParams:
    """Elaboration parameters of the accelerator.

    Parameters
    ----------
    rows, cols : int
        MatMul array shape.
    requant_lanes, softmax_lanes, gelu_lanes, layernorm_lanes : int
        Values per beat of each element-wise unit.
    max_length : int
        Longest softmax row: the model's token count (attention rows are ``tokens`` long).
    width : int
        LayerNorm row width: the model's ``embed_dim`` (fixes its divisors and buffer depth).
    """

    rows: int
    cols: int
    requant_lanes: int
    softmax_lanes: int
    gelu_lanes: int
    layernorm_lanes: int
    max_length: int
    width: int

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IntVitError(f"{name} must be a positive integer, not {value!r}")


def unit_builders(params: TopParams) -> dict[str, Callable[[], wiring.Component]]:
    """A builder of a fresh instance per unit, keyed by the name the top and the manifest use.

    The requantiser is built with its residual input and every width of the integer program
    (``rtl.requant.PROGRAM_WIDTHS``: 8, 17, 32, chosen per beat), so the one unit serves plain
    requantisation (``b = 0``) to INT8 activations, Q.10 GELU inputs and Q.12 softmax scores,
    and the residual additions.
    """
    return {
        "matmul": lambda: MatMulArray(rows=params.rows, cols=params.cols),
        "requant": lambda: Requantiser(lanes=params.requant_lanes, widths=PROGRAM_WIDTHS, residual=True),
        "softmax": lambda: Softmax(lanes=params.softmax_lanes, max_length=params.max_length),
        "gelu": lambda: Gelu(lanes=params.gelu_lanes),
        "layernorm": lambda: LayerNorm(lanes=params.layernorm_lanes, width=params.width),
    }


class Accelerator(wiring.Component):
    """Every unit of the accelerator under one module.

    Parameters
    ----------
    params : TopParams

    Attributes
    ----------
    matmul, requant, softmax, gelu, layernorm : Out(unit.signature)
        Each unit's interface, unchanged (an ``In`` stream of the unit is an input of the
        top). Timing is the unit's own; the top adds no registers.
    """

    def __init__(self, params: TopParams):
        if not isinstance(params, TopParams):
            raise IntVitError(f"params must be a TopParams, not {type(params).__name__}")
        self._params = params
        self._units = {name: build() for name, build in unit_builders(params).items()}
        super().__init__({name: Out(unit.signature) for name, unit in self._units.items()})

    @property
    def params(self) -> TopParams:
        return self._params

    def elaborate(self, platform):
        m = Module()
        for name, unit in self._units.items():
            m.submodules[name] = unit
            connect(m, flipped(getattr(self, name)), unit)
        return m


def flat_ports(component: wiring.Component, separator: str = "_") -> dict:
    """``verilog.convert``'s ``ports`` for ``component``: signature paths joined by ``separator``.

    Amaranth joins paths with ``__`` (``m_axi__araddr``); SoC tools and cocotbext-axi's
    ``AxiBus.from_prefix(dut, "m_axi")`` expect AMBA names (``m_axi_araddr``), so the
    accelerator is written with single underscores.
    """
    # Amaranth infers each port's direction from its drivers.
    return {separator.join(map(str, path)): (Value.cast(value), None)
            for path, _flow, value in component.signature.flatten(component)}
