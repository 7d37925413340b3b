"""Property tests (hypothesis): the integer kernels equal plain int64 references."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.integer import (
    accumulator_bits,
    im2col,
    qconv2d,
    qmatmul,
    quantize_multiplier,
    requantize,
)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=2**-30, max_value=2**20, allow_nan=False))
def test_quantize_multiplier_round_trips(multiplier):
    m0, n = quantize_multiplier(multiplier)
    assert 2**30 <= m0 < 2**31
    assert abs(m0 * 2.0 ** -(31 + n) - multiplier) <= multiplier * 2**-31


def test_quantize_multiplier_rejects_nonsense():
    for bad in (0.0, -1.0, float("nan"), float("inf"), 2.0**-40):
        with pytest.raises(KilnError):
            quantize_multiplier(bad)


def reference_requantize(acc, m0, n, zero, rounding, qmin, qmax):
    """Python big-integer arithmetic, one element at a time."""
    out = []
    for value in np.asarray(acc).reshape(-1).tolist():
        product = value * m0
        if rounding == "nearest":
            product += 1 << (30 + n)
        out.append(min(max((product >> (31 + n)) + zero, qmin), qmax))
    return np.array(out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=20),
       st.floats(2**-20, 8.0), st.integers(-20, 20), st.sampled_from(["floor", "nearest"]))
def test_requantize_matches_big_integer_reference(acc, multiplier, zero, rounding):
    m0, n = quantize_multiplier(multiplier)
    ours = requantize(np.array(acc), m0, n, zero, rounding, -128, 127)
    assert ours.tolist() == reference_requantize(acc, m0, n, zero, rounding, -128, 127).tolist()


def test_rounding_modes_on_ties():
    acc = np.array([3, 5, -3, -5])  # times 1/2: 1.5, 2.5, -1.5, -2.5
    m0, n = quantize_multiplier(0.5)
    assert requantize(acc, m0, n, 0, "floor", -9, 9).tolist() == [1, 2, -2, -3]
    assert requantize(acc, m0, n, 0, "nearest", -9, 9).tolist() == [2, 3, -1, -2]
    assert requantize(acc, m0, n, 0, "float32", -9, 9,
                      multiplier_f32=np.float32(0.5)).tolist() == [2, 2, -2, -2]


widths = st.integers(2, 16)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 6), widths, widths,
       st.booleans(), st.integers(0, 2**31 - 1), st.sampled_from(["floor", "nearest", "float32"]))
def test_qmatmul_equals_int64_reference(m, k, n, a_bits, b_bits, unsigned, seed, rounding):
    rng = np.random.default_rng(seed)
    a_lo, a_hi = (0, 2**a_bits - 1) if unsigned else (-(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1)
    b_lo, b_hi = -(2 ** (b_bits - 1)), 2 ** (b_bits - 1) - 1
    a = rng.integers(a_lo, a_hi + 1, (m, k))
    b = rng.integers(b_lo, b_hi + 1, (k, n))
    a_zero = int(rng.integers(a_lo, a_hi + 1))
    b_zero = rng.integers(b_lo, b_hi + 1, n)
    bias = rng.integers(-1000, 1000, n)
    multiplier = float(rng.uniform(1e-6, 1e-2))
    m0, shift = quantize_multiplier(multiplier)
    out = qmatmul(a, b, a_zero, b_zero, 3, m0, shift, rounding=rounding, qmin=-128, qmax=127,
                  bias=bias, multiplier_f32=np.float32(multiplier))
    acc = (a[:, :, None] - a_zero) * (b[None, :, :] - b_zero[None, None, :])
    acc = acc.sum(axis=1) + bias
    expected = requantize(acc, m0, shift, 3, rounding, -128, 127,
                          multiplier_f32=np.float32(multiplier))
    assert np.array_equal(out, expected)


def _fits(shape) -> bool:
    _, _, height, width, fy, fx, _, padding, dilation = shape
    return ((fy - 1) * dilation + 1 <= height + 2 * padding
            and (fx - 1) * dilation + 1 <= width + 2 * padding)


conv_shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(3, 9), st.integers(3, 9),
                        st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
                        st.integers(1, 2))


@settings(max_examples=80, deadline=None)
@given(conv_shapes, st.integers(0, 2**31 - 1))
def test_im2col_equals_unfold(shape, seed):
    batch, channels, height, width, fy, fx, stride, padding, dilation = shape
    if not _fits(shape):
        return
    x = np.random.default_rng(seed).integers(-100, 100, (batch, channels, height, width))
    ours = im2col(x, (fy, fx), stride=(stride, stride), padding=(padding, padding),
                  dilation=(dilation, dilation))
    theirs = torch.nn.functional.unfold(torch.from_numpy(x).double(), (fy, fx),
                                        dilation=dilation, padding=padding, stride=stride)
    assert np.array_equal(ours, theirs.numpy().astype(np.int64))


@settings(max_examples=80, deadline=None)
@given(conv_shapes, st.sampled_from([1, 2, "depthwise"]), st.integers(0, 2**31 - 1),
       st.sampled_from(["floor", "nearest", "float32"]))
def test_qconv2d_equals_int64_reference(shape, groups, seed, rounding):
    batch, channels, height, width, fy, fx, stride, padding, dilation = shape
    if not _fits(shape):
        return
    rng = np.random.default_rng(seed)
    channels = channels * 2
    groups = channels if groups == "depthwise" else groups
    k_out = groups * int(rng.integers(1, 3))
    x = rng.integers(0, 256, (batch, channels, height, width))
    w = rng.integers(-128, 128, (k_out, channels // groups, fy, fx))
    bias = rng.integers(-5000, 5000, k_out)
    x_zero, w_zero = int(rng.integers(0, 256)), rng.integers(-3, 4, k_out)
    multipliers = rng.uniform(1e-5, 1e-3, k_out)
    pairs = [quantize_multiplier(float(v)) for v in multipliers]
    m0 = np.array([p[0] for p in pairs])
    shift = np.array([p[1] for p in pairs])
    out = qconv2d(x, w, bias, x_zero=x_zero, w_zero=w_zero, out_zero=-7, m0=m0, shift=shift,
                  stride=(stride, stride), padding=(padding, padding),
                  dilation=(dilation, dilation), groups=groups, rounding=rounding, qmin=-128,
                  qmax=127, multiplier_f32=multipliers.astype(np.float32))
    # reference: exact int64 convolution through torch in float64 on small values
    reference = torch.nn.functional.conv2d(
        torch.from_numpy(x - x_zero).double(),
        torch.from_numpy(w - w_zero[:, None, None, None]).double(),
        torch.from_numpy(bias).double(), stride=stride, padding=padding, dilation=dilation,
        groups=groups).numpy().astype(np.int64)
    expected = requantize(reference, m0[None, :, None, None], shift[None, :, None, None], -7,
                          rounding, -128, 127,
                          multiplier_f32=multipliers.astype(np.float32)[None, :, None, None])
    assert np.array_equal(out, expected)


def test_accumulator_bits():
    assert accumulator_bits(144, 255, 128) == 24
    assert accumulator_bits(1, 1, 1) == 2
    assert accumulator_bits(2**16, 2**16, 2**15) > 32


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_integer_max_pool_equals_torch(ky, kx, stride, padding, ceil_mode, seed):
    from kiln.integer.ops import qmaxpool2d

    if padding * 2 > min(ky, kx):
        return
    x = np.random.default_rng(seed).integers(0, 256, (2, 3, 7, 9))
    ours = qmaxpool2d(x, (ky, kx), (stride, stride), (padding, padding), -1, ceil_mode)
    theirs = torch.nn.functional.max_pool2d(torch.from_numpy(x).double(), (ky, kx), stride,
                                            padding, ceil_mode=ceil_mode)
    assert np.array_equal(ours, theirs.numpy().astype(np.int64))
