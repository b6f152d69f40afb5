"""cocotb bench: one attention block of the ViT through the accelerator's units, in program order.

The design is the accelerator top (``rtl.top.Accelerator``) alone: its one requantiser
saturates each op's beats to the op's width (INT8 activations, INT32 Q.12 scores), chosen per
beat. The bench does data layout only (tiling into folds and lanes, splitting and
merging heads); every arithmetic step is an RTL unit, and each unit's output is the next
unit's input::

    embed -> LayerNorm (norm1) -> MatMul (qkv) -> Requantiser -> split heads
          -> per head: MatMul (q k^T) -> Requantiser (Q.12, 32 bits) -> Softmax
                       -> MatMul (probs v) -> Requantiser
          -> merge heads -> MatMul (proj) -> Requantiser -> Requantiser residual add

Parameters (``bench_params``): ``block`` (tensor name prefix, ``blocks.0``), ``rows``,
``cols``, ``lanes``, ``heads``, ``inputs`` (an ``.npz`` of the block input ``embed`` and the
program's constants under their program names), ``residual`` (``m_a``, ``m_b``, ``shift``)
and ``outputs`` (where the RTL's tensors are written, under the golden executor's names,
batch axis dropped). Hands back ``cycles``: per program op, first input beat accepted to
last output beat delivered, both included, with no stalls.
"""

from __future__ import annotations

import cocotb
import numpy as np
from bench_matmul import tile, untile
from bench_requant import beats_of, results_of
from bench_streams import pack, reset, stream_through, unpack
from runner import bench_params, bench_result

from intvit.rtl.layernorm import LAYERNORM_PARAM_LAYOUT
from intvit.rtl.requant import PROGRAM_WIDTHS

INT8_BITS, INT32_BITS = 8, 32
PARAM_FIELDS = tuple((name, LAYERNORM_PARAM_LAYOUT[name].shape.width) for name in ("gamma", "beta", "multiplier",
                                                                                     "shift"))
PARAM_BITS = sum(bits for _, bits in PARAM_FIELDS)
# Every stream the bench may leave idle: inputs start invalid, outputs not ready.
IDLE_VALID = ("matmul__operands", "requant__operands", "softmax__i", "gelu__i", "layernorm__i", "layernorm__params")
IDLE_READY = ("matmul__results", "requant__results", "softmax__o", "gelu__o", "layernorm__o")


