"""The golden executor: runs an ``IntProgram`` op by op, in integers only, bit-exact and batched.

Every op kind maps to one integer kernel of ``quant``; the simulator executes the
same table, so the two cannot drift apart. No float value is created here: the input
is INT8 already (``IntProgram.quantize_input``) and every intermediate is an integer
array (a test walks the collected tensors and the module's source to prove it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from intvit.quant.errors import IntVitError
from intvit.quant.gelu import int_gelu
from intvit.quant.layernorm import int_layernorm
from intvit.quant.matmul import int_matmul
from intvit.quant.pool import int_average, int_token_mean
from intvit.quant.program import IntProgram, Op
from intvit.quant.requant import int_add, int_range, requantize
from intvit.quant.softmax import int_softmax

__all__ = ["KERNELS", "execute_op", "run_program", "saturation_counts"]


def _patchify(op, x):
    patch = op.attrs["patch"]
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)       # (B, C, gh, p, gw, p)
    x = x.transpose(0, 2, 4, 1, 3, 5)                               # (B, gh, gw, C, p, p): conv weight order
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


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
    "layernorm": lambda op, x, g, b, m, s: int_layernorm(
        x, g, b, m, s, (op.attrs["mean_multiplier"], op.attrs["mean_shift"],
                        op.attrs["var_multiplier"], op.attrs["var_shift"])),
    "add": lambda op, a, b: int_add(a, b, op.attrs["m_a"], op.attrs["m_b"], op.attrs["shift"]),
    "concat_token": _concat_token,
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "select_token": lambda op, x: np.ascontiguousarray(x[:, op.attrs["index"]]),
    "token_mean": lambda op, x: int_token_mean(x, op.attrs["start"]),
    "average": lambda op, a, b: int_average(a, b),
}


def execute_op(op: Op, env: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Run one op, reading operands from ``env`` (tensors) or ``constants``; returns its outputs."""
    try:
        args = [env[name] if name in env else constants[name] for name in op.inputs]
    except KeyError as exc:
        raise IntVitError(f"op {op.name!r}: operand {exc.args[0]!r} is neither a tensor nor a constant") from None
    result = KERNELS[op.kind](op, *args)
    return result if isinstance(result, tuple) else (result,)


def run_program(program: IntProgram, x: np.ndarray, *, collect: bool = False,
                ops: Iterable[Op] | None = None) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the program on a batch of INT8 images.

    Parameters
    ----------
    program : IntProgram
    x : int8 array (B, C, H, W), from ``program.quantize_input``
    collect : bool
        Also return every intermediate tensor by name (for SQNR reports and tests).
    ops : optional iterable of Op
        Run these instead of ``program.ops`` (e.g. wrapped in a progress bar).

    Returns
    -------
    INT32 logits (B, classes), and the dict of tensors when ``collect``.
    """
    if x.dtype != np.int8:
        raise IntVitError(f"run_program takes int8 images from IntProgram.quantize_input, got {x.dtype}")
    ops = list(program.ops if ops is None else ops)
    # Free each tensor after its last reader, so DeiT-Base batches fit comfortably in memory.
    last_reader = {name: i for i, op in enumerate(ops) for name in op.inputs}
    env = {"input": x}
    for i, op in enumerate(ops):
        env.update(zip(op.outputs, execute_op(op, env, program.constants)))
        if not collect:
            for name in op.inputs:
                if last_reader[name] == i and name != program.output:
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
