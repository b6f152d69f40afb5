"""The golden executor is integer-only, batch-invariant and deterministic.

Integer-only is checked twice: on the values (every collected tensor and constant has an
integer dtype) and on the source (no float literal, float dtype name, float-valued numpy or
math function, or true division inside any runtime function of the executor and kernels).
"""

import ast
import inspect

import numpy as np
import pytest

from intvit import quant
import intvit.quant.executor
import intvit.quant.fused
import intvit.quant.gelu
import intvit.quant.layernorm
import intvit.quant.matmul
import intvit.quant.pool
import intvit.quant.requant
import intvit.quant.softmax
from intvit.quant.errors import IntVitError
from intvit.quant.executor import KERNELS, execute_op, run_program, saturation_counts
from intvit.quant.program import OP_KINDS, Op

INTEGER_KINDS = "iu"

# Quantisation-time helpers: they turn real scales into integers once, so floats are allowed.
QUANTISATION_TIME = {
    quant.requant: {"dyadic", "dyadic_value", "add_multipliers"},
    quant.layernorm: {"layernorm_divisors"},
    # The float32 GEMM carries integers exactly (the bound is quant.matmul.FLOAT32_EXACT_DEPTH,
    # tested bit for bit against the INT32 reference kernel in test_matmul).
    quant.matmul: {"_blas_products", "product_blocks", "float_weights"},
}
KERNEL_MODULES = (quant.executor, quant.requant, quant.matmul, quant.softmax, quant.gelu, quant.layernorm, quant.pool,
                  quant.fused)
# Float dtypes and conversions, as bare names or attributes (``float(x)``, ``np.float32``).
FLOAT_TYPES = {
    "float", "float16", "float32", "float64", "float128", "double", "single", "half", "longdouble",
    "floating", "complex", "complex64", "complex128", "math", "round",
}
# Float-valued numpy/math functions and constants, as attributes (``np.sqrt``); bare names like a
# local ``mean`` or ``std`` are integers in the kernels.
FLOAT_FUNCTIONS = {
    "true_divide", "divide", "mean", "average", "std", "var", "sqrt", "exp", "exp2", "log", "log2",
    "frexp", "ldexp", "rint", "around", "floor", "ceil", "erf", "tanh", "interp", "linspace",
    "geomspace", "nan", "inf", "pi", "e",
}


@pytest.fixture(scope="module")
def program(build_small_program):
    return build_small_program()


@pytest.fixture(scope="module")
def batch(program):
    return program.quantize_input(np.random.default_rng(1).normal(size=(7, 3, 16, 16)).astype(np.float32))


