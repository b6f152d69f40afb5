"""Fused matmul epilogues equal the separate ops bit for bit, and the executor uses them."""

import numpy as np
import pytest

from intvit.quant import fused
from intvit.quant.executor import FUSED, KERNELS, run_program
from intvit.quant.fused import fusable_scale, matmul_gelu, matmul_requant, matmul_softmax
from intvit.quant.gelu import GELU_INPUT_BITS, int_gelu
from intvit.quant.matmul import FLOAT32_EXACT_DEPTH, int_matmul
from intvit.quant.requant import LANE_MIN_SHIFT, MAX_SHIFT, dyadic, requantize
from intvit.quant.softmax import int_softmax


def int8(rng, shape):
    return rng.integers(-128, 127, shape, endpoint=True, dtype=np.int8)


def scale(rng, channels, low, high):
    """A dyadic scale, one per channel or (every other draw) one for all, from a log-uniform real scale."""
    count = channels if rng.integers(2) else 1
    multiplier, shift = dyadic(np.exp2(rng.uniform(low, high, count)))
    return multiplier.astype(np.int32), shift.astype(np.int8)


def operands(rng, case):
    """Seeded operands over every layout: shared or per-batch B, transposed B, one to three K chunks."""
    depth = int(rng.choice([rng.integers(1, 200), rng.integers(FLOAT32_EXACT_DEPTH - 8, FLOAT32_EXACT_DEPTH + 9),
                            rng.integers(2000, 2100)]))
    m, n = (int(v) for v in rng.integers(1, 40, 2))
    lead = [(), (3,), (2, 2)][case % 3]
    transpose_b = bool(case & 4)
    shared = bool(case & 8) or not lead
    if case % 7 == 0:                                      # every product at its extreme
        a = np.full((*lead, m, depth), -128, np.int8)
        b_value = -128 if case % 2 else 127
        b = np.full((n, depth) if transpose_b else (depth, n), b_value, np.int8)
    else:
        a = int8(rng, (*lead, m, depth))
        b_shape = (n, depth) if transpose_b else (depth, n)
        b = int8(rng, b_shape if shared else (*lead, *b_shape))
    bound = (1 << 31) - 1 - depth * (1 << 14)
    bias = rng.integers(-bound, bound, n, endpoint=True, dtype=np.int32) if case % 2 else None
    return a, b, bias, transpose_b, n, depth


def test_thousands_of_random_cases_match_the_separate_ops(monkeypatch):
    # Small blocks, so a case spans several blocks (and a block can be a single row or matrix).
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 257)
    rng = np.random.default_rng(2026)
    vectors = 0
    for case in range(60):
        a, b, bias, transpose_b, n, depth = operands(rng, case)
        acc = int_matmul(a, b, bias, transpose_b=transpose_b)
        # Scales around the accumulator's spread, so outputs span the range and saturate at both ends.
        spread = np.log2(np.sqrt(depth) * (1 << 14) + 1)
        bits = int(rng.choice([8, 16, 17, 32]))
        m, s = scale(rng, n, -spread - 2, 8 - spread)
        got = matmul_requant(a, b, bias, m, s, bits, transpose_b=transpose_b)
        expected = requantize(acc, m, s, bits)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), case

        m1, s1 = scale(rng, n, 17 - spread - 2, 17 - spread + 2)
        m2, s2 = scale(rng, n, -24, -12)
        got = matmul_gelu(a, b, bias, (m1, s1), GELU_INPUT_BITS, (m2, s2), 8, transpose_b=transpose_b)
        expected = requantize(int_gelu(requantize(acc, m1, s1, GELU_INPUT_BITS)), m2, s2, 8)
        assert got.dtype == np.int8 and np.array_equal(got, expected), case

        m3, s3 = scale(rng, 1, 14 - spread, 22 - spread)
        got = matmul_softmax(a, b, bias, m3, s3, 32, transpose_b=transpose_b)
        assert got.dtype == np.int8 and np.array_equal(got, int_softmax(requantize(acc, m3, s3, 32))), case
        vectors += 3 * got.size
    assert vectors > 100_000


