"""The golden executor: runs an ``IntProgram`` op by op, in integers only, bit-exact and batched.

Every op kind maps to one integer kernel of ``quant``; the simulator executes the
same table, so the two cannot drift apart. Without ``collect``, a matmul and the ops that
only consume its accumulator (requant; requant, GELU, requant; requant, softmax) run as one
kernel of ``quant.fused``, which computes the same integers without storing the
intermediates (``FUSED``; tests run every program both ways). No float value is created here: the input
is INT8 already (``IntProgram.quantize_input``) and every intermediate is an integer
array (a test walks the collected tensors and the module's source to prove it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from intvit.quant.errors import IntVitError
from intvit.quant.fused import fusable_scale, matmul_gelu, matmul_requant, matmul_softmax
from intvit.quant.gelu import int_gelu
from intvit.quant.layernorm import int_layernorm
from intvit.quant.matmul import int_matmul
from intvit.quant.pool import int_average, int_token_mean
from intvit.quant.program import IntProgram, Op
from intvit.quant.requant import int_add, int_range, requantize
from intvit.quant.softmax import int_softmax

__all__ = ["FUSED", "KERNELS", "execute_op", "patch_rows", "run_program", "saturation_counts"]


def patch_rows(x: np.ndarray, patch: int) -> np.ndarray:
    """Images ``(B, C, H, W)`` as rows of ``patch x patch`` squares ``(B, H/p * W/p, C*p*p)``, in the
    order of the patch embedding's (convolution) weights: channel, pixel row, pixel column."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)       # (B, C, gh, p, gw, p)
    x = x.transpose(0, 2, 4, 1, 3, 5)                               # (B, gh, gw, C, p, p): conv weight order
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def _patchify(op, x):
    return patch_rows(x, op.attrs["patch"])


def _concat_token(op, x, token):
    token = np.broadcast_to(token.reshape(1, 1, -1), (x.shape[0], 1, x.shape[-1]))
    return np.concatenate([token, x], axis=1)


def _split_heads(op, x):
    b, n, three_d = x.shape
    heads = op.attrs["heads"]
    qkv = x.reshape(b, n, 3, heads, three_d // (3 * heads)).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, d)
    return tuple(np.ascontiguousarray(t) for t in qkv)


def _merge_heads(op, x):
    b, h, n, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(b, n, h * d))


KERNELS: dict[str, Callable] = {
    "patchify": _patchify,
    "matmul": lambda op, a, b, bias=None: int_matmul(a, b, bias, transpose_b=bool(op.attrs.get("transpose_b")),
                                                     name=op.name),
    "requant": lambda op, x, m, s: requantize(x, m, s, bits=op.attrs["bits"]),
    "softmax": lambda op, x: int_softmax(x),
    "gelu": lambda op, x: int_gelu(x),
    # A program's LayerNorm parameters are always its constants (``check_program``): cached.
    "layernorm": lambda op, x, g, b, m, s: int_layernorm(
        x, g, b, m, s, (op.attrs["mean_multiplier"], op.attrs["mean_shift"],
                        op.attrs["var_multiplier"], op.attrs["var_shift"]), cache=True),
    "add": lambda op, a, b: int_add(a, b, op.attrs["m_a"], op.attrs["m_b"], op.attrs["shift"]),
    "concat_token": _concat_token,
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "select_token": lambda op, x: np.ascontiguousarray(x[:, op.attrs["index"]]),
    "token_mean": lambda op, x: int_token_mean(x, op.attrs["start"]),
    "average": lambda op, a, b: int_average(a, b),
}


