"""The SQNR sums of quant.evaluate: one pass, float64, equal to the plain numpy expressions."""

import numpy as np
import pytest

from intvit.quant.evaluate import energies, sqnr_db


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_energies_match_numpy_on_strided_activations(dtype):
    rng = np.random.default_rng(7)
    for case in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 9, 1 + case % 4))
        reference = rng.normal(size=(*shape[:-1], 2 * shape[-1])).astype(np.float32)[..., ::2]   # a strided view
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -1 << 20), min(info.max, 1 << 20), shape, endpoint=True, dtype=dtype)
        scale = float(np.exp2(rng.uniform(-12, 2)))
        signal, noise = energies(reference, values, scale)
        exact = reference.astype(np.float64)
        assert signal == pytest.approx(np.square(exact).sum(), rel=1e-12)
        assert noise == pytest.approx(np.square(exact - values * scale).sum(), rel=1e-12)


def test_perfect_match_and_shape_error():
    values = np.arange(-5, 6, dtype=np.int8)
    signal, noise = energies(values * np.float32(0.25), values, 0.25)
    assert noise == 0 and sqnr_db(signal, noise) == float("inf")
    with pytest.raises(ValueError, match=r"^float activation \(3,\) and integer tensor \(4,\) differ$"):
        energies(np.zeros(3, np.float32), np.zeros(4, np.int8), 1.0)
