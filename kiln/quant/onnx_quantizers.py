"""The quantizers of a pre-quantized ONNX model (QDQ or QONNX ``Quant`` nodes), built
for :func:`kiln.graph.from_onnx`, which reads the file's scales and zero points
(:mod:`kiln.graph.onnx_quant`) and hands them here.

    >>> from kiln.graph import from_onnx
    >>> graph = from_onnx("model_qdq.onnx", quantizers=ONNX_QUANTIZERS)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.errors import UnsupportedOperatorError
from kiln.graph.onnx_quant import QuantParams, integer_range
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.layers import QuantConv2d, QuantLinear
from kiln.quant.spec import QuantSpec


def spec_of(params: QuantParams, *, channel_axis: int = 0) -> QuantSpec:
    """The :class:`QuantSpec` of a file's quantization parameters."""
    per_channel = params.scale.size > 1
    symmetric = params.signed and not np.any(params.zero_point)
    return QuantSpec(bits=params.bits, signed=params.signed, symmetric=symmetric,
                     granularity="channel" if per_channel else "tensor",
                     axis=channel_axis if per_channel else 0)


def activation_quantizer(params: QuantParams, rank: int) -> tuple[Any, Any]:
    """A fixed activation quantizer (and, for a narrow range, the clamp in front of it)."""
    if params.scale.size > 1:
        raise UnsupportedOperatorError("per-channel activation quantization (kiln lowers "
                                       "per-tensor activations)")
    if params.bits > 16:
        raise UnsupportedOperatorError(f"{params.bits}-bit activations")
    quantizer = FakeQuantize.fixed(
        spec_of(params), torch.tensor(params.scale.reshape(-1), dtype=torch.float32),
        torch.tensor(params.zero_point.reshape(-1).astype(np.float32)))
    clamp = None
    if params.narrow:
        lo, hi = integer_range(params)
        clamp = nn.Hardtanh(params.real(lo), params.real(hi))
    return quantizer, clamp


def quantized_layer(layer: Any, params: QuantParams, channel_axis_in_file: int | None) -> Any:
    """``layer`` (nn.Conv2d / nn.Linear) as its quantized form with the file's weight
    quantization, fixed. ``channel_axis_in_file`` is the file's output-channel axis of the
    weight (where a per-channel scale must lie)."""
    if params.scale.size > 1 and params.axis != channel_axis_in_file:
        raise UnsupportedOperatorError("a weight quantized per channel along its input axis "
                                       "(kiln quantizes weights per output channel)")
    spec = spec_of(params, channel_axis=0)  # (a narrow range holds the same integers)
    if isinstance(layer, torch.nn.Conv2d):
        quantized = QuantConv2d.from_float(layer, None, None)
    else:
        quantized = QuantLinear.from_float(layer, None, None)
    quantized.weight_quantizer = FakeQuantize.fixed(
        spec, torch.tensor(np.asarray(params.scale, np.float32).reshape(-1)),
        torch.tensor(np.asarray(params.zero_point, np.float32).reshape(-1)), role="weight")
    return quantized.eval()


class _OnnxQuantizers:
    """kiln's :class:`~kiln.graph.onnx_quant.QuantizerFactory`."""

    def activation(self, params: QuantParams, rank: int) -> tuple[Any, Any]:
        return activation_quantizer(params, rank)

    def layer(self, layer: Any, params: QuantParams, channel_axis_in_file: int | None) -> Any:
        return quantized_layer(layer, params, channel_axis_in_file)


#: What :func:`kiln.graph.from_onnx` is given to import pre-quantized models.
ONNX_QUANTIZERS = _OnnxQuantizers()
