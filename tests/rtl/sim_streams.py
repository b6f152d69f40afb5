"""Amaranth-simulator driver for the non-linear units' streams: no external simulator needed.

``simulate_stream`` offers each input beat until taken and takes every output beat as
soon as it is valid, like the cocotb benches without stalls, so the quick tests here run
wherever Amaranth does while the Icarus benches carry the volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from amaranth.sim import Simulator

__all__ = ["simulate_stream"]


def simulate_stream(dut, beats: Sequence[Callable], outputs: int, *, max_cycles: int = 100_000) -> list:
    """Feed ``beats`` into ``dut.i`` and return the first ``outputs`` payloads of ``dut.o``.

    Each beat is a function ``beat(ctx)`` that sets ``dut.i.payload`` (and any side inputs).
    """
    got = []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        sent = 0
        for _ in range(max_cycles):
            if sent < len(beats):
                beats[sent](ctx)
            ctx.set(dut.i.valid, sent < len(beats))
            taken = sent < len(beats) and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            sent += bool(taken)
            if len(got) == outputs and sent == len(beats):
                return
        raise AssertionError(f"timeout: {sent}/{len(beats)} beats in, {len(got)}/{outputs} out")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return got
