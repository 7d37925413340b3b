"""Integer kernels: im2col, qmatmul, qconv2d, pooling, residual add. Exact and vectorized.

Integer matrix products run in float BLAS when that is exact: every partial sum of a
product of integers stays an integer below 2^24 (float32) or 2^53 (float64), so the
result converts back without rounding, whatever order BLAS sums in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from kiln.integer.arith import Rounding, requantize

#: What a convolution makes of its accumulators, channels on the last axis (requantization).
Epilogue = Callable[[np.ndarray], np.ndarray]


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a @ b`` for [M, K] × [K, N] int8 arrays as exact int32, on the CPU's int8 dot-product
    instructions (PyTorch's ``_int_mm``, oneDNN); None where that is not available."""
    import torch

    if not hasattr(torch, "_int_mm") or a.shape[0] == 0 or a.shape[1] < 2:
        # A reduction of length 1 gives wrong products (oneDNN misreads the size-1
        # dimension's strides; found by kiln's random-network tests): not worth a kernel.
        return None
    try:
        # The right operand column-major: oneDNN packs it without a transposing copy
        # (25x faster for a 256 x 1568 x 64 layer).
        right = torch.from_numpy(np.require(b.T, requirements=("C", "W"))).t()
        left = torch.from_numpy(np.require(a, requirements=("C", "W")))
        return torch._int_mm(left, right).numpy()
    except RuntimeError:  # a shape or build the kernel does not support
        return None


