"""The float32 rounding mode in integers only (what the generated hardware computes)."""

from __future__ import annotations

import numpy as np

from kiln.integer.arith import float32_fields, requantize, requantize_float32_exact


def test_integer_float32_requantization_equals_onnx_runtime_arithmetic():
    rng = np.random.default_rng(0)
    mismatches = 0
    for _ in range(200):
        multiplier = np.float32(10 ** rng.uniform(-7, 0.5))
        acc = np.concatenate([rng.integers(-2**31, 2**31, 4000), rng.integers(-2**20, 2**20, 4000),
                              rng.integers(-3000, 3000, 4000), [0, -1, 1, 2**31 - 1, -2**31]])
        mantissa, shift = float32_fields(multiplier)
        assert mantissa * 2.0 ** -shift == float(multiplier)
        for low, high, zero in ((-128, 127, -3), (0, 255, 17), (-32768, 32767, 5)):
            expected = requantize(acc, 0, 0, zero, "float32", low, high, multiplier_f32=multiplier)
            got = requantize_float32_exact(acc, mantissa, shift, zero, low, high)
            mismatches += int((expected != got).sum())
    assert mismatches == 0


def test_ties_round_to_even_in_both_places():
    acc = np.arange(-21, 22)
    mantissa, shift = float32_fields(np.float32(0.5))
    got = requantize_float32_exact(acc, mantissa, shift, 0, -99, 99)
    assert got.tolist() == np.rint(acc * 0.5).astype(int).tolist()
    assert got[acc == 3][0] == 2 and got[acc == 5][0] == 2 and got[acc == -3][0] == -2
