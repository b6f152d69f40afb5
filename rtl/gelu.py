"""GELU unit: ``lanes`` Q.10 inputs per cycle through a fixed pipeline, bit for bit ``quant.gelu.int_gelu``."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.quant.errors import IntVitError
from intvit.quant.gelu import ERF_CLIP, ERF_POLY_A, ERF_POLY_A_SHIFT, GELU_INPUT_BITS, GELU_INPUT_FRAC_BITS

__all__ = ["Gelu", "GELU_PIPELINE_CYCLES"]

ONE = 1 << GELU_INPUT_FRAC_BITS
GELU_OUTPUT_BITS = 32
# Stages: s0 gap to the clip point, s1 its square, s2 erf, s3 the output product.
GELU_PIPELINE_CYCLES = 4


class Gelu(wiring.Component):
    """``lanes`` GELUs per cycle: Q.10 17-bit signed in, Q.21 INT32 out.

    Parameters
    ----------
    lanes : int
        Elements per beat.

    Attributes
    ----------
    i : In(stream.Signature(ArrayLayout(signed(17), lanes)))
        Q.10 inputs, already saturated to 17 bits by the requantiser.
    o : Out(stream.Signature(ArrayLayout(signed(32), lanes)))
        ``int_gelu`` of each lane, Q.21.

    Timing: a 4-stage pipeline (``latency``). A beat taken on rising edge ``t`` can leave
    on edge ``t + 4``; ``n`` back-to-back beats take ``n + 4`` edges from the first input
    handshake to the last output handshake, both counted (``sim.gelu.gelu_cycles``). While
    ``o`` is not taken the whole pipeline holds (``i.ready = ~o.valid | o.ready``).
    """

    def __init__(self, lanes: int = 8):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes <= 0:
            raise IntVitError(f"Gelu lanes must be a positive integer, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(GELU_INPUT_BITS), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(GELU_OUTPUT_BITS), lanes))),
        })

    @property
    def lanes(self) -> int:
        """Elements per beat."""
        return self._lanes

    @property
    def latency(self) -> int:
        """Pipeline depth: edges from an input handshake to its output being offered."""
        return GELU_PIPELINE_CYCLES

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        s0_valid, s1_valid, s2_valid = Signal(), Signal(), Signal()
        with m.If(advance):
            m.d.sync += [
                s0_valid.eq(self.i.valid), s1_valid.eq(s0_valid), s2_valid.eq(s1_valid),
                self.o.valid.eq(s2_valid),
            ]
        for lane in range(self._lanes):
            x = self.i.payload[lane]
            s0_x, s1_x, s2_x = (Signal(signed(GELU_INPUT_BITS), name=f"s{k}_x{lane}") for k in range(3))
            s0_gap = Signal(unsigned(ERF_CLIP.bit_length()), name=f"s0_gap{lane}")
            s1_square = Signal(unsigned(2 * ERF_CLIP.bit_length()), name=f"s1_square{lane}")
            s2_erf = Signal(signed(GELU_INPUT_FRAC_BITS + 2), name=f"s2_erf{lane}")
            magnitude = Mux(x < 0, -x, x)
            magnitude_clipped = Mux(magnitude < ERF_CLIP, magnitude, ERF_CLIP)
            erf_magnitude = ONE - ((s1_square * ERF_POLY_A) >> ERF_POLY_A_SHIFT)
            with m.If(advance):
                m.d.sync += [
                    s0_x.eq(x),
                    s0_gap.eq(ERF_CLIP - magnitude_clipped),
                    s1_x.eq(s0_x),
                    s1_square.eq((s0_gap * s0_gap) >> GELU_INPUT_FRAC_BITS),
                    s2_x.eq(s1_x),
                    # sign(0) = 0 in int_erf, but x = 0 zeroes the product either way.
                    s2_erf.eq(Mux(s1_x < 0, -erf_magnitude, erf_magnitude)),
                    self.o.payload[lane].eq(s2_x * (ONE + s2_erf)),
                ]
        return m