async def layernorm(dut, x: np.ndarray, gamma, beta, multiplier, shift, lanes: int) -> tuple[np.ndarray, int]:
    """Load the per-channel parameters, then normalise the rows of ``x`` (tokens, width)."""
    tokens, width = x.shape
    beats = -(-width // lanes)
    addr_bits = (beats - 1).bit_length()
    columns = {"gamma": gamma, "beta": beta, "multiplier": multiplier, "shift": shift}
    words = []
    for beat in range(beats):
        word = 0
        for lane, channel in enumerate(range(beat * lanes, min((beat + 1) * lanes, width))):
            offset = lane * PARAM_BITS
            for name, bits in PARAM_FIELDS:            # StructLayout order, low bits first
                word |= (int(columns[name][channel]) & ((1 << bits) - 1)) << offset
                offset += bits
        words.append({"layernorm__params__payload": beat | word << addr_bits})
    await stream_through(dut, words, 0, source="layernorm__params", sink="layernorm__o")

    padded = np.zeros((tokens, beats * lanes), dtype=np.int64)
    padded[:, :width] = x
    row_beats = [{"layernorm__i__payload": pack(beat, INT8_BITS)} for beat in padded.reshape(-1, lanes)]
    run = await stream_through(dut, row_beats, len(row_beats), source="layernorm__i", sink="layernorm__o")
    out = np.stack([unpack(word, INT8_BITS, lanes) for word in run.outputs]).reshape(tokens, -1)[:, :width]
    return out, run.cycles


async def matmul(dut, jobs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int,
                 cols: int) -> tuple[list[np.ndarray], int]:
    """``a @ b + bias`` for every job; each job's folds back to back, the jobs one after another.

    The simulator costs per-head products as separate GEMMs, so the cycles are the sum of each
    job's first operand beat to last result row.
    """
    results, cycles = [], 0
    for a, b, bias in jobs:
        beats = [{"matmul__operands__payload": word} for word in tile(a, b, bias, rows, cols)]
        count = -(-a.shape[0] // rows) * -(-b.shape[1] // cols) * rows
        run = await stream_through(dut, beats, count, source="matmul__operands", sink="matmul__results")
        results.append(untile(run.outputs, a.shape[0], b.shape[1], rows, cols)[0])
        cycles += run.cycles
    return results, cycles


async def requant(dut, x: np.ndarray, multiplier, shift, lanes: int, bits: int, b: np.ndarray | None = None,
                  multiplier_b=0) -> tuple[np.ndarray, int]:
    """Requantise ``x`` element-wise to ``bits`` on the top's requantiser, adding the residual ``b`` if given.

    Scales broadcast against ``x`` (per channel or scalar); ``b = 0`` makes a plain requantisation.
    """
    vectors = {"x": x.reshape(-1),
               "multiplier": np.broadcast_to(multiplier, x.shape).reshape(-1),
               "shift": np.broadcast_to(shift, x.shape).reshape(-1),
               "b": np.zeros(x.size, dtype=np.int64) if b is None else b.reshape(-1),
               "multiplier_b": np.broadcast_to(multiplier_b, x.shape).reshape(-1),
               "bits": np.full(x.size, bits)}
    beats = [{"requant__operands__payload": beat["operands__payload"]}
             for beat in beats_of(vectors, lanes, True, PROGRAM_WIDTHS)]
    run = await stream_through(dut, beats, len(beats), source="requant__operands", sink="requant__results")
    values, _ = results_of(run.outputs, lanes, max(PROGRAM_WIDTHS), x.size)
    return values.reshape(x.shape), run.cycles


async def softmax(dut, scores: np.ndarray, lanes: int) -> tuple[np.ndarray, int]:
    """Softmax over the last axis of ``scores``, one row after another."""
    length = scores.shape[-1]
    beats_per_row = -(-length // lanes)
    padded = np.zeros((*scores.shape[:-1], beats_per_row * lanes), dtype=np.int64)
    padded[..., :length] = scores
    beats = [{"softmax__i__payload": pack(beat, INT32_BITS), "softmax__length": length}
             for beat in padded.reshape(-1, lanes)]
    run = await stream_through(dut, beats, len(beats), source="softmax__i", sink="softmax__o")
    probs = np.stack([unpack(word, INT8_BITS, lanes) for word in run.outputs])
    return probs.reshape(*scores.shape[:-1], -1)[..., :length], run.cycles


@cocotb.test()
async def attention_block(dut):
    p = bench_params()
    block, rows, cols, lanes, heads = p["block"], p["rows"], p["cols"], p["lanes"], p["heads"]
    const = dict(np.load(p["inputs"]))
    c = lambda name: const[f"{block}.{name}"]                     # noqa: E731
    for name in IDLE_VALID:
        getattr(dut, f"{name}__valid").value = 0
    for name in IDLE_READY:
        getattr(dut, f"{name}__ready").value = 0
    await reset(dut)
    out, cycles = {}, {}

    def keep(name: str, value: np.ndarray) -> np.ndarray:
        out[f"{block}.{name}"] = value
        return value

    embed = const["embed"]                                              # (tokens, D)
    tokens, dim = embed.shape
    norm1, spent = await layernorm(dut, embed, c("norm1.gamma"), c("norm1.beta"), c("norm1.multiplier"),
                                   c("norm1.shift"), lanes)
    keep("norm1", norm1)
    cycles[f"{block}.norm1"] = spent

    (acc,), spent = await matmul(dut, [(norm1, c("attn.qkv.weight"), c("attn.qkv.bias"))], rows, cols)
    keep("attn.qkv.acc", acc)
    cycles[f"{block}.attn.qkv"] = spent
    qkv, spent = await requant(dut, acc, c("attn.qkv.multiplier"), c("attn.qkv.shift"), lanes, INT8_BITS)
    keep("attn.qkv", qkv)
    cycles[f"{block}.attn.qkv.requant"] = spent
    q, k, v = qkv.reshape(tokens, 3, heads, dim // heads).transpose(1, 2, 0, 3)   # 3 x (heads, tokens, d)
    keep("attn.q", q), keep("attn.k", k), keep("attn.v", v)

    no_bias = np.zeros(tokens, dtype=np.int64)
    accs, spent = await matmul(dut, [(q[h], k[h].T, no_bias) for h in range(heads)], rows, cols)
    keep("attn.qk.acc", np.stack(accs))
    cycles[f"{block}.attn.qk"] = spent
    scores, spent = await requant(dut, out[f"{block}.attn.qk.acc"], c("attn.qk.multiplier"), c("attn.qk.shift"),
                                  lanes, INT32_BITS)
    keep("attn.scores", scores)
    cycles[f"{block}.attn.qk.requant"] = spent
    probs, spent = await softmax(dut, scores, lanes)
    keep("attn.probs", probs)
    cycles[f"{block}.attn.softmax"] = spent

    no_bias = np.zeros(dim // heads, dtype=np.int64)
    accs, spent = await matmul(dut, [(probs[h], v[h], no_bias) for h in range(heads)], rows, cols)
    keep("attn.av.acc", np.stack(accs))
    cycles[f"{block}.attn.av"] = spent
    av, spent = await requant(dut, out[f"{block}.attn.av.acc"], c("attn.av.multiplier"), c("attn.av.shift"),
                              lanes, INT8_BITS)
    keep("attn.av", av)
    cycles[f"{block}.attn.av.requant"] = spent
    context = keep("attn.context", av.transpose(1, 0, 2).reshape(tokens, dim))     # (tokens, heads * d)

    (acc,), spent = await matmul(dut, [(context, c("attn.proj.weight"), c("attn.proj.bias"))], rows, cols)
    keep("attn.proj.acc", acc)
    cycles[f"{block}.attn.proj"] = spent
    proj, spent = await requant(dut, acc, c("attn.proj.multiplier"), c("attn.proj.shift"), lanes, INT8_BITS)
    keep("attn.proj", proj)
    cycles[f"{block}.attn.proj.requant"] = spent

    residual = p["residual"]
    total, spent = await requant(dut, embed, residual["m_a"], residual["shift"], lanes, INT8_BITS, b=proj,
                                 multiplier_b=residual["m_b"])
    keep("residual", total)
    cycles[f"{block}.residual"] = spent

    np.savez(p["outputs"], **out)
    bench_result(cycles=cycles)