def _int8_operand(x: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``x`` as int8 minus an offset (0, or 128 for uint8 data), or None if it does not fit."""
    if x.size == 0:
        return None
    if x.dtype == np.int8:
        return x, 0
    if x.dtype == np.uint8:
        return _uint8_as_int8(x), 128
    low, high = int(x.min()), int(x.max())
    if low >= -128 and high <= 127:
        return x.astype(np.int8), 0
    if low >= 0 and high <= 255:
        return (x - 128).astype(np.int8), 128
    return None


def _uint8_as_int8(x: np.ndarray) -> np.ndarray:
    """uint8 ``x`` - 128 as int8, by flipping the top bit (one cheap pass, no widening)."""
    return np.bitwise_xor(x, np.uint8(0x80)).view(np.int8)


def exact_matmul(a: np.ndarray, b: np.ndarray, bound: float) -> np.ndarray:
    """``a @ b`` for integer arrays, exactly, as fast as the machine allows.

    ``bound`` is an upper bound on the magnitude of any partial sum. 8-bit operands (int8,
    or uint8 offset by 128) below 2^31 go through int8 GEMM with int32 accumulation. Below
    2^24 one float32 GEMM is exact. Otherwise the reduction is split into chunks whose sums
    stay below 2^24 (exact float32 GEMMs) added in int64, when that takes few chunks; else
    float64 (exact below 2^53), else int64.
    """
    if bound < 2**31 and a.ndim == 2:
        left, right = _int8_operand(a), _int8_operand(b)
        if left is not None and right is not None:
            (a8, a_off), (b8, b_off) = left, right
            product = int8_matmul(a8, b8)
            if product is not None:
                # (a8 + ao)(b8 + bo) = a8·b8 + ao·Σ_k b8 + bo·Σ_k a8 + K·ao·bo
                result = product.astype(np.int64)
                if a_off:
                    result += a_off * b8.sum(axis=0, dtype=np.int64)
                if b_off:
                    result += b_off * a8.sum(axis=1, keepdims=True, dtype=np.int64)
                if a_off and b_off:
                    result += a.shape[1] * a_off * b_off
                return result
    if bound < 2**24:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int64)
    reduction = a.shape[-1]
    per_term = bound / max(reduction, 1)
    chunk = int((2**24 - 1) // per_term) if per_term else reduction
    if chunk >= 64 and -(-reduction // chunk) <= 8:
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        total = None
        for start in range(0, reduction, chunk):
            part = np.matmul(a32[..., start:start + chunk], b32[start:start + chunk])
            part = part.astype(np.int64)
            total = part if total is None else total + part
        return total
    if bound < 2**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def _magnitude(x: np.ndarray) -> int:
    if x.dtype in (np.uint8, np.int8):  # the type bounds it: no pass over the data
        return 255 if x.dtype == np.uint8 else 128
    return int(np.abs(x.astype(np.int64, copy=False)).max()) if x.size else 0


def _integers(x: np.ndarray) -> np.ndarray:
    """``x`` as an integer array, narrow integer types kept (the engine passes uint8/int8)."""
    x = np.asarray(x)
    return x if x.dtype.kind in "iu" else x.astype(np.int64)


def qmatmul(a: np.ndarray, b: np.ndarray, a_zero: int, b_zero: int | np.ndarray,
            out_zero: int, m0: np.ndarray | int, shift: np.ndarray | int, *,
            rounding: Rounding = "nearest", qmin: int = 0, qmax: int = 255,
            bias: np.ndarray | None = None, multiplier_f32: np.ndarray | float | None = None,
            out_dtype: np.dtype | type = np.int64) -> np.ndarray:
    """Quantized [M, K] × [K, N] product with int32-style accumulation (Jacob et al. eq. 10).

    The zero-point terms are factored out of the accumulation:
    Σ(a−za)(b−zb) = Σab − zb·Σ_k a − za·Σ_k b + K·za·zb, so the inner loop multiplies raw
    integers. ``b_zero``, ``m0``, ``shift`` and ``bias`` may be per output column [N].

    >>> a = np.array([[130, 120]]); b = np.array([[2], [-3]])
    >>> qmatmul(a, b, 128, 0, 0, 1 << 30, -1, qmin=-128, qmax=127).tolist()  # M = 1
    [[28]]
    """
    a = _integers(a)
    b = _integers(b)
    reduction = a.shape[-1]
    bound = reduction * _magnitude(a) * _magnitude(b)
    raw = exact_matmul(a, b, bound)
    b_zero = np.asarray(b_zero, dtype=np.int64)
    acc = (raw - b_zero * a.sum(axis=-1, keepdims=True, dtype=np.int64)
           - a_zero * b.sum(axis=0, dtype=np.int64)
           + reduction * a_zero * b_zero)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return requantize(acc, m0, shift, out_zero, rounding, qmin, qmax,
                      multiplier_f32=multiplier_f32, out_dtype=out_dtype)


def pad_nchw(x: np.ndarray, padding: tuple[int, int, int, int], value: int) -> np.ndarray:
    """Pad [N, C, H, W] by (top, left, bottom, right) with ``value``."""
    top, left, bottom, right = padding
    if not any(padding):
        return x
    if x.dtype.kind in "iu" and not np.iinfo(x.dtype).min <= value <= np.iinfo(x.dtype).max:
        x = x.astype(np.int64)  # a fill outside the narrow type would wrap
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x: np.ndarray, kernel: tuple[int, int], *, stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
           pad_value: int = 0) -> np.ndarray:
    """Convolution windows as columns: [N, C·FY·FX, OY·OX], the layout of
    ``torch.nn.functional.unfold`` (channel-major, then kernel row, then kernel column).

    Padding uses ``pad_value``: the input zero point in the quantized domain, so padded
    positions contribute exactly zero.

    >>> im2col(np.arange(9).reshape(1, 1, 3, 3), (2, 2)).shape
    (1, 4, 4)
    """
    batch, channels, height, width = x.shape
    fy, fx = kernel
    padded = pad_nchw(x, (padding[0], padding[1], padding[0], padding[1]), pad_value)
    oy = output_size(height, fy, stride[0], 2 * padding[0], dilation[0])
    ox = output_size(width, fx, stride[1], 2 * padding[1], dilation[1])
    padded = np.ascontiguousarray(padded)
    sn, sc, sh, sw = padded.strides
    windows = as_strided(
        padded, shape=(batch, channels, fy, fx, oy, ox),
        strides=(sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
        writeable=False)
    return windows.reshape(batch, channels * fy * fx, oy * ox)


def conv_accumulate(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *,
                    x_zero: int, w_zero: np.ndarray | int, stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                    input_range: int | None = None, epilogue: Epilogue | None = None
                    ) -> np.ndarray:
    """Integer convolution accumulators Σ(x−zx)(w−zw) + bias, [N, K, OY, OX]; with an
    ``epilogue`` (e.g. requantization), what it makes of them: it receives accumulators
    with the channels on the last axis, a few images at a time on the int8 path.

    Exact by construction: when every partial sum stays below 2^24 the convolution runs
    as PyTorch's float32 convolution (a direct kernel: sums of products of small
    integers, each partial sum exact in float32, in any order); below 2^31 with 8-bit
    operands as im2col and int8 GEMM with int32 accumulation; below 2^53 in float64, else
    as int64 im2col products. The result holds exact integers in that dtype, laid out
    channels last (an NCHW view of NHWC memory).
    ``input_range`` bounds |x − zx| (the engine knows it from the quantization;
    otherwise it is measured).
    """
    import torch
    import torch.nn.functional as F

    k_out = weight.shape[0]
    # Dilation along an axis where the kernel is 1 wide changes nothing; PyTorch 2.13's
    # channels-last float32 convolution crashes (segfault) on a 1-wide input with such a
    # dilation, padding and a stride of 2 or more (found by kiln's random networks).
    dilation = tuple(1 if size == 1 else step
                     for size, step in zip(weight.shape[2:], dilation, strict=True))
    w = np.asarray(weight, dtype=np.int64)
    w_zero_arr = np.broadcast_to(np.asarray(w_zero, dtype=np.int64), (k_out,))
    w = w - w_zero_arr.reshape(-1, 1, 1, 1)
    if input_range is None:
        input_range = _magnitude(np.asarray(x, dtype=np.int64) - x_zero)
    reduction = int(np.prod(w.shape[1:]))
    bias_max = _magnitude(np.asarray(bias)) if bias is not None else 0
    bound = reduction * input_range * _magnitude(w) + bias_max
    if 2**24 <= bound < 2**31 and groups == 1:
        acc = _conv_accumulate_int8(x, w, bias, x_zero, stride, padding, dilation, epilogue)
        if acc is not None:
            return acc
    if bound >= 2**53:
        return _channels_last_epilogue(
            _conv_accumulate_int64(x, w, bias, x_zero, stride, padding, dilation, groups),
            epilogue)
    dtype, torch_dtype = ((np.float32, torch.float32) if bound < 2**24
                          else (np.float64, torch.float64))
    # Channels last (the engine's activations already are): oneDNN's direct convolution
    # without layout conversions; it was 2-4x faster than im2col + int8 GEMM on small
    # channel counts (benchmarks/engine_throughput.py).
    shifted = torch.from_numpy(np.asarray(x)).to(torch_dtype, memory_format=torch.channels_last)
    shifted -= dtype(x_zero)
    weight = torch.from_numpy(w.astype(dtype)).contiguous(memory_format=torch.channels_last)
    acc = F.conv2d(shifted, weight,
                   None if bias is None else torch.from_numpy(np.asarray(bias).astype(dtype)),
                   stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _channels_last_epilogue(acc.numpy(), epilogue)


def _channels_last_epilogue(acc: np.ndarray, epilogue: Epilogue | None) -> np.ndarray:
    """``epilogue`` applied to [N, K, OY, OX] accumulators through their channels-last view."""
    if epilogue is None:
        return acc
    return epilogue(acc.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


#: How many bytes of im2col columns the int8 convolution makes at once (a few images).
IM2COL_CHUNK_BYTES = 1 << 20


def _conv_accumulate_int8(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, x_zero: int,
                          stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int], epilogue: Epilogue | None = None
                          ) -> np.ndarray | None:
    """8-bit operands: im2col in int8 (padding with the zero point) and one int8 GEMM with
    int32 accumulation; Σ(x−zx)w = Σ(x−o)w + (o−zx)Σw for the offset o that makes x int8.
    None when the operands do not fit 8 bits."""
    weights = _int8_operand(w)
    if weights is None or weights[1] != 0:
        return None
    x = np.asarray(x)
    if x.dtype in (np.uint8, np.int8):  # the engine's activations: no pass over the data
        offset = 128 if x.dtype == np.uint8 else 0
    else:
        low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
        offset = 0 if (low >= -128 and high <= 127 and -128 <= x_zero <= 127) else 128
        if not (low - offset >= -128 and high - offset <= 127):
            return None
    if not -128 <= x_zero - offset <= 127:
        return None
    k_out, channels, fy, fx = w.shape
    # Channels last, so each window row copies contiguous channel vectors.
    if x.dtype == np.uint8:
        shifted = _uint8_as_int8(x)
    else:
        shifted = (x.astype(np.int64) - offset).astype(np.int8) if offset else x.astype(np.int8)
    nhwc = np.ascontiguousarray(shifted.transpose(0, 2, 3, 1))
    if any(padding):
        pads = ((0, 0), (padding[0], padding[0]), (padding[1], padding[1]), (0, 0))
        nhwc = np.pad(nhwc, pads, constant_values=x_zero - offset)
    span_y, span_x = dilation[0] * (fy - 1) + 1, dilation[1] * (fx - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(nhwc, (span_y, span_x), axis=(1, 2))
    windows = windows[:, :: stride[0], :: stride[1], :, :: dilation[0], :: dilation[1]]
    batch, oy, ox = windows.shape[:3]
    right = weights[0].transpose(0, 2, 3, 1).reshape(k_out, -1).T
    # A few images at a time, so that their columns (and the product) stay in the cache:
    # one 256-image im2col of a 64-channel 32x32 3x3 layer is 151 MB, and the layer took
    # 0.235 s on one core against 0.043 s sixteen images at a time.
    per_image = oy * ox * fy * fx * channels
    step = max(1, IM2COL_CHUNK_BYTES // max(per_image, 1))
    correction = (offset - x_zero) * w.reshape(k_out, -1).sum(axis=1)
    if bias is not None:
        correction = correction + np.asarray(bias, dtype=np.int64)
    correction = correction.astype(np.int32)
    result = None
    for first in range(0, batch, step):
        last = min(batch, first + step)
        cols = windows[first:last].transpose(0, 1, 2, 4, 5, 3).reshape(
            (last - first) * oy * ox, fy * fx * channels)
        part = int8_matmul(cols, right)
        if part is None:
            return None
        part += correction
        if epilogue is not None:  # requantized while the chunk is in the cache
            part = epilogue(part)
        if result is None:
            result = np.empty((batch * oy * ox, k_out), dtype=part.dtype)
        result[first * oy * ox:last * oy * ox] = part
    # An NCHW view of NHWC memory: element-wise steps keep that layout, and the next
    # convolution reads it channels-last without a copy.
    return result.reshape(batch, oy, ox, k_out).transpose(0, 3, 1, 2)


def _conv_accumulate_int64(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                           x_zero: int, stride: tuple[int, int], padding: tuple[int, int],
                           dilation: tuple[int, int], groups: int) -> np.ndarray:
    """The int64 fallback: im2col (padding with the zero point) and integer products."""
    batch = x.shape[0]
    k_out, c_group, fy, fx = w.shape
    cols = im2col(np.asarray(x, dtype=np.int64), (fy, fx), stride=stride, padding=padding,
                  dilation=dilation, pad_value=x_zero) - x_zero
    locations = cols.shape[-1]
    cols = cols.reshape(batch, groups, c_group * fy * fx, locations)
    acc = np.einsum("ngcl,gkc->ngkl", cols, w.reshape(groups, k_out // groups, -1))
    acc = acc.reshape(batch, k_out, locations)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)[:, None]
    oy = output_size(x.shape[2], fy, stride[0], 2 * padding[0], dilation[0])
    ox = output_size(x.shape[3], fx, stride[1], 2 * padding[1], dilation[1])
    return acc.reshape(batch, k_out, oy, ox)


def qconv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *, x_zero: int,
            w_zero: np.ndarray | int, out_zero: int, m0: np.ndarray, shift: np.ndarray,
            stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
            dilation: tuple[int, int] = (1, 1), groups: int = 1,
            rounding: Rounding = "nearest", qmin: int = 0, qmax: int = 255,
            multiplier_f32: np.ndarray | None = None) -> np.ndarray:
    """Quantized 2-D convolution as im2col + integer matmul, grouped and depthwise too.

    ``weight`` is [K, C/groups, FY, FX]; ``bias`` int32 [K] at scale S_x·S_w; ``m0``,
    ``shift``, ``w_zero`` and ``multiplier_f32`` are per output channel [K] (or scalars).
    """
    acc = conv_accumulate(x, weight, bias, x_zero=x_zero, w_zero=w_zero, stride=stride,
                          padding=padding, dilation=dilation, groups=groups)
    return requantize_channels(acc, m0, shift, out_zero, rounding, qmin, qmax, multiplier_f32)


def requantize_channels(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, out_zero: int,
                        rounding: Rounding, qmin: int, qmax: int,
                        multiplier_f32: np.ndarray | None, *, axis: int = 1,
                        out_dtype: np.dtype | type = np.int64) -> np.ndarray:
    """:func:`requantize` with per-channel parameters along ``axis`` (1 for NCHW)."""
    channels = acc.shape[axis]

    def along_channels(value):
        if value is None:
            return None
        shape = [1] * acc.ndim
        shape[axis] = channels
        return np.broadcast_to(np.asarray(value), (channels,)).reshape(shape)

    return requantize(acc, along_channels(m0), along_channels(shift), out_zero, rounding, qmin,
                      qmax, multiplier_f32=along_channels(multiplier_f32), out_dtype=out_dtype)


def qmaxpool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], pad_value: int | float, ceil_mode: bool = False
               ) -> np.ndarray:
    """Max pooling on integers (exact: quantization is monotone, so it commutes with max).

    Separable running maxima over strided slices of the padded input (first over the
    window's rows, then its columns), in PyTorch, which keeps the input's memory layout
    and uses every core: no window copies. Integer and float arrays (accumulators) alike.
    """
    import torch

    batch, channels, height, width = x.shape
    oy = _pooled_size(height, kernel[0], stride[0], padding[0], ceil_mode)
    ox = _pooled_size(width, kernel[1], stride[1], padding[1], ceil_mode)
    extra_h = max(0, (oy - 1) * stride[0] + kernel[0] - height - 2 * padding[0])
    extra_w = max(0, (ox - 1) * stride[1] + kernel[1] - width - 2 * padding[1])
    if x.dtype.kind in "iu":  # e.g. qmin -128 for a uint8 tensor of ReLU outputs: every
        # value is >= the type's minimum, which then pads as well (and does not wrap)
        pad_value = max(pad_value, int(np.iinfo(x.dtype).min))
    padded = pad_nchw(x, (padding[0], padding[1], padding[0] + extra_h, padding[1] + extra_w),
                      pad_value)
    # PyTorch wraps only writable arrays (nothing is written to it here).
    padded = torch.from_numpy(padded if padded.flags.writeable else padded.copy())
    rows = None
    for ky in range(kernel[0]):
        window = padded[:, :, ky:ky + stride[0] * (oy - 1) + 1:stride[0]]
        rows = window if rows is None else torch.maximum(rows, window)
    result = None
    for kx in range(kernel[1]):
        window = rows[:, :, :, kx:kx + stride[1] * (ox - 1) + 1:stride[1]]
        result = window if result is None else torch.maximum(result, window)
    return result.numpy() if kernel[0] * kernel[1] > 1 else result.numpy().copy()


def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Pooled length; in ceil mode a last window starting in the right padding is dropped
    (PyTorch's rule)."""
    span = size + 2 * pad - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def window_sums(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], pad_value: int) -> np.ndarray:
    """Sum of each pooling window (padding with ``pad_value``), [N, C, OY, OX] int64."""
    batch, channels = x.shape[:2]
    cols = im2col(np.asarray(x, dtype=np.int64).reshape(batch * channels, 1, *x.shape[2:]),
                  kernel, stride=stride, padding=padding, pad_value=pad_value)
    oy = output_size(x.shape[2], kernel[0], stride[0], 2 * padding[0], 1)
    ox = output_size(x.shape[3], kernel[1], stride[1], 2 * padding[1], 1)
    return cols.sum(axis=1).reshape(batch, channels, oy, ox)
