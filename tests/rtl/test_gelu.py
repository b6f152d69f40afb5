"""Gelu: parameter checks, and the cocotb bench on Icarus against ``quant.gelu.int_gelu``."""

from __future__ import annotations

import numpy as np
import pytest
from runner import check_cycles
from sim_streams import simulate_stream

from intvit.quant.errors import IntVitError
from intvit.quant.gelu import int_gelu
from intvit.rtl.gelu import Gelu

SEED = 2024
CYCLE_ELEMENTS = [1, 7, 64, 197]


@pytest.mark.parametrize("lanes", [0, -1, 2.0, True])
def test_rejects_bad_lanes(lanes):
    with pytest.raises(IntVitError, match=r"^Gelu lanes must be a positive integer, not "):
        Gelu(lanes)


def test_properties():
    unit = Gelu(lanes=4)
    assert (unit.lanes, unit.latency) == (4, 4)
    with pytest.raises(AttributeError):
        unit.lanes = 2


@pytest.mark.parametrize("lanes, vectors", [pytest.param(1, 600, marks=pytest.mark.slow), (4, 4000),
                                             pytest.param(8, 1200, marks=pytest.mark.slow)])
def test_bench_matches_int_gelu(bench, lanes, vectors):
    unit = Gelu(lanes)
    run = bench(unit, toplevel="gelu", test_module="bench_gelu",
                params={"lanes": lanes, "latency": unit.latency, "seed": SEED + lanes, "vectors": vectors,
                            "cycle_elements": CYCLE_ELEMENTS})
    print(f"bench_gelu lanes={lanes} vectors={vectors}: {run.wall_s:.2f} s")
    check_cycles("gelu", run["records"])


def test_matches_int_gelu_in_amaranth_sim():
    x = np.array([-65536, -3000, -2562, -1024, -1, 0, 1, 700, 2562, 65535, 12345, -7])
    dut = Gelu(lanes=4)
    beats = [lambda ctx, beat=beat: ctx.set(dut.i.payload, beat.tolist()) for beat in x.reshape(-1, 4)]
    got = simulate_stream(dut, beats, len(beats))
    assert [v for word in got for v in word] == int_gelu(x).tolist()