@pytest.mark.parametrize("lanes", [True, False], ids=["int32-lanes", "int64"])
def test_both_kernel_forms_match_the_separate_ops(monkeypatch, lanes):
    # Scales with every shift >= LANE_MIN_SHIFT run the INT32-lane kernels; a shift below it on one
    # channel, or a width above 32 (31 for GELU's input), the int64 ones. Counted, so each form runs.
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 257)
    calls = {name: 0 for name in ("_requant_lanes", "_gelu_lanes", "_softmax_lanes",
                                  "_requant_block", "_gelu_block", "_softmax_block")}
    for name in calls:
        original = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *args, name=name, original=original:
                            calls.__setitem__(name, calls[name] + 1) or original(*args))
    rng = np.random.default_rng(11 + lanes)

    def draw(n, low, high):
        m, s = scale(rng, n, low, high)
        if lanes:
            s = np.maximum(s, LANE_MIN_SHIFT).astype(np.int8)
        else:
            s = s.copy()
            s[rng.integers(s.size)] = rng.integers(1, LANE_MIN_SHIFT)
        return m, s

    for case in range(24):
        a, b, bias, transpose_b, n, depth = operands(rng, case)
        acc = int_matmul(a, b, bias, transpose_b=transpose_b)
        spread = np.log2(np.sqrt(depth) * (1 << 14) + 1)
        bits = int(rng.choice([8, 16, 17, 32] if lanes else [8, 32, 33]))
        m, s = draw(n, -spread - 2, 8 - spread)
        expected = requantize(acc, m, s, bits)
        got = matmul_requant(a, b, bias, m, s, bits, transpose_b=transpose_b)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), case

        gelu_bits = GELU_INPUT_BITS if lanes or rng.integers(2) else 32
        m1, s1 = draw(n, gelu_bits - 1 - spread - 2, gelu_bits - 1 - spread + 2)
        m2, s2 = draw(n, -24, -12)
        got = matmul_gelu(a, b, bias, (m1, s1), gelu_bits, (m2, s2), 8, transpose_b=transpose_b)
        expected = requantize(int_gelu(requantize(acc, m1, s1, gelu_bits)), m2, s2, 8)
        assert got.dtype == np.int8 and np.array_equal(got, expected), case

        m3, s3 = draw(1, 14 - spread, 22 - spread)
        got = matmul_softmax(a, b, bias, m3, s3, 32, transpose_b=transpose_b)
        assert np.array_equal(got, int_softmax(requantize(acc, m3, s3, 32))), case
    ran = {name for name, count in calls.items() if count}
    assert ran == ({"_requant_lanes", "_gelu_lanes", "_softmax_lanes"} if lanes else
                   {"_requant_block", "_gelu_block", "_softmax_block"}), calls


def test_tiny_scales_and_saturated_scores():
    # The shifter's far end (MAX_SHIFT, short multipliers) and scores that saturate INT32 before the softmax.
    rng = np.random.default_rng(5)
    a, b = int8(rng, (2, 5, 300)), int8(rng, (2, 7, 300))
    bias = rng.integers(-1 << 20, 1 << 20, 7, dtype=np.int32)
    acc = int_matmul(a, b, bias, transpose_b=True)
    for multiplier, shift, bits in [(3, MAX_SHIFT, 8), ((1 << 31) - 1, 1, 32), ((1 << 30) + 1, 2, 16)]:
        m, s = np.array([multiplier], np.int32), np.array([shift], np.int8)
        assert np.array_equal(matmul_requant(a, b, bias, m, s, bits, transpose_b=True), requantize(acc, m, s, bits))
        assert np.array_equal(matmul_softmax(a, b, bias, m, s, bits, transpose_b=True),
                              int_softmax(requantize(acc, m, s, bits)))


def test_fusable_scales():
    assert fusable_scale(np.int32(3), 8) and fusable_scale(np.ones(1), 8) and fusable_scale(np.ones(8), 8)
    assert not fusable_scale(np.ones(4), 8) and not fusable_scale(np.ones((2, 1)), 8)


def test_the_executor_fuses_every_chain_and_matches_the_separate_ops(build_small_program):
    program = build_small_program()
    x = program.quantize_input(np.random.default_rng(3).normal(size=(5, 3, 16, 16)).astype(np.float32))
    calls = {kinds: 0 for kinds in FUSED}
    original = dict(FUSED)

    def counted(kinds):
        def run(*args):
            calls[kinds] += 1
            return original[kinds](*args)
        return run

    FUSED.update({kinds: counted(kinds) for kinds in original})
    try:
        fast = run_program(program, x)
    finally:
        FUSED.update(original)
    separate, _ = run_program(program, x, collect=True)
    assert np.array_equal(fast, separate)
    # Every matmul but the head's, whose INT32 accumulator is the program's output.
    matmuls = sum(op.kind == "matmul" and op.output != program.output for op in program.ops)
    assert sum(calls.values()) == matmuls and all(calls.values()), calls


def test_a_requant_scale_of_another_form_runs_the_ops_one_by_one(build_small_program):
    # A per-row scale (shape (tokens, 1)) is legal for requant but not a fused form.
    program = build_small_program()
    x = program.quantize_input(np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32))
    op = next(op for op in program.ops if op.kind == "requant" and op.name.endswith("attn.proj.requant"))
    tokens = 1 + (program.config.img_size // program.config.patch_size) ** 2
    name = op.inputs[1]
    program.constants[name] = np.broadcast_to(program.constants[name], (tokens, program.constants[name].size)).copy()
    seen = []
    original = KERNELS["requant"]
    KERNELS["requant"] = lambda op, *args: seen.append(op.name) or original(op, *args)
    try:
        fast = run_program(program, x)
    finally:
        KERNELS["requant"] = original
    assert op.name in seen
    assert np.array_equal(fast, run_program(program, x, collect=True)[0])


def test_only_cached_calls_keep_forms_and_pin_operands():
    rng = np.random.default_rng(12)
    a, w = int8(rng, (9, 30)), int8(rng, (30, 6))
    m, s = scale(rng, 6, -14, -10)
    expected = requantize(int_matmul(a, w), m, s, 8)
    assert np.array_equal(matmul_requant(a, w, None, m, s, 8), expected)
    assert w.flags.writeable and m.flags.writeable                 # an ordinary call leaves them alone
    for _ in range(2):                                              # made, then reused
        assert np.array_equal(matmul_requant(a, w, None, m, s, 8, cache=True), expected)
    assert not (w.flags.writeable or m.flags.writeable or s.flags.writeable)
