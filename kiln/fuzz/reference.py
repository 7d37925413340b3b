"""A plain reference interpreter of :class:`IntegerProgram`, for differential testing.

It shares no code with the engine's kernels: convolutions are sums over kernel offsets in
int64, pools are maxima over explicit windows, and requantization follows the formulas of
``DESIGN.md`` in int64 (``floor`` and ``nearest``) or in the integer emulation of float32
arithmetic that the generated hardware uses (``float32``). It is slow and obviously
correct, which is what the engine's fast paths (float32 direct convolution, int8 GEMM,
pooling before requantizing) are compared against.
"""

from __future__ import annotations

import numpy as np

from kiln.integer.arith import float32_fields, requantize_float32_exact
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant


def _requantize(acc: np.ndarray, op: IntOp, rounding: str, channel_axis: int | None,
                *, m0_key: str = "m0", shift_key: str = "shift",
                f32_key: str = "multiplier_f32") -> np.ndarray:
    lo, hi = op.attrs["clamp"]
    zero = op.out_quant.zero_point

    def per_channel(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values).reshape(-1)
        if channel_axis is None or values.size == 1:
            return values.reshape(())
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        return values.reshape(shape)

    if rounding == "float32":
        mantissa, shift = float32_fields(np.asarray(op.arrays[f32_key], dtype=np.float32))
        return requantize_float32_exact(acc, per_channel(mantissa), per_channel(shift), zero,
                                        lo, hi)
    total_shift = 31 + per_channel(op.arrays[shift_key]).astype(np.int64)
    product = acc.astype(np.int64) * per_channel(op.arrays[m0_key]).astype(np.int64)
    if rounding == "nearest":
        product = product + np.where(total_shift > 0, np.int64(1) << np.maximum(
            total_shift - 1, 0), 0)
    return np.clip((product >> total_shift) + zero, lo, hi)


def _in_zero(op: IntOp, key: str = "in_quant") -> int:
    return TensorQuant(**op.attrs[key]).zero_point


