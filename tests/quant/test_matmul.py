"""INT8 x INT8 -> INT32 products: exact against an int64 reference, overflow guard, dtype errors."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intvit.quant import matmul, requant
from intvit.quant.errors import IntVitError
from intvit.quant.matmul import FLOAT32_EXACT_DEPTH, MAX_PRODUCT, check_accumulator, int_matmul, int_matmul_reference
from intvit.quant.requant import INT32_MAX

# Deepest dot product of INT8 values whose worst case still fits INT32 with no bias.
MAX_DEPTH = INT32_MAX // MAX_PRODUCT


def reference(a, b, bias=None, transpose_b=False):
    b = np.swapaxes(b, -1, -2) if transpose_b else b
    out = np.matmul(a.astype(np.int64), b.astype(np.int64))
    return out if bias is None else out + bias.astype(np.int64)


def int8(rng, shape, low=-128, high=127):
    return rng.integers(low, high, shape, endpoint=True, dtype=np.int8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 9), st.integers(0, 2**32 - 1),
       st.booleans(), st.booleans())
def test_random_shapes_exact(m, k, n, seed, transpose_b, with_bias):
    rng = np.random.default_rng(seed)
    a = int8(rng, (m, k))
    b = int8(rng, (n, k) if transpose_b else (k, n))
    bias = rng.integers(-(1 << 30), 1 << 30, n, dtype=np.int32) if with_bias else None
    out = int_matmul(a, b, bias, transpose_b=transpose_b)
    assert out.dtype == np.int32 and out.shape == (m, n)
    assert np.array_equal(out, reference(a, b, bias, transpose_b))


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_batched_operands_exact(lead, transpose_b):
    rng = np.random.default_rng(len(lead))
    a = int8(rng, (*lead, 17, 24))
    b = int8(rng, (*lead, 11, 24) if transpose_b else (*lead, 24, 11))
    out = int_matmul(a, b, transpose_b=transpose_b)
    assert out.shape == (*lead, 17, 11)
    assert np.array_equal(out, reference(a, b, transpose_b=transpose_b))


def test_batched_activations_with_shared_weight():
    rng = np.random.default_rng(7)
    a = int8(rng, (4, 197, 64))
    w = int8(rng, (64, 48))
    bias = rng.integers(-(1 << 20), 1 << 20, 48, dtype=np.int32)
    assert np.array_equal(int_matmul(a, w, bias), reference(a, w, bias))


def test_non_contiguous_operands():
    rng = np.random.default_rng(8)
    a = int8(rng, (20, 30))[::2, 1::2]               # (10, 15) strided view
    b = np.asfortranarray(int8(rng, (15, 6)))
    assert np.array_equal(int_matmul(a, b), reference(a, b))


def test_deepest_all_minus_128_reaches_the_largest_sum():
    a = np.full((2, MAX_DEPTH), -128, dtype=np.int8)
    b = np.full((MAX_DEPTH, 3), -128, dtype=np.int8)
    out = int_matmul(a, b)
    assert np.all(out == MAX_DEPTH * MAX_PRODUCT)
    # The remaining headroom filled by the bias lands exactly on INT32_MAX.
    headroom = INT32_MAX - MAX_DEPTH * MAX_PRODUCT
    out = int_matmul(a, b, np.full(3, headroom, dtype=np.int32))
    assert np.all(out == INT32_MAX)


def test_most_negative_sum():
    a = np.full((1, MAX_DEPTH), -128, dtype=np.int8)
    b = np.full((MAX_DEPTH, 1), 127, dtype=np.int8)
    bias = np.array([-(INT32_MAX - MAX_DEPTH * MAX_PRODUCT)], dtype=np.int32)
    assert int(int_matmul(a, b, bias)[0, 0]) == -MAX_DEPTH * 128 * 127 + int(bias[0])


def test_edge_values_table():
    values = np.array([-128, -127, -1, 0, 1, 126, 127], dtype=np.int8)
    a = np.repeat(values[:, None], 5, axis=1)         # (7, 5)
    b = np.repeat(values[None, :], 5, axis=0)         # (5, 7)
    assert np.array_equal(int_matmul(a, b), reference(a, b))


def test_overflow_is_detected_before_any_work():
    depth = MAX_DEPTH + 1
    a = np.zeros((1, depth), dtype=np.int8)
    b = np.zeros((depth, 1), dtype=np.int8)
    worst = depth * MAX_PRODUCT
    with pytest.raises(IntVitError, match=rf"^blocks\.0\.mlp\.fc1: INT32 accumulator can overflow "
                                          rf"\(K={depth}, worst-case \|sum\| {worst} > {INT32_MAX}\)$"):
        int_matmul(a, b, name="blocks.0.mlp.fc1")


def test_overflow_from_the_bias():
    a = np.zeros((1, 1), dtype=np.int8)
    bias = np.array([0, -INT32_MAX], dtype=np.int32)
    with pytest.raises(IntVitError, match=rf"^matmul: INT32 accumulator can overflow \(K=1, worst-case "
                                          rf"\|sum\| {INT32_MAX + MAX_PRODUCT} > {INT32_MAX}\)$"):
        int_matmul(a, np.zeros((1, 2), dtype=np.int8), bias)
    check_accumulator(MAX_DEPTH, None)
    check_accumulator(1, np.array([INT32_MAX - MAX_PRODUCT]))


@pytest.mark.parametrize("dtype_a, dtype_b", [(np.int16, np.int8), (np.int8, np.uint8), (np.float32, np.int8)])
def test_operands_must_be_int8(dtype_a, dtype_b):
    a = np.zeros((2, 3), dtype=dtype_a)
    b = np.zeros((3, 4), dtype=dtype_b)
    with pytest.raises(IntVitError, match=rf"^qk: operands must be int8, got {np.dtype(dtype_a)} "
                                          rf"and {np.dtype(dtype_b)}$"):
        int_matmul(a, b, name="qk")


def test_shape_errors():
    a = np.zeros((2, 3), dtype=np.int8)
    with pytest.raises(IntVitError, match=r"^matmul: inner dimensions differ \(\(2, 3\) @ \(4, 5\)\)$"):
        int_matmul(a, np.zeros((4, 5), dtype=np.int8))
    with pytest.raises(IntVitError, match=r"^matmul: inner dimensions differ \(\(2, 3\) @ \(5, 4\)\)$"):
        int_matmul(a, np.zeros((5, 4), dtype=np.int8), transpose_b=True)
    with pytest.raises(IntVitError, match=r"^matmul: batch dimensions differ \(\(2, 2, 3\) @ \(3, 3, 4\)\)$"):
        int_matmul(np.zeros((2, 2, 3), dtype=np.int8), np.zeros((3, 3, 4), dtype=np.int8))


# ------------------------------------------------------------- the BLAS path against the reference kernel
def test_float32_exact_depth_is_derived_from_the_significand():
    assert FLOAT32_EXACT_DEPTH * MAX_PRODUCT == 2**24 == 2 ** (np.finfo(np.float32).nmant + 1)
    # One more product could make a sum that float32 cannot hold: 2**24 + 1.
    assert np.float32(2**24) + np.float32(1) == np.float32(2**24)


# K at, just below and just past each chunk bound, and through several chunks.
DEPTHS = (1, 2, 63, FLOAT32_EXACT_DEPTH - 1, FLOAT32_EXACT_DEPTH, FLOAT32_EXACT_DEPTH + 1,
          2 * FLOAT32_EXACT_DEPTH - 1, 2 * FLOAT32_EXACT_DEPTH, 2 * FLOAT32_EXACT_DEPTH + 1, 3 * FLOAT32_EXACT_DEPTH + 7)


@pytest.mark.parametrize("depth", DEPTHS)
def test_all_minus_128_at_each_chunk_bound(depth):
    a = np.full((3, depth), -128, dtype=np.int8)
    b = np.full((depth, 5), -128, dtype=np.int8)
    out = int_matmul(a, b)
    assert np.array_equal(out, int_matmul_reference(a, b))
    assert np.all(out == depth * MAX_PRODUCT)


@pytest.mark.parametrize("depth, b_value", [(d, v) for d in DEPTHS for v in (-128, 127)
                                             if (d - 1) * abs(-128 * v) > 2**24])
def test_an_odd_sum_past_2_to_the_24_is_exact(depth, b_value):
    # depth - 1 extreme products and one +-1: an odd sum of magnitude > 2**24, which float32 cannot
    # hold; a chunk deeper than FLOAT32_EXACT_DEPTH would come back rounded to an even number.
    a = np.full((2, depth), -128, dtype=np.int8)
    b = np.full((depth, 3), b_value, dtype=np.int8)
    a[:, -1], b[-1] = 1, np.sign(-128 * b_value)
    expected = (depth - 1) * (-128 * b_value) + int(np.sign(-128 * b_value))
    assert abs(expected) > 2**24 and expected % 2
    assert np.all(int_matmul(a, b) == expected)
    assert np.all(int_matmul_reference(a, b) == expected)


@pytest.mark.parametrize("depth", DEPTHS)
def test_random_extremes_match_the_reference_kernel(depth):
    # Operands drawn from the edge values only: every product is +-2**14, +-128*127, 127*127 or small.
    rng = np.random.default_rng(depth)
    edges = np.array([-128, -127, -1, 0, 1, 127], dtype=np.int8)
    a = rng.choice(edges, (4, 9, depth))
    b = rng.choice(edges, (depth, 6))
    bias = rng.integers(-1000, 1000, 6, dtype=np.int32)
    assert np.array_equal(int_matmul(a, b, bias), int_matmul_reference(a, b, bias))
    assert np.array_equal(int_matmul(a, b, bias), reference(a, b, bias))


@pytest.mark.parametrize("gemm", ["torch", "numpy"])
def test_thousands_of_random_products_match_the_reference_kernel(gemm, monkeypatch):
    # Seeded random shapes over every layout: shared weights, per-batch operands, transposed B,
    # strided views; K spans one, two and three chunks. Both GEMMs: torch's when the process has
    # torch loaded, numpy's otherwise (hidden here by a None entry in sys.modules).
    import torch

    calls = []
    monkeypatch.setattr(torch, "matmul", lambda *args: calls.append(1) or torch.ops.aten.matmul(*args))
    if gemm == "numpy":
        monkeypatch.setitem(sys.modules, "torch", None)
    rng = np.random.default_rng(12)
    vectors = 0
    for case in range(60):
        depth = int(rng.choice([rng.integers(1, 200), rng.integers(900, 1100), rng.integers(2000, 3200)]))
        m, n = (int(v) for v in rng.integers(1, 24, 2))
        lead = [(), (3,), (2, 2)][case % 3]
        transpose_b = bool(case & 4)
        shared = bool(case & 8) or not lead
        a = int8(rng, (*lead, m, depth))
        b_shape = (n, depth) if transpose_b else (depth, n)
        b = int8(rng, b_shape if shared else (*lead, *b_shape))
        if case % 5 == 0:
            a = np.ascontiguousarray(a[..., ::-1])[..., ::1]
            b = np.asfortranarray(b)
        bias = rng.integers(-(1 << 24), 1 << 24, n, dtype=np.int32) if case % 2 else None
        out = int_matmul(a, b, bias, transpose_b=transpose_b)
        assert out.dtype == np.int32
        assert np.array_equal(out, int_matmul_reference(a, b, bias, transpose_b=transpose_b)), case
        vectors += out.size
    assert vectors > 5000
    assert bool(calls) == (gemm == "torch")


def test_derived_forms_are_made_once_per_array_and_pin_it_read_only():
    weight = np.arange(-60, 60, dtype=np.int8).reshape(12, 10)
    first = matmul.float_weights(weight, False)
    assert first.dtype == np.float32 and np.array_equal(first, weight)
    assert matmul.float_weights(weight, False) is first
    assert np.array_equal(matmul.float_weights(weight, True), weight.T)     # another form, another entry
    with pytest.raises(ValueError, match="read-only"):
        weight[0, 0] = 1                                                    # a write cannot leave it stale
    made = []
    assert requant.derived("t", (3, weight), lambda: made.append(1)) is None
    assert requant.derived("t", (3, weight), lambda: made.append(1)) is None and made == [1, 1]   # an int: not cached
    entries = len(requant._DERIVED)
    del weight, first
    assert len(requant._DERIVED) == entries - 2                              # the entries go with their array


def test_cached_weights_give_the_same_products():
    rng = np.random.default_rng(9)
    a, w = rng.integers(-128, 128, (3, 5, 40), dtype=np.int8), rng.integers(-128, 128, (7, 40), dtype=np.int8)
    expected = int_matmul_reference(a, w, transpose_b=True)
    assert np.array_equal(int_matmul(a, w, transpose_b=True), expected)
    assert np.array_equal(int_matmul(a, w, transpose_b=True), expected)       # from the cached float32 form
