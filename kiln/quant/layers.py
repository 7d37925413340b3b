"""Conv and linear layers whose weights (and biases) pass through fake quantizers.

They subclass ``nn.Conv2d`` / ``nn.Linear``, so every pass that knows those still does;
``weight_quantizer`` and ``bias_quantizer`` are ``FakeQuantize`` modules or ``None``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.spec import QuantSpec


def _quantizers(layer: nn.Module, weight: QuantSpec | None, bias: QuantSpec | None) -> None:
    if weight is not None and weight.granularity == "channel" and weight.axis != 0:
        # Output channels are axis 0 for both conv and linear weights.
        weight = weight.model_copy(update={"axis": 0})
    layer.weight_quantizer = FakeQuantize(weight, "weight") if weight is not None else None
    has_bias = getattr(layer, "bias", None) is not None
    layer.bias_quantizer = FakeQuantize(bias, "bias") if bias is not None and has_bias else None


def _copy_state(source: nn.Module, target: nn.Module) -> None:
    """Parameters, and buffers such as pruning masks, from the float layer."""
    target.load_state_dict({k: v for k, v in source.state_dict().items()
                            if "." not in k and hasattr(target, k)}, strict=False)
    for name, buffer in source.named_buffers(recurse=False):
        if not hasattr(target, name):
            target.register_buffer(name, buffer.clone())


class _QuantizedParameters:
    """The weight and bias as the layer computes with them (through its quantizers)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_quantizer: FakeQuantize | None
    bias_quantizer: FakeQuantize | None

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_bias(self) -> torch.Tensor | None:
        if self.bias is None or self.bias_quantizer is None:
            return self.bias
        return self.bias_quantizer(self.bias)


class QuantConv2d(_QuantizedParameters, nn.Conv2d):
    """``nn.Conv2d`` computing with quantized weights and bias."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight: QuantSpec | None, bias: QuantSpec | None
                   ) -> QuantConv2d:
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode)
        _copy_state(conv, layer)
        _quantizers(layer, weight, bias)
        return layer

    def output_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's output computed with ``weight`` (and its bias as it computes it)."""
        return self._conv_forward(x, weight, self.quantized_bias())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_with(x, self.quantized_weight())


class QuantLinear(_QuantizedParameters, nn.Linear):
    """``nn.Linear`` computing with quantized weights and bias."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight: QuantSpec | None, bias: QuantSpec | None
                   ) -> QuantLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        _copy_state(linear, layer)
        _quantizers(layer, weight, bias)
        return layer

    def output_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's output computed with ``weight`` (and its bias as it computes it)."""
        return F.linear(x, weight, self.quantized_bias())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_with(x, self.quantized_weight())