def _conv(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    weight = op.arrays["weight"].astype(np.int64)
    weight = weight - op.arrays["weight_zero"].astype(np.int64).reshape(-1, 1, 1, 1)
    (pad_y, pad_x), (sy, sx) = op.attrs["padding"], op.attrs["stride"]
    dy, dx = op.attrs["dilation"]
    groups = op.attrs["groups"]
    centered = x.astype(np.int64) - _in_zero(op)
    centered = np.pad(centered, ((0, 0), (0, 0), (pad_y, pad_y), (pad_x, pad_x)))  # zero = zp
    batch, channels, height, width = centered.shape
    k_out, c_group, fy, fx = weight.shape
    out_h = (height - dy * (fy - 1) - 1) // sy + 1
    out_w = (width - dx * (fx - 1) - 1) // sx + 1
    acc = np.zeros((batch, k_out, out_h, out_w), dtype=np.int64)
    k_group = k_out // groups
    for g in range(groups):
        inputs = centered[:, g * c_group:(g + 1) * c_group]
        kernels = weight[g * k_group:(g + 1) * k_group]
        for ky in range(fy):
            for kx in range(fx):
                window = inputs[:, :, ky * dy: ky * dy + sy * (out_h - 1) + 1: sy,
                                kx * dx: kx * dx + sx * (out_w - 1) + 1: sx]
                acc[:, g * k_group:(g + 1) * k_group] += np.einsum(
                    "nchw,kc->nkhw", window, kernels[:, :, ky, kx])
    acc += op.arrays["bias"].astype(np.int64).reshape(1, -1, 1, 1)
    return _requantize(acc, op, rounding, 1)


def _dense(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    weight = op.arrays["weight"].astype(np.int64)
    weight = weight - op.arrays["weight_zero"].astype(np.int64).reshape(-1, 1)
    centered = x.reshape(len(x), -1).astype(np.int64) - _in_zero(op)
    acc = centered @ weight.T + op.arrays["bias"].astype(np.int64)
    return _requantize(acc, op, rounding, 1)


def _affine(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    shape = [1, -1] + [1] * (x.ndim - 2)
    acc = (x.astype(np.int64) - _in_zero(op)) * op.arrays["weight"].reshape(shape) \
        + op.arrays["bias"].reshape(shape)
    return _requantize(acc, op, rounding, 1)


def _windows(x: np.ndarray, kernel: list[int], stride: list[int], out_h: int, out_w: int
             ) -> list[np.ndarray]:
    return [x[:, :, ky: ky + stride[0] * (out_h - 1) + 1: stride[0],
              kx: kx + stride[1] * (out_w - 1) + 1: stride[1]]
            for ky in range(kernel[0]) for kx in range(kernel[1])]


def _pooled(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _maxpool(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    kernel, stride, (pad_y, pad_x) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    ceil = op.attrs["ceil_mode"]
    out_h = _pooled(x.shape[2], kernel[0], stride[0], pad_y, ceil)
    out_w = _pooled(x.shape[3], kernel[1], stride[1], pad_x, ceil)
    extra_y = max(0, (out_h - 1) * stride[0] + kernel[0] - x.shape[2] - 2 * pad_y)
    extra_x = max(0, (out_w - 1) * stride[1] + kernel[1] - x.shape[3] - 2 * pad_x)
    lowest = TensorQuant(**op.attrs["in_quant"]).qmin
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad_y, pad_y + extra_y),
                                         (pad_x, pad_x + extra_x)), constant_values=lowest)
    return np.max(np.stack(_windows(padded, kernel, stride, out_h, out_w)), axis=0)


def _avgpool(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    kernel, stride = op.attrs["kernel"], op.attrs["stride"]
    centered = x.astype(np.int64) - _in_zero(op)
    out_h = (x.shape[2] - kernel[0]) // stride[0] + 1
    out_w = (x.shape[3] - kernel[1]) // stride[1] + 1
    sums = np.sum(np.stack(_windows(centered, kernel, stride, out_h, out_w)), axis=0)
    return _requantize(sums, op, rounding, None)


def _add(op: IntOp, a: np.ndarray, b: np.ndarray, rounding: str) -> np.ndarray:
    da = a.astype(np.int64) - _in_zero(op, "a_quant")
    db = b.astype(np.int64) - _in_zero(op, "b_quant")
    lo, hi = op.attrs["clamp"]
    zero = op.out_quant.zero_point
    if rounding == "float32":  # two float32 products, a float32 sum, rint
        total = np.float32(da.astype(np.float32) * np.float32(op.arrays["multiplier_f32"][0])) \
            + np.float32(db.astype(np.float32) * np.float32(op.arrays["multiplier_b_f32"][0]))
        return np.clip(np.rint(total.astype(np.float32)).astype(np.int64) + zero, lo, hi)
    # exact: a·Ma + b·Mb with M = M0·2^-(31+n), one rounding of the sum
    shift_a, shift_b = 31 + int(op.arrays["shift"][0]), 31 + int(op.arrays["shift_b"][0])
    common = max(shift_a, shift_b)
    total = da * int(op.arrays["m0"][0]) * (1 << (common - shift_a)) \
        + db * int(op.arrays["m0_b"][0]) * (1 << (common - shift_b))
    if rounding == "nearest":
        total = total + (1 << (common - 1))
    return np.clip((total >> common) + zero, lo, hi)


def _requantize_op(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    return _requantize(x.astype(np.int64) - _in_zero(op), op, rounding, None)


def _pad(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    top, left, bottom, right = op.attrs["padding"]
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
                  constant_values=op.attrs["value"])


_OPS = {"conv": _conv, "dense": _dense, "affine": _affine, "maxpool": _maxpool,
        "avgpool": _avgpool, "requantize": _requantize_op, "pad": _pad,
        "flatten": lambda op, x, r: x.reshape(len(x), *op.attrs["shape"]),
        "clamp": lambda op, x, r: np.clip(x, *op.attrs["clamp"])}


def reference_run(program: IntegerProgram, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of ``program`` on integer inputs ``x`` (int64), by name."""
    tensors = {program.input_name: np.asarray(x, dtype=np.int64)}
    for op in program.ops:
        if op.kind == "add":
            out = _add(op, tensors[op.inputs[0]], tensors[op.inputs[1]], program.rounding)
        else:
            out = _OPS[op.kind](op, tensors[op.inputs[0]], program.rounding)
        tensors[op.output] = np.asarray(out, dtype=np.int64)
    return tensors