def _operands(op: Op, env: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return [env[name] if name in env else constants[name] for name in op.inputs]
    except KeyError as exc:
        raise IntVitError(f"op {op.name!r}: operand {exc.args[0]!r} is neither a tensor nor a constant") from None


def execute_op(op: Op, env: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Run one op, reading operands from ``env`` (tensors) or ``constants``; returns its outputs."""
    result = KERNELS[op.kind](op, *_operands(op, env, constants))
    return result if isinstance(result, tuple) else (result,)


def _matmul_arguments(chain, cache):
    mm = chain[0]
    return {"transpose_b": bool(mm.attrs.get("transpose_b")), "name": mm.name, "cache": cache}


# Op chains run as one kernel: kinds -> kernel(chain, a, b, bias, scales, cache), scales being the
# (multiplier, shift) pair of each requant in the chain, cache whether b and the scales are
# constants of the program (their float32 and lane forms are then kept between passes).
FUSED: dict[tuple[str, ...], Callable] = {
    ("matmul", "requant"): lambda chain, a, b, bias, scales, cache: matmul_requant(
        a, b, bias, *scales[0], chain[1].attrs["bits"], **_matmul_arguments(chain, cache)),
    ("matmul", "requant", "gelu", "requant"): lambda chain, a, b, bias, scales, cache: matmul_gelu(
        a, b, bias, scales[0], chain[1].attrs["bits"], scales[1], chain[3].attrs["bits"],
        **_matmul_arguments(chain, cache)),
    ("matmul", "requant", "softmax"): lambda chain, a, b, bias, scales, cache: matmul_softmax(
        a, b, bias, *scales[0], chain[1].attrs["bits"], **_matmul_arguments(chain, cache)),
}


def _chain_length(ops: list[Op], i: int, readers: Counter, keep: str) -> int:
    """The ops from ``ops[i]`` that run as one ``FUSED`` kernel (the longest chain; 1: none).

    Each op after the first must read its predecessor's output as its first operand, and be
    that output's only reader; the program's output is never an intermediate.
    """
    def consumes(j: int) -> bool:
        produced = ops[j - 1].outputs
        return (j < len(ops) and len(produced) == 1 and ops[j].inputs[:1] == produced
                and readers[produced[0]] == 1 and produced[0] != keep)

    if ops[i].kind != "matmul":                  # every chain starts at a matmul
        return 1
    for kinds in sorted(FUSED, key=len, reverse=True):
        if all(i + k < len(ops) and ops[i + k].kind == kind for k, kind in enumerate(kinds)) \
                and all(consumes(i + k) for k in range(1, len(kinds))):
            return len(kinds)
    return 1


def _run_fused(chain: list[Op], env: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> bool:
    """Run a chain as its ``FUSED`` kernel, storing its last output; False if a scale has another form."""
    a, b, *bias = _operands(chain[0], env, constants)
    channels = b.shape[-2 if chain[0].attrs.get("transpose_b") else -1]
    scales = [tuple(constants.get(name, env.get(name)) for name in op.inputs[1:]) for op in chain
              if op.kind == "requant"]
    if any(value is None for pair in scales for value in pair):
        return False
    if not all(fusable_scale(value, channels) for pair in scales for value in pair):
        return False
    kernel = FUSED[tuple(op.kind for op in chain)]
    # The weight and the scales are the program's own (a 4-D b, attention's K or V, is never cached).
    cache = (chain[0].inputs[1] in constants or np.ndim(b) != 2) and all(
        name in constants for op in chain[1:] for name in op.inputs[1:])
    env[chain[-1].output] = kernel(chain, a, b, bias[0] if bias else None, scales, cache)
    return True


# The chain layout of an op list, [(start, stop, tensors to free after it)], made once per list of
# Op objects (kept in the entry, so that their ids stay theirs). Planning cost ~1 ms a pass.
_PLANS: dict[tuple, tuple[tuple[Op, ...], list]] = {}
_PLANS_KEPT = 16


def _plan(ops: list[Op], output: str, collect: bool) -> list[tuple[int, int, list[str]]]:
    key = (tuple(map(id, ops)), output, collect, tuple(FUSED))
    entry = _PLANS.get(key)
    if entry is None:
        if len(_PLANS) >= _PLANS_KEPT:
            _PLANS.clear()
        # Free each tensor after its last reader, so DeiT-Base batches fit comfortably in memory.
        last_reader = {name: i for i, op in enumerate(ops) for name in op.inputs}
        readers = Counter(name for op in ops for name in op.inputs)
        layout, i = [], 0
        while i < len(ops):
            stop = i + (1 if collect else _chain_length(ops, i, readers, output))
            frees = [] if collect else [name for j in range(i, stop) for name in ops[j].inputs
                                        if last_reader[name] == j and name != output]
            layout.append((i, stop, frees))
            i = stop
        entry = _PLANS[key] = (tuple(ops), layout)
    return entry[1]


def run_program(program: IntProgram, x: np.ndarray, *, collect: bool = False,
                ops: Iterable[Op] | None = None) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the program on a batch of INT8 images.

    Parameters
    ----------
    program : IntProgram
    x : int8 array (B, C, H, W), from ``program.quantize_input``
    collect : bool
        Also return every intermediate tensor by name (for SQNR reports and tests); every op
        then runs on its own.
    ops : optional iterable of Op
        Run these instead of ``program.ops`` (e.g. wrapped in a progress bar).

    Returns
    -------
    INT32 logits (B, classes), and the dict of tensors when ``collect``.

    Notes
    -----
    The fused chains keep the float32 form of each weight and the lane form of each scale between
    passes (``quant.requant.derived``); those constant arrays are made read-only, so that writing
    into one raises rather than leaving a stale copy: replace a constant, do not edit it in place.
    """
    if x.dtype != np.int8:
        raise IntVitError(f"run_program takes int8 images from IntProgram.quantize_input, got {x.dtype}")
    ops = list(program.ops if ops is None else ops)
    env = {"input": x}
    for start, stop, frees in _plan(ops, program.output, collect):
        chain = ops[start:stop]
        if len(chain) == 1 or not _run_fused(chain, env, program.constants):
            for op in chain:
                env.update(zip(op.outputs, execute_op(op, env, program.constants)))
        for name in frees:
            env.pop(name, None)
    logits = env[program.output]
    return (logits, env) if collect else logits


def saturation_counts(program: IntProgram, env: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """For every requant/add/softmax output: (elements at a saturation bound, elements)."""
    counts = {}
    for op in program.ops:
        if op.kind in ("requant", "add", "softmax", "layernorm") and op.output in env:
            lo, hi = int_range(op.attrs.get("bits", 8))
            y = env[op.output]
            counts[op.output] = (int(np.count_nonzero((y == lo) | (y == hi))), int(y.size))
    return counts
