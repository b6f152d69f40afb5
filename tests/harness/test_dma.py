"""The DMA engine with a scratchpad on Verilator against cocotbext-axi's AxiRam: random strided round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from intvit.harness.runner import build, run
from intvit.quant.errors import IntVitError
from intvit.rtl.dma import AxiSignature, Dma, DmaCommand
from intvit.rtl.scratchpad import Scratchpad

HERE = Path(__file__).resolve().parent


class DmaHarness(wiring.Component):
    """The DMA with both command streams brought out, its scratchpad ports on one Scratchpad."""

    def __init__(self, data_width: int, sp_words: int):
        self.dma = Dma(data_width=data_width, sp_addr_width=(sp_words - 1).bit_length())
        self.sp = Scratchpad(sp_words, data_width)
        layout = DmaCommand(32, self.sp.addr_width, 16)
        super().__init__({"load": In(stream.Signature(layout)), "store": In(stream.Signature(layout)),
                          "load_busy": Out(1), "store_busy": Out(1), "error": Out(1),
                          "m_axi": Out(AxiSignature(32, data_width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dma, m.submodules.sp = self.dma, self.sp
        wiring.connect(m, wiring.flipped(self.load), self.dma.load)
        wiring.connect(m, wiring.flipped(self.store), self.dma.store)
        wiring.connect(m, wiring.flipped(self.m_axi), self.dma.m_axi)
        wiring.connect(m, self.dma.sp_write, self.sp.write[0])
        wiring.connect(m, self.dma.sp_read, self.sp.read[0])
        m.d.comb += [self.load_busy.eq(self.dma.load_busy), self.store_busy.eq(self.dma.store_busy),
                     self.error.eq(self.dma.error)]
        return m


@pytest.mark.parametrize("data_width", [128, pytest.param(32, marks=pytest.mark.slow)])
def test_dma_round_trips(tmp_path, data_width):
    sp_words = 2048
    model = build(DmaHarness(data_width, sp_words), toplevel="dma_harness", build_dir=tmp_path)
    result = run(model, "bench_dma", {"seed": 1, "cases": 24, "data_width": data_width, "addr_width": 32,
                                      "sp_addr_width": 11, "count_width": 16, "sp_words": sp_words},
                 module_paths=(HERE,))
    # One word a cycle across burst boundaries: 300 words take 44 cycles more than 256 (two bursts vs one).
    by_words = {record["words"]: record for record in result["timing"]}
    for kind in ("load_cycles", "store_cycles"):
        assert by_words[300][kind] - by_words[256][kind] == 44, result["timing"]


def test_parameters_are_checked():
    with pytest.raises(IntVitError, match="data_width must be a power of two from 8 to 1024, not 96"):
        Dma(data_width=96)
    with pytest.raises(IntVitError, match=r"id_width must be an integer in \[1, 32\], not 0"):
        AxiSignature(id_width=0)
