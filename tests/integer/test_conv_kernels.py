"""The engine's int8 convolution (im2col + int8 GEMM a few images at a time, requantized
chunk by chunk) against the int64 im2col reference, on shapes it was not tuned for: odd
sizes, unequal strides, paddings and dilations, one image per chunk and many.

The fuzzer's random networks are too narrow to reach this path (their accumulators stay
below 2^24, where the float32 convolution is exact), so it is checked here directly."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.integer import ops
from kiln.integer.ops import conv_accumulate, requantize_channels

CASES = [  # channels, kernel, stride, padding, dilation, height, width
    (64, (3, 3), (1, 1), (1, 1), (1, 1), 9, 7),
    (72, (3, 5), (2, 1), (0, 2), (1, 2), 11, 13),
    (600, (1, 1), (2, 3), (0, 0), (1, 1), 5, 8),
    (40, (5, 3), (1, 2), (2, 1), (2, 1), 12, 6),
]


@pytest.mark.parametrize("chunk_bytes", [1, 4096, 1 << 20])
@pytest.mark.parametrize("case", CASES, ids=[f"c{c[0]}k{c[1][0]}x{c[1][1]}" for c in CASES])
def test_int8_convolution_in_chunks_equals_the_int64_reference(monkeypatch, case, chunk_bytes):
    channels, kernel, stride, padding, dilation, height, width = case
    rng = np.random.default_rng(channels)
    batch, k_out = 5, 7
    x = rng.integers(0, 256, (batch, channels, height, width), dtype=np.uint8)
    weight = rng.integers(-127, 128, (k_out, channels, *kernel)).astype(np.int64)
    bias = rng.integers(-2**20, 2**20, k_out)
    x_zero = 131
    assert channels * kernel[0] * kernel[1] * 255 * 127 >= 2**24  # the int8 path, not float
    products = []
    real_matmul = ops.int8_matmul

    def counted(a, b):
        products.append(len(a))
        return real_matmul(a, b)

    monkeypatch.setattr(ops, "int8_matmul", counted)
    monkeypatch.setattr(ops, "IM2COL_CHUNK_BYTES", chunk_bytes)
    settings = {"x_zero": x_zero, "w_zero": 0, "stride": stride, "padding": padding,
                "dilation": dilation, "groups": 1}
    fast = conv_accumulate(x, weight, bias, input_range=255, **settings)
    reference = ops._conv_accumulate_int64(x, weight, bias, x_zero, stride, padding,
                                           dilation, 1)
    assert products and sum(products) == batch * fast.shape[2] * fast.shape[3]
    if chunk_bytes == 1:
        assert len(products) == batch  # one image per chunk
    np.testing.assert_array_equal(fast, reference)
    # requantized chunk by chunk (channels last) = requantized whole (channels on axis 1)
    m0 = rng.integers(2**30, 2**31, k_out)
    shift = rng.integers(4, 12, k_out)
    multiplier = (m0 / 2.0**31 / 2.0**shift).astype(np.float32)
    for rounding in ("nearest", "float32"):
        def requant(acc, axis, rounding=rounding):
            return requantize_channels(acc, m0, shift, 3, rounding, -128, 127, multiplier,
                                       axis=axis, out_dtype=np.int8)

        fused = conv_accumulate(x, weight, bias, input_range=255,
                                epilogue=lambda acc: requant(acc, -1), **settings)
        assert fused.dtype == np.int8
        np.testing.assert_array_equal(fused, requant(reference, 1))
