"""Run a compiled program on the accelerator's RTL: Verilator, cocotb, cocotbext-axi's AxiRam.

``run_images(compiled, config, images, work_dir)`` builds ``rtl.system.System`` for the
program's geometry and the config's AXI port, writes the external-memory image (constants,
input, the instruction stream after them), and runs one Verilator simulation per image through
``harness.bench_system``, each in its own folder ``<work_dir>/image<N>``; the accelerator runs
free and Python only waits for ``done``. Images are independent: given a ``map_images``
(``intvit.cluster.ClusterMap``) they run on a cluster's workers, the model built once. AxiRam
is slowed to the config's ``memory.read_latency_cycles``/``write_latency_cycles`` (measured
on the first image and checked), so ``sim.schedule`` predicts the same memory. Each result
holds the RTL's INT32 logits (read from external memory as the executor reads its own) and
the accelerator's cycle counter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from intvit.harness.runner import build, run

__all__ = ["RtlImage", "TOP_NAME", "memory_layout", "external_memory", "build_system", "prepare_image", "simulate", "run_images"]

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


def external_memory(compiled, x: np.ndarray) -> tuple[int, np.ndarray]:
    """``(insn_base, memory)``: the bytes the accelerator's external memory starts with for input ``x``.

    Constants, the quantised input, zeroed activations and logits (``compiler.executor``'s
    machine), then the instruction stream at ``insn_base`` (:func:`memory_layout`).
    """
    from intvit.compiler.executor import load_machine

    insn_base, memory_bytes = memory_layout(compiled)
    stream = compiled.stream()
    data = load_machine(compiled, x).dram
    memory = np.zeros(memory_bytes, dtype=np.uint8)
    memory[:data.size] = data
    memory[insn_base:insn_base + len(stream)] = np.frombuffer(stream, dtype=np.uint8)
    return insn_base, memory


def build_system(compiled, config, work_dir: str | Path):
    """Elaborate ``System`` for ``compiled``'s geometry and ``config.memory`` and compile it with Verilator.

    The Verilog is kept in ``<work_dir>/build`` with a key (the ``SystemParams`` and a hash of
    the ``rtl`` package's sources): a later call with the same key skips elaboration (90 s for
    the 16x16 accelerator) and, the Verilog being unchanged, Verilator's build too. The reset
    is registered (``harness.runner.build``): ``bench_system`` holds it for cycles before ``start``.
    """
    from intvit.rtl.system import System, SystemParams

    params = SystemParams.from_geometry(compiled.geometry, config.memory)
    build_dir = Path(work_dir) / "build"
    key = json.dumps({"params": asdict(params), "rtl": _rtl_hash()}, sort_keys=True)
    source, key_path = build_dir / f"{TOP_NAME}.v", build_dir / "verilog.key"
    if source.exists() and key_path.exists() and key_path.read_text() == key:
        return build(None, toplevel=TOP_NAME, build_dir=build_dir, verilog_text=source.read_text(),
                     registered_reset="rst")
    key_path.unlink(missing_ok=True)
    model = build(System(params), toplevel=TOP_NAME, build_dir=build_dir, registered_reset="rst")
    key_path.write_text(key)
    return model


def _rtl_hash() -> str:
    import intvit.rtl

    digest = hashlib.sha256()
    for path in sorted(Path(intvit.rtl.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prepare_image(compiled, config, work_dir: str | Path, index: int, x: np.ndarray,
                  timeout_cycles: int = 50_000_000) -> dict:
    """Write image ``index``'s external memory into ``<work_dir>/image<index>``; its ``bench_system`` parameters.

    Image 0 also measures AxiRam's latencies (``run_images`` checks them against the config's).
    """
    run_dir = Path(work_dir) / f"image{index}"
    run_dir.mkdir(parents=True, exist_ok=True)
    insn_base, memory = external_memory(compiled, x)
    (run_dir / "memory.bin").write_bytes(memory.tobytes())
    return {"image": str(run_dir / "memory.bin"), "dump": str(run_dir / "dump.bin"), "memory_bytes": memory.size,
            "insn_base": insn_base, "data_base": 0, "timeout_cycles": timeout_cycles, "measure": index == 0,
            "read_latency": config.memory.read_latency_cycles, "write_latency": config.memory.write_latency_cycles}


def simulate(model, params: dict) -> dict:
    """Run ``harness.bench_system`` with ``params`` (``prepare_image``) in the image's folder; its results.

    Only plain data goes in and out, so a cluster's worker can run it.
    """
    run_dir = Path(params["image"]).parent
    result = run(model, "intvit.harness.bench_system", params, run_dir=run_dir)
    if result.get("error") or not result.get("done"):
        raise RuntimeError(f"{run_dir.name}: the accelerator stopped with error={result.get('error')} "
                           f"at instruction {result.get('error_index')} (done={result.get('done')}, "
                           f"timed out={result.get('timed_out')})")
    return result


def run_images(compiled, config, images: Iterable[np.ndarray], work_dir: str | Path, *, model=None,
               timeout_cycles: int = 50_000_000, progress: Callable | None = None,
               map_images: Callable | None = None) -> list[RtlImage]:
    """Run each INT8 image (``IntProgram.quantize_input`` output) on the RTL; see the module docstring.

    Parameters
    ----------
    compiled : CompiledProgram
    config : AcceleratorConfig
        Its ``memory`` section fixes the AXI width and burst length of the RTL.
    images : iterable of int8 arrays
    work_dir : path
        Build and run files go here; with ``map_images`` the workers must see it at the same path.
    model : harness.runner.Model, optional
        An already built model (``build_system``).
    progress : callable, optional
        Wraps the in-process loop over images (a progress bar); ``map_images`` counts its own.
    map_images : callable, optional
        ``map_images(fn, shared, items)`` -> ``[fn(*shared, item) for item in items]`` in order,
        e.g. on a cluster (``intvit.cluster.ClusterMap``); default: in this process. It runs
        only the simulations (:func:`simulate`): the memory images are written and the logits
        read back here.

    Returns
    -------
    list of RtlImage
        In the order of ``images``.
    """
    from intvit.compiler.executor import read_output

    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    model = model or build_system(compiled, config, work_dir)
    params = [prepare_image(compiled, config, work_dir, index, x, timeout_cycles) for index, x in enumerate(images)]
    if map_images is not None:
        results = map_images(simulate, (model,), params)
    else:
        results = [simulate(model, p) for p in (progress(params) if progress else params)]
    wanted = (config.memory.read_latency_cycles, config.memory.write_latency_cycles)
    measured = (results[0].get("read_latency"), results[0].get("write_latency")) if results else wanted
    if None not in measured and measured != wanted:
        raise RuntimeError(f"AxiRam answered with latencies {measured}, not the config's {wanted}")
    return [RtlImage(logits=read_output(compiled, np.frombuffer(Path(p["dump"]).read_bytes(), dtype=np.uint8)),
                     cycles=r["cycles"], read_latency=r.get("read_latency"), write_latency=r.get("write_latency"),
                     wall_s=r["wall_s"]) for p, r in zip(params, results)]