# ------------------------------------------------------------------------------------ source check
def float_uses(source: str) -> list[str]:
    """Every float construct in ``source``: literals, float names/attributes, ``/`` and ``/=``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, (float, complex)):
            found.append(f"{where}: float literal {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in FLOAT_TYPES:
            found.append(f"{where}: name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FLOAT_TYPES | FLOAT_FUNCTIONS:
            found.append(f"{where}: attribute .{node.attr}")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
            found.append(f"{where}: true division")
    return found


def runtime_sources():
    """(label, source) of the whole executor module and of every function of the kernel modules."""
    yield "quant/executor.py", inspect.getsource(quant.executor)
    for module in KERNEL_MODULES[1:]:
        allowed = QUANTISATION_TIME.get(module, set())
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name not in allowed:
                yield f"{module.__name__}.{node.name}", ast.get_source_segment(inspect.getsource(module), node)


def test_the_source_check_catches_float_arithmetic():
    snippets = ["y = x / 2", "x /= 2", "y = x * 0.5", "y = x.astype(np.float32)", "y = float(x)",
                "y = np.sqrt(x)", "y = math.floor(x)", "y = x.mean()", "y = np.float64"]
    for snippet in snippets:
        assert float_uses(snippet), snippet
    assert not float_uses("y = (x * m + (1 << (s - 1))) >> s // 3\nz = np.int64(x).astype(np.int32)")


def test_runtime_functions_use_no_float_arithmetic():
    checked = {label: float_uses(source) for label, source in runtime_sources()}
    expected = {"intvit.quant.requant.requantize", "intvit.quant.requant.int_add", "intvit.quant.requant.rounding_shift",
                "intvit.quant.requant.round_shift", "intvit.quant.requant.requantize_value",
                "intvit.quant.matmul.int_matmul", "intvit.quant.matmul._matmul_kernel",
                "intvit.quant.fused._requant_block", "intvit.quant.fused._gelu_block", "intvit.quant.fused._softmax_block",
                "intvit.quant.softmax.softmax_row",
                "intvit.quant.softmax.exp_value", "intvit.quant.softmax.int_softmax", "intvit.quant.softmax._softmax_rows",
                "intvit.quant.gelu.erf_value", "intvit.quant.gelu.gelu_value", "intvit.quant.layernorm.sqrt_value",
                "intvit.quant.layernorm.int_layernorm", "intvit.quant.layernorm._layernorm_rows"}
    assert expected <= checked.keys()
    assert {label: uses for label, uses in checked.items() if uses} == {}


def test_the_whitelist_is_exactly_the_float_helpers():
    # If a whitelisted helper stopped using floats, or a new float helper appeared, revisit the list.
    for module, names in QUANTISATION_TIME.items():
        for name in names:
            assert float_uses(inspect.getsource(getattr(module, name))), name


def test_kernel_constants_are_integers():
    for module in KERNEL_MODULES[1:]:
        for name in module.__all__:
            value = getattr(module, name)
            if name.isupper():
                assert isinstance(value, int) and not isinstance(value, bool), f"{module.__name__}.{name}"


# ------------------------------------------------------------------------------------- integer values
def test_every_constant_is_an_integer_array(program):
    for name, value in program.constants.items():
        assert isinstance(value, np.ndarray) and value.dtype.kind in INTEGER_KINDS, name
    for op in program.ops:
        assert all(isinstance(v, int) for v in op.attrs.values()), op.name


def test_every_intermediate_is_an_integer_array(program, batch):
    logits, env = run_program(program, batch, collect=True)
    produced = {name for op in program.ops for name in op.outputs}
    assert produced | {"input"} == env.keys()
    for name, value in env.items():
        assert isinstance(value, np.ndarray) and value.dtype.kind in INTEGER_KINDS, name
    assert logits.dtype == np.int32 and logits.shape == (len(batch), program.config.num_classes)
    assert np.array_equal(logits, run_program(program, batch))


def test_each_op_kind_produces_its_documented_dtype(program, batch):
    _, env = run_program(program, batch, collect=True)
    fixed = {"matmul": np.int32, "softmax": np.int8, "gelu": np.int32, "layernorm": np.int8, "add": np.int8,
             "patchify": np.int8, "concat_token": np.int8, "split_heads": np.int8, "merge_heads": np.int8,
             "select_token": np.int8}
    for op in program.ops:
        expected = (np.int8 if op.attrs["bits"] <= 8 else np.int32) if op.kind == "requant" else fixed[op.kind]
        for output in op.outputs:
            assert env[output].dtype == expected, (op.name, env[output].dtype)
        if op.kind == "requant":
            lo, hi = -(1 << (op.attrs["bits"] - 1)), (1 << (op.attrs["bits"] - 1)) - 1
            assert lo <= env[op.output].min() and env[op.output].max() <= hi, op.name
    # The pooling ops of DeiT-distilled and average-pooled heads: tests/quant/test_checkpoint_variants.py.
    assert set(KERNELS) == set(OP_KINDS) == {op.kind for op in program.ops} | {"token_mean", "average"}


# -------------------------------------------------------------------------------- batching, determinism
def test_batch_gives_the_same_logits_as_one_by_one(program, batch):
    together = run_program(program, batch)
    alone = np.concatenate([run_program(program, batch[i:i + 1]) for i in range(len(batch))])
    assert np.array_equal(together, alone)
    halves = np.concatenate([run_program(program, batch[:3]), run_program(program, batch[3:])])
    assert np.array_equal(together, halves)


def test_every_intermediate_is_batch_invariant(program, batch):
    _, together = run_program(program, batch, collect=True)
    _, alone = run_program(program, batch[4:5], collect=True)
    for name, value in alone.items():
        assert np.array_equal(together[name][4:5], value), name


def test_runs_are_deterministic(program, batch, build_small_program):
    first = run_program(program, batch)
    assert all(np.array_equal(first, run_program(program, batch)) for _ in range(3))
    rebuilt = build_small_program()
    assert np.array_equal(first, run_program(rebuilt, batch))


def test_ops_argument_runs_the_given_op_sequence(program, batch):
    seen = []

    def tracked():
        for op in program.ops:
            seen.append(op.name)
            yield op

    assert np.array_equal(run_program(program, batch, ops=tracked()), run_program(program, batch))
    assert seen == [op.name for op in program.ops]


def test_executor_errors(program, batch):
    with pytest.raises(IntVitError, match=r"^run_program takes int8 images from IntProgram\.quantize_input, "
                                          r"got float32$"):
        run_program(program, batch.astype(np.float32))
    op = Op("add", "broken", ("input", "nowhere"), ("out",), {"m_a": 1, "m_b": 1, "shift": 1})
    with pytest.raises(IntVitError, match=r"^op 'broken': operand 'nowhere' is neither a tensor nor a constant$"):
        execute_op(op, {"input": batch}, program.constants)


def test_saturation_counts(program, batch):
    _, env = run_program(program, batch, collect=True)
    counts = saturation_counts(program, env)
    kinds = {op.output: op.kind for op in program.ops}
    assert {kinds[name] for name in counts} == {"requant", "add", "softmax", "layernorm"}
    for name, (saturated, size) in counts.items():
        assert 0 <= saturated <= size == env[name].size, name
    # Probabilities are never negative, so only 127 (p ~ 1) can count; most are far below it.
    saturated, size = counts["blocks.0.attn.probs"]
    assert saturated == np.count_nonzero(env["blocks.0.attn.probs"] == 127) < size // 2
    # A forced saturation is counted.
    forced = dict(env, **{"blocks.0.norm1": np.full_like(env["blocks.0.norm1"], 127)})
    assert saturation_counts(program, forced)["blocks.0.norm1"] == (forced["blocks.0.norm1"].size,) * 2


def test_the_chain_layout_is_planned_once_per_op_list(program, batch):
    from intvit.quant import executor

    first = executor._plan(program.ops, program.output, False)
    assert executor._plan(list(program.ops), program.output, False) is first      # the same Op objects
    assert executor._plan(program.ops, program.output, True) is not first
    # Another op list (one op rebuilt) gets its own plan, and the result follows the ops.
    ops = list(program.ops)
    index = next(i for i, op in enumerate(ops) if op.kind == "requant")
    ops[index] = Op(ops[index].kind, ops[index].name, ops[index].inputs, ops[index].outputs,
                    {**ops[index].attrs, "bits": 4})
    assert executor._plan(ops, program.output, False) is not first
    assert not np.array_equal(run_program(program, batch, ops=ops), run_program(program, batch))
    assert np.array_equal(run_program(program, batch, ops=ops), run_program(program, batch, ops=ops, collect=True)[0])
