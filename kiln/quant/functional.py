"""Quantize-dequantize arithmetic for every format, with straight-through gradients.

All functions take and return float tensors ("fake quantization"): the values are
exactly those the format can represent, so accuracy measured in float is the accuracy
of the integer model. Gradients pass straight through rounding (STE) and are zero where
a value was clipped.
"""

from __future__ import annotations

import torch

from kiln.quant.spec import QuantSpec


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def channel_view(values: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape per-channel ``values`` [C] to broadcast against ``x`` along ``axis``."""
    if values.dim() == 0 or values.numel() == 1:
        return values.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return values.reshape(shape)


def scale_and_zero_point(
    lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map [lo, hi] onto the spec's integer grid.

    The range is widened to contain 0 so that 0.0 is exactly representable (padding and
    ReLU outputs need it).

    >>> s, z = scale_and_zero_point(torch.tensor(-1.0), torch.tensor(3.0),
    ...                             QuantSpec(bits=8, signed=False, symmetric=False))
    >>> round(float(s), 6), int(z)
    (0.015686, 64)
    """
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    # A range that calibration saw as empty (a ReLU that never fired: only zeros) holds
    # zero exactly at any scale; it gets scale 1 so that the integer program stays well
    # conditioned (with a scale of 1e-38, or even float32 epsilon, the next layer's int32
    # bias or the requantization multiplier overflows). A tiny but non-empty range gets
    # at least float32 epsilon, as PyTorch's observers do.
    tiny = torch.finfo(torch.float32).eps
    empty = (hi - lo) == 0
    if spec.symmetric:
        bound = torch.maximum(-lo, hi)
        scale = torch.where(empty, torch.ones_like(bound), torch.clamp(bound / spec.qmax,
                                                                          min=tiny))
        return scale, torch.zeros_like(scale)
    scale = torch.where(empty, torch.ones_like(hi),
                        torch.clamp((hi - lo) / (spec.qmax - spec.qmin), min=tiny))
    zero_point = torch.clamp(torch.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point


def fake_quant_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Uniform integer quantize-dequantize: (clamp(round(x/s) + z) - z) · s, STE gradient."""
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def fake_quant_lsq(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Learned step size quantization (Esser et al. 2020): the scale's gradient is scaled
    by 1/sqrt(N · Qp) so it learns at the pace of the weights."""
    elements = x.numel() / max(scale.numel(), 1)
    gradient_scale = 1.0 / (elements * max(qmax, 1)) ** 0.5
    scaled = scale * gradient_scale + (scale - scale * gradient_scale).detach()
    q = torch.clamp(x / scaled + zero_point, qmin, qmax)
    return (round_ste(q) - zero_point) * scaled


def fake_quant_minifloat(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float = 1.0
                         ) -> torch.Tensor:
    """Round ``x / scale`` to the nearest minifloat (subnormals included), saturate, rescale."""
    y = x / scale
    magnitude = y.abs()
    min_normal_exponent = 1 - spec.bias
    exponent = torch.floor(torch.log2(torch.clamp(magnitude, min=2.0**min_normal_exponent)))
    step = torch.pow(2.0, exponent - spec.mantissa_bits)
    rounded = round_ste(y / step) * step
    rounded = torch.clamp(rounded, -spec.max_value, spec.max_value)
    return rounded * scale


def fake_quant_bfp(x: torch.Tensor, spec: QuantSpec, axis: int = -1) -> torch.Tensor:
    """Block floating point: blocks of ``block_size`` along ``axis`` share the exponent of
    their largest magnitude; each value keeps a signed ``bits``-bit mantissa."""
    moved = x.movedim(axis, -1)
    shape = moved.shape
    length = shape[-1]
    padded_length = -(-length // spec.block_size) * spec.block_size
    flat = torch.nn.functional.pad(moved.reshape(-1, length), (0, padded_length - length))
    blocks = flat.reshape(flat.shape[0], -1, spec.block_size)
    peak = blocks.abs().amax(dim=-1, keepdim=True)
    shared_exponent = torch.floor(torch.log2(torch.clamp(peak, min=1e-30)))
    # The largest value in a block lands in [2^(bits-2), 2^(bits-1)) mantissa steps.
    step = torch.pow(2.0, shared_exponent - (spec.bits - 2))
    limit = 2 ** (spec.bits - 1)
    q = torch.clamp(round_ste(blocks / step), -limit, limit - 1) * step
    q = q.reshape(flat.shape[0], padded_length)[:, :length]
    return q.reshape(shape).movedim(-1, axis)
