"""Fixed-point arithmetic of integer-only inference (Jacob et al. 2018, section 2.2).

A real multiplier M = S_a·S_w / S_out is written as M0 · 2^-(31+n) with M0 an int32 in
[2^30, 2^31). Requantization then needs one integer multiply and one shift:

* ``floor``: (acc · M0) >> (31 + n), an arithmetic shift (rounds toward -inf);
* ``nearest``: (acc · M0 + 2^(30+n)) >> (31 + n): round half up, as cheap in hardware;
* ``float32``: round_half_even(float32(acc) · float32(M)), as ONNX Runtime does.

Every mode then adds the output zero point and saturates to [qmin, qmax], except ``mvu``:
what BARVINN's matrix-vector unit computes (:mod:`kiln.mvu`): (acc · M0 + 2^(30+n)) >>
(31 + n) with a 16-bit M0 (the rounding offset travels in the unit's bias), plus the zero
point; an unsigned output (qmin = 0) passes the unit's ReLU (max 0); then only the low bits
of [qmin, qmax]'s width are kept: it wraps, it does not saturate.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from kiln.errors import KilnError

Rounding = Literal["floor", "nearest", "float32", "mvu"]
ROUNDING_MODES: tuple[str, ...] = ("floor", "nearest", "float32")
# Made only by kiln.mvu's lowering, never chosen by `kiln lower`: what the MVU computes.
MVU_ROUNDING = "mvu"
MVU_SCALER_BITS = 27  # BARVINN's MVU scaler output (fixedpointscaler.v, BSCALERP)


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """``(M0, n)`` with ``multiplier ≈ M0 · 2^-(31+n)`` and ``M0`` in [2^30, 2^31).

    ``n`` is negative for multipliers of 1 or more. The relative error is at most 2^-31.

    >>> quantize_multiplier(0.5)
    (1073741824, 0)
    >>> quantize_multiplier(3.0)
    (1610612736, -2)
    """
    if not math.isfinite(multiplier) or multiplier <= 0:
        raise KilnError(f"a requantization multiplier must be positive and finite, got "
                        f"{multiplier}")
    fraction, exponent = math.frexp(multiplier)  # multiplier = fraction · 2^exponent
    m0 = round(fraction * (1 << 31))
    if m0 == 1 << 31:  # the fraction rounded up to 1.0
        m0 //= 2
        exponent += 1
    shift = -exponent
    if 31 + shift > 62:
        raise KilnError(f"multiplier {multiplier:.3g} is below 2^-31: the layer's output "
                        "scale is out of proportion to its input and weight scales")
    if 31 + shift < 0:
        raise KilnError(f"multiplier {multiplier:.3g} is 2^31 or more")
    return m0, shift


def quantize_multipliers(multipliers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` for each element: arrays ``M0`` and ``n`` (int64)."""
    pairs = [quantize_multiplier(float(m)) for m in np.asarray(multipliers).reshape(-1)]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    shift = np.array([p[1] for p in pairs], dtype=np.int64)
    return m0, shift


def float32_multiplier(*, input_scale: float, weight_scale: np.ndarray | float,
                       output_scale: float) -> np.ndarray:
    """The float32 multiplier ONNX Runtime uses: float32(s_in · s_w) / s_out, in float32."""
    product = np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)
    return (product / np.float32(output_scale)).astype(np.float32)


