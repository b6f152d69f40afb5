"""Run a compiled program on the accelerator's RTL: Verilator, cocotb, cocotbext-axi's AxiRam.

``run_images(compiled, config, images, work_dir)`` builds ``rtl.system.System`` for the
program's geometry and the config's AXI port, writes the external-memory image (constants,
input, the instruction stream after them), and runs one Verilator simulation per image through
``harness.bench_system``; the accelerator runs free and Python only waits for ``done``. AxiRam
is slowed to the config's ``memory.read_latency_cycles``/``write_latency_cycles`` (measured
on the first image and checked), so ``sim.schedule`` predicts the same memory. Each result
holds the RTL's INT32 logits (read from external memory as the executor reads its own) and
the accelerator's cycle counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intvit.harness.runner import build, run

__all__ = ["RtlImage", "TOP_NAME", "memory_layout", "build_system", "run_images"]

TOP_NAME = "intvit_system"
INSN_ALIGN = 4096


@dataclass(frozen=True)
class RtlImage:
    """One image through the RTL."""

    logits: np.ndarray
    cycles: int
    read_latency: int | None
    write_latency: int | None
    wall_s: float


def memory_layout(compiled) -> tuple[int, int]:
    """``(insn_base, memory_bytes)``: the stream goes after the program's memory, 4 KiB aligned."""
    insn_base = -(-compiled.memory_bytes // INSN_ALIGN) * INSN_ALIGN
    size = insn_base + len(compiled.stream())
    return insn_base, -(-size // INSN_ALIGN) * INSN_ALIGN


def build_system(compiled, config, work_dir: str | Path):
    """Elaborate ``System`` for ``compiled``'s geometry and ``config.memory`` and compile it with Verilator."""
    from intvit.rtl.system import System, SystemParams

    params = SystemParams.from_geometry(compiled.geometry, config.memory)
    return build(System(params), toplevel=TOP_NAME, build_dir=Path(work_dir) / "build")


def run_images(compiled, config, images: Iterable[np.ndarray], work_dir: str | Path, *, model=None,
               timeout_cycles: int = 50_000_000, progress: Callable | None = None) -> list[RtlImage]:
    """Run each INT8 image (``IntProgram.quantize_input`` output) on the RTL; see the module docstring.

    Parameters
    ----------
    compiled : CompiledProgram
    config : AcceleratorConfig
        Its ``memory`` section fixes the AXI width and burst length of the RTL.
    images : iterable of int8 arrays
    work_dir : path
        Build and run files go here.
    model : harness.runner.Model, optional
        An already built model (``build_system``).
    """
    from intvit.compiler.executor import load_machine, read_output

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = model or build_system(compiled, config, work_dir)
    insn_base, memory_bytes = memory_layout(compiled)
    stream = compiled.stream()
    results = []
    for index, x in enumerate(progress(list(images)) if progress else images):
        machine = load_machine(compiled, x)
        memory = np.zeros(memory_bytes, dtype=np.uint8)
        memory[:machine.dram.size] = machine.dram
        memory[insn_base:insn_base + len(stream)] = np.frombuffer(stream, dtype=np.uint8)
        image_path, dump_path = work_dir / f"image{index}.bin", work_dir / f"dump{index}.bin"
        image_path.write_bytes(memory.tobytes())
        start = time.perf_counter()
        result = run(model, "intvit.harness.bench_system",
                     {"image": str(image_path), "dump": str(dump_path), "memory_bytes": memory_bytes,
                      "insn_base": insn_base, "data_base": 0, "timeout_cycles": timeout_cycles,
                      "measure": index == 0, "read_latency": config.memory.read_latency_cycles,
                      "write_latency": config.memory.write_latency_cycles})
        wall = time.perf_counter() - start
        if result.get("error") or not result.get("done"):
            raise RuntimeError(f"image {index}: the accelerator stopped with error={result.get('error')} "
                               f"at instruction {result.get('error_index')} (done={result.get('done')}, "
                               f"timed out={result.get('timed_out')})")
        if index == 0:
            measured = (result.get("read_latency"), result.get("write_latency"))
            wanted = (config.memory.read_latency_cycles, config.memory.write_latency_cycles)
            if None not in measured and measured != wanted:
                raise RuntimeError(f"AxiRam answered with latencies {measured}, not the config's {wanted}")
        dram = np.frombuffer(dump_path.read_bytes(), dtype=np.uint8)
        results.append(RtlImage(logits=read_output(compiled, dram), cycles=result["cycles"],
                                read_latency=result.get("read_latency"), write_latency=result.get("write_latency"),
                                wall_s=wall))
    return results