def float32_fields(multiplier_f32: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """A float32 multiplier as ``(mantissa, shift)``: M = mantissa · 2^-shift, the mantissa a
    24-bit integer (what the float32-mode hardware stores instead of (M0, n)).

    >>> float32_fields(np.float32(0.75))
    (array(12582912), array(24))
    """
    fraction, exponent = np.frexp(np.asarray(multiplier_f32, dtype=np.float32))
    mantissa = (fraction.astype(np.float64) * 2.0**24).astype(np.int64)
    return mantissa, (24 - exponent).astype(np.int64)


def _round_half_even_shift(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round_half_even(value / 2^shift) for non-negative int64 ``value`` and ``shift`` >= 0."""
    shift = np.asarray(shift, dtype=np.int64)
    kept = value >> shift
    remainder = value - (kept << shift)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    up = (remainder > half) | ((remainder == half) & (shift > 0) & ((kept & 1) == 1))
    return kept + up


def _round_to_24_bits(value: np.ndarray) -> np.ndarray:
    """``value`` (non-negative int64) rounded half-to-even to 24 significant bits."""
    bits = np.zeros_like(value)
    probe = value.copy()
    while np.any(probe > 0):
        bits += probe > 0
        probe >>= 1
    shift = np.maximum(bits - 24, 0)
    return _round_half_even_shift(value, shift) << shift


def requantize_float32_exact(acc: np.ndarray, mantissa: np.ndarray, shift: np.ndarray,
                             zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """The ``float32`` mode in integers only, as the generated hardware computes it:
    |acc| rounded to 24 significant bits (float32(acc)), times the 24-bit mantissa, the
    product rounded to 24 significant bits (the float32 multiply), then shifted right by
    ``shift`` rounding half to even (rint); the sign is applied last (float rounding is
    symmetric). Equal to :func:`requantize` in ``float32`` mode for every int32 acc.
    """
    acc = np.asarray(acc, dtype=np.int64)
    magnitude = _round_to_24_bits(np.abs(acc))
    product = _round_to_24_bits(magnitude * np.asarray(mantissa, dtype=np.int64))
    rounded = _round_half_even_shift(product, np.asarray(shift, dtype=np.int64))
    signed = np.where(acc < 0, -rounded, rounded)
    return np.clip(signed + zero_point, qmin, qmax)


def narrow_dtype(qmin: int, qmax: int) -> np.dtype:
    """The smallest NumPy integer type that holds [qmin, qmax].

    >>> narrow_dtype(0, 255), narrow_dtype(-128, 127), narrow_dtype(-1, 255)
    (dtype('uint8'), dtype('int8'), dtype('int16'))
    """
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


_TORCH_TYPES = {np.dtype(t): name for t, name in (
    (np.uint8, "uint8"), (np.int8, "int8"), (np.int16, "int16"), (np.int32, "int32"),
    (np.int64, "int64"))}


def _requantize_float32_torch(acc: np.ndarray, multiplier_f32: np.ndarray | float,
                              zero_point: int, qmin: int, qmax: int, out_dtype: np.dtype
                              ) -> np.ndarray:
    """The float32 mode on large arrays, in PyTorch: the same IEEE float32 operations
    (multiply, round half to even, add, clamp) on every core, in the input's layout."""
    import torch

    multiplier = torch.from_numpy(np.array(multiplier_f32, dtype=np.float32))  # a copy
    scaled = torch.from_numpy(acc) * multiplier
    scaled.round_().add_(float(zero_point)).clamp_(qmin, qmax)
    return scaled.to(getattr(torch, _TORCH_TYPES[out_dtype])).numpy()


def requantize(acc: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int, zero_point: int,
               rounding: Rounding, qmin: int, qmax: int, *,
               multiplier_f32: np.ndarray | float | None = None,
               out_dtype: np.dtype | type = np.int64) -> np.ndarray:
    """Scale an int32 accumulator to the output grid and saturate.

    ``m0``, ``shift`` and ``multiplier_f32`` broadcast against ``acc`` (per-channel values
    go along the channel axis, e.g. shape [K, 1] for [K, L] accumulators). The result has
    ``out_dtype`` (the engine passes the narrowest type of [qmin, qmax]).

    >>> requantize(np.array([1000, -1000]), 1 << 30, 3, 10, "nearest", 0, 255).tolist()
    [73, 0]
    """
    if rounding == "float32":
        if multiplier_f32 is None:
            raise KilnError("float32 rounding needs the float32 multiplier")
        # float32(acc) rounds like C's int-to-float conversion (to nearest even), also
        # from float64 or float32 arrays that hold exact integers.
        acc_f32 = np.asarray(acc).astype(np.float32, copy=False)
        if (acc_f32.size >= 1 << 16 and np.dtype(out_dtype) in _TORCH_TYPES
                and acc_f32.flags.writeable):  # PyTorch wraps only writable arrays
            return _requantize_float32_torch(acc_f32, multiplier_f32, zero_point, qmin, qmax,
                                             np.dtype(out_dtype))
        multiplier = np.asarray(multiplier_f32, dtype=np.float32)
        scaled = np.empty(np.broadcast_shapes(acc_f32.shape, multiplier.shape), np.float32)
        np.multiply(acc_f32, multiplier, out=scaled)
        np.rint(scaled, out=scaled)  # rint rounds half to even
        # In float32 the zero point adds exactly below 2^24; above, the clip saturates anyway.
        scaled += np.float32(zero_point)
        return np.clip(scaled, qmin, qmax, out=scaled).astype(out_dtype)
    if rounding == MVU_ROUNDING:
        return requantize_mvu(acc, m0, shift, zero_point, qmin, qmax).astype(out_dtype,
                                                                           copy=False)
    if rounding not in ("floor", "nearest"):
        raise KilnError(f"unknown rounding mode '{rounding}': use {', '.join(ROUNDING_MODES)}")
    total_shift = 31 + np.asarray(shift, dtype=np.int64)
    product = np.asarray(acc).astype(np.int64) * np.asarray(m0, dtype=np.int64)
    if rounding == "nearest":
        product = product + (np.int64(1) << (total_shift - 1))
    return np.clip((product >> total_shift) + zero_point, qmin, qmax).astype(out_dtype,
                                                                              copy=False)


def requantize_mvu(acc: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int,
                   zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """The ``mvu`` mode, what BARVINN's MVU and its controller compute: the unit's scaler
    value v = acc · M0 + 2^(30+n) + zero point · 2^(31+n) kept to its 27 bits.

    A signed output is v's bits from 31+n up (floor((acc · M0 + 2^(30+n)) / 2^(31+n)) +
    zero point, round half up), wrapped into [qmin, qmax]: the unit cannot saturate. An
    unsigned output (qmin = 0) passes the controller's ReLU, which reads every bit of v
    from 31+n up and saturates: clip(v / 2^(31+n), 0, qmax).

    >>> requantize_mvu(np.array([1, -1, 6, 9]), 1 << 13, -17, 0, -2, 1).tolist()  # wraps
    [1, 0, -1, 1]
    >>> requantize_mvu(np.array([1, -1, 6, 9]), 1 << 13, -17, 0, 0, 3).tolist()   # saturates
    [1, 0, 3, 3]
    """
    total_shift = 31 + np.asarray(shift, dtype=np.int64)
    half = np.where(total_shift > 0, np.int64(1) << np.maximum(total_shift - 1, 0), 0)
    product = np.asarray(acc).astype(np.int64) * np.asarray(m0, dtype=np.int64) + half
    if qmin == 0:
        value = product + (np.int64(zero_point) << total_shift)
        top = np.int64(1) << (MVU_SCALER_BITS - 1)
        value = ((value + top) & ((top << 1) - 1)) - top  # the scaler's 27 bits
        return np.clip(value >> total_shift, 0, qmax)
    value = (product >> total_shift) + zero_point
    width = qmax - qmin + 1
    return (value - qmin) % width + qmin


def accumulator_bits(reduction: int, input_range: int, weight_range: int,
                     bias_max: int = 0) -> int:
    """Signed bits an accumulator needs: ``reduction`` products of magnitudes up to
    ``input_range · weight_range`` plus a bias of magnitude up to ``bias_max``.

    >>> accumulator_bits(144, 255, 128)   # a 3x3x16 conv, uint8 inputs, int8 weights
    24
    """
    largest = reduction * input_range * weight_range + bias_max
    return max(1, largest).bit_length() + 1
