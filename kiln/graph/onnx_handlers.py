"""One handler per ONNX operator: each turns a node into fx nodes (standard PyTorch
modules and functions) through the importer of :mod:`kiln.graph.onnx_import`. A new ONNX
operator is a new ``@handles("OpType")`` function here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from kiln.errors import UnsupportedOperatorError
from kiln.graph import onnx_ops
from kiln.graph.onnx_quant import linear_params, qonnx_params, quantize_node, same_params

#: The importer that hands each node over (kiln.graph.onnx_import._Importer): its values,
#: constants and the fx graph being built.
Importer = Any
Handler = Callable[[Importer, Any, dict[str, Any]], list[torch.fx.Node]]
HANDLERS: dict[str, Handler] = {}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = function
        return function

    return register


def _node_name(node: Any) -> str:
    return node.name or node.output[0]


# --- operators -------------------------------------------------------------------------


def _spatial_padding(
    imp: Importer, node: Any, attrs: dict[str, Any], x: torch.fx.Node, kernel: list[int],
    strides: list[int], dilations: list[int],
) -> list[int]:
    """ONNX pads [begin..., end...] for this node, resolving ``auto_pad`` from shapes."""
    rank = len(kernel)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * rank)))
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    spatial = imp.example(x).shape[-rank:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _split_padding(
    imp: Importer, node: Any, x: torch.fx.Node, pads: list[int], fill: float
) -> tuple[torch.fx.Node, tuple[int, ...]]:
    """Symmetric pads go to the layer; asymmetric ones become an explicit pad node."""
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, tuple(begins)
    torch_pads: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=True):
        torch_pads += [begin, end]
    padded = imp.call_function(_node_name(node) + "_pad", F.pad, x, tuple(torch_pads),
                               "constant", fill)
    return padded, (0,) * rank


@handles("Conv")
def _conv(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    weight = imp.require_constant(node, 1, "the Conv weight")
    bias = imp.require_constant(node, 2, "the Conv bias")
    rank = weight.ndim - 2
    if rank not in (1, 2):
        raise UnsupportedOperatorError(f"{imp.where(node)}: only 1-D and 2-D Conv are supported")
    kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    groups = int(attrs.get("group", 1))
    pads = _spatial_padding(imp, node, attrs, x, kernel, strides, dilations)
    x, padding = _split_padding(imp, node, x, pads, 0.0)
    conv_type = nn.Conv2d if rank == 2 else nn.Conv1d
    conv = conv_type(
        weight.shape[1] * groups, weight.shape[0], tuple(kernel), stride=tuple(strides),
        padding=padding, dilation=tuple(dilations), groups=groups, bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    if node.input[1] in imp.weight_quant:  # a pre-quantized weight keeps its quantization
        conv = imp.quantizers_for(node).layer(conv, imp.weight_quant[node.input[1]], 0)
    return [imp.call_module(_node_name(node), conv, x)]


@handles("Gemm")
def _gemm(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    a = imp.dynamic(node.input[0], node)
    if not imp.is_constant(node.input[1]):
        b = imp.dynamic(node.input[1], node)
        c = imp.dynamic(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        return [imp.call_function(_node_name(node), onnx_ops.onnx_gemm, a, b, c,
                                  alpha, beta, trans_a, trans_b)]
    weight = imp.constants[node.input[1]]
    weight = weight if trans_b else weight.T  # nn.Linear keeps [out, in]
    bias = imp.require_constant(node, 2, "the Gemm C operand") if len(node.input) > 2 else None
    out_features, in_features = weight.shape
    if trans_a:
        a = imp.call_function(_node_name(node) + "_transA", onnx_ops.onnx_transpose, a, (1, 0))
    linear = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(alpha * weight.astype(np.float32)))
        if bias is not None:
            full = np.broadcast_to(beta * bias.astype(np.float32), (1, out_features))
            if bias.size not in (1, out_features):
                raise UnsupportedOperatorError(
                    f"{imp.where(node)}: Gemm C of shape {bias.shape} is not a per-column bias"
                )
            linear.bias.copy_(torch.from_numpy(full.reshape(-1).copy()))
    if node.input[1] in imp.weight_quant:  # the output channels: axis 0 of B^T, 1 of B
        linear = imp.quantizers_for(node).layer(linear, imp.weight_quant[node.input[1]],
                                                0 if trans_b else 1)
    return [imp.call_module(_node_name(node), linear, a)]


@handles("MatMul")
def _matmul(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.is_constant(node.input[1]) and imp.constants[node.input[1]].ndim == 2:
        weight = imp.constants[node.input[1]].astype(np.float32)
        a = imp.dynamic(node.input[0], node)
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        if node.input[1] in imp.weight_quant:
                linear = imp.quantizers_for(node).layer(linear, imp.weight_quant[node.input[1]], 1)
        return [imp.call_module(_node_name(node), linear, a)]
    a = imp.dynamic(node.input[0], node)
    b = imp.dynamic(node.input[1], node)
    return [imp.call_function(_node_name(node), torch.matmul, a, b)]


def _unary_module(factory: Callable[[], nn.Module]) -> Handler:
    def handler(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
        return [imp.call_module(_node_name(node), factory(), imp.dynamic(node.input[0], node))]

    return handler


HANDLERS["Relu"] = _unary_module(nn.ReLU)
HANDLERS["Sigmoid"] = _unary_module(nn.Sigmoid)
HANDLERS["Tanh"] = _unary_module(nn.Tanh)
HANDLERS["Dropout"] = _unary_module(nn.Identity)  # inference semantics
HANDLERS["GlobalAveragePool"] = _unary_module(lambda: nn.AdaptiveAvgPool2d(1))


@handles("Identity")
def _identity(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    return [imp.dynamic(node.input[0], node)]


@handles("Clip")
def _clip(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.opset < 11:
        low = float(attrs.get("min", -np.inf))
        high = float(attrs.get("max", np.inf))
    else:
        low_value = imp.require_constant(node, 1, "the Clip min")
        high_value = imp.require_constant(node, 2, "the Clip max")
        low = float(low_value) if low_value is not None else -np.inf
        high = float(high_value) if high_value is not None else np.inf
    x = imp.dynamic(node.input[0], node)
    params = imp.quant_params.get(node.input[0])
    if params is not None:  # a clip of integers (between Q and DQ): its bounds as reals
        low = params.real(low) if np.isfinite(low) else low
        high = params.real(high) if np.isfinite(high) else high
        imp.quant_params[node.output[0]] = params
    if low == 0.0 and high == 6.0:
        module: nn.Module = nn.ReLU6()
    elif low == 0.0 and high == np.inf:
        module = nn.ReLU()
    else:
        module = nn.Hardtanh(low, high)
    return [imp.call_module(_node_name(node), module, x)]


@handles("BatchNormalization")
def _batchnorm(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOperatorError(
            f"{imp.where(node)}: BatchNormalization in training mode (several outputs)"
        )
    x = imp.dynamic(node.input[0], node)
    scale, shift, mean, var = (
        imp.require_constant(node, i, what)
        for i, what in enumerate(["", "the BN scale", "the BN bias", "the BN mean", "the BN var"])
        if i > 0
    )
    rank = imp.example(x).dim()
    bn_type = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    bn = bn_type(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)),
                 momentum=1.0 - float(attrs.get("momentum", 0.9)))
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale.astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(shift.astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
    return [imp.call_module(_node_name(node), bn, x)]


def _pool_geometry(
    imp: Importer, node: Any, attrs: dict[str, Any], x: torch.fx.Node
) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise UnsupportedOperatorError(f"{imp.where(node)}: only 2-D pooling is supported")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = _spatial_padding(imp, node, attrs, x, kernel, strides, dilations)
    return kernel, strides, dilations, pads


@handles("MaxPool")
def _maxpool(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOperatorError(f"{imp.where(node)}: MaxPool with an Indices output")
    x = imp.dynamic(node.input[0], node)
    kernel, strides, dilations, pads = _pool_geometry(imp, node, attrs, x)
    rank = len(kernel)
    symmetric_ok = pads[:rank] == pads[rank:] and all(
        p <= k // 2 for p, k in zip(pads[:rank], kernel, strict=True))
    if not symmetric_ok:
        x, _ = _split_padding(imp, node, x, [p if pads[:rank] != pads[rank:] else p for p in pads],
                              float("-inf"))
        if pads[:rank] == pads[rank:]:  # symmetric but larger than torch allows
            torch_pads = [pads[1], pads[3], pads[0], pads[2]]
            x = imp.call_function(_node_name(node) + "_pad", F.pad, x, tuple(torch_pads),
                                  "constant", float("-inf"))
        padding: tuple[int, ...] = (0, 0)
    else:
        padding = tuple(pads[:rank])
    pool = nn.MaxPool2d(tuple(kernel), tuple(strides), padding, tuple(dilations),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)))
    return [imp.call_module(_node_name(node), pool, x)]


@handles("AveragePool")
def _avgpool(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    kernel, strides, dilations, pads = _pool_geometry(imp, node, attrs, x)
    if dilations != [1, 1]:
        raise UnsupportedOperatorError(f"{imp.where(node)}: dilated AveragePool")
    include_pad = bool(attrs.get("count_include_pad", 0))
    rank = len(kernel)
    symmetric = pads[:rank] == pads[rank:] and all(
        p <= k // 2 for p, k in zip(pads[:rank], kernel, strict=True))
    if not symmetric:
        if not include_pad and any(pads):
            return [imp.call_function(
                _node_name(node), onnx_ops.onnx_avgpool_exclude_pad, x, tuple(kernel),
                tuple(strides), tuple(pads), bool(attrs.get("ceil_mode", 0)))]
        x, _ = _split_padding(imp, node, x, pads, 0.0)
        padding: tuple[int, ...] = (0, 0)
    else:
        padding = tuple(pads[:rank])
    pool = nn.AvgPool2d(tuple(kernel), tuple(strides), padding,
                        ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include_pad)
    return [imp.call_module(_node_name(node), pool, x)]


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@handles(*_BINARY)
def _binary(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.opset < 7 and attrs.get("broadcast"):
        raise UnsupportedOperatorError(f"{imp.where(node)}: legacy (opset < 7) broadcasting")
    a = imp.dynamic(node.input[0], node)
    b = imp.dynamic(node.input[1], node)
    return [imp.call_function(_node_name(node), _BINARY[node.op_type], a, b)]


@handles("Sum")
def _sum(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    inputs = [imp.dynamic(name, node) for name in node.input]
    if len(inputs) == 2:
        return [imp.call_function(_node_name(node), torch.add, *inputs)]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_sum, *inputs)]


@handles("Concat")
def _concat(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    inputs = [imp.dynamic(name, node) for name in node.input]
    return [imp.call_function(_node_name(node), torch.cat, inputs, int(attrs.get("axis", 0)))]


@handles("Flatten")
def _flatten(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    axis = int(attrs.get("axis", 1))
    if axis == 1:
        return [imp.call_function(_node_name(node), torch.flatten, x, 1)]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_flatten, x, axis)]


@handles("Reshape")
def _reshape(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    if imp.opset < 5:
        shape = [int(s) for s in attrs["shape"]]
    else:
        shape = [int(s) for s in imp.require_constant(node, 1, "the Reshape target shape")]
    allowzero = int(attrs.get("allowzero", 0))
    example = imp.example(x)
    # Batch-polymorphism (see the module docstring): a leading 1 follows the batch.
    if shape and shape[0] == 1 and example.dim() >= 1 and example.shape[0] == 1:
        rest = shape[1:]
        if -1 in rest:
            resolved = onnx_ops.onnx_reshape(example, tuple(shape), allowzero).shape[1:]
            rest = list(resolved)
        shape = [-1, *rest]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_reshape, x, tuple(shape),
                              allowzero)]


@handles("Softmax")
def _softmax(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    legacy = imp.opset < 13
    axis = int(attrs.get("axis", 1 if legacy else -1))
    return [imp.call_function(_node_name(node), onnx_ops.onnx_softmax, x, axis, legacy)]


@handles("Transpose")
def _transpose(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    perm = tuple(attrs["perm"]) if "perm" in attrs else None
    return [imp.call_function(_node_name(node), onnx_ops.onnx_transpose, x, perm)]


@handles("LRN")
def _lrn(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    # ONNX and torch both divide alpha by size: b = a / (bias + alpha/size * sum a^2)^beta.
    lrn = nn.LocalResponseNorm(int(attrs["size"]), alpha=float(attrs.get("alpha", 1e-4)),
                               beta=float(attrs.get("beta", 0.75)), k=float(attrs.get("bias", 1.0)))
    return [imp.call_module(_node_name(node), lrn, imp.dynamic(node.input[0], node))]


@handles("Pad")
def _pad(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if imp.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in imp.require_constant(node, 1, "the Pad amounts")]
        constant = imp.require_constant(node, 2, "the Pad value")
        value = float(constant) if constant is not None else 0.0
    params = imp.quant_params.get(node.input[0])
    if params is not None:  # padding integers (between Q and DQ): the pad value as a real
        value = params.real(value)
        imp.quant_params[node.output[0]] = params
    rank = len(pads) // 2
    torch_pads: list[int] = []
    for begin, end in zip(reversed(pads[:rank]), reversed(pads[rank:]), strict=True):
        torch_pads += [begin, end]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise UnsupportedOperatorError(f"{imp.where(node)}: Pad mode '{mode}'")
    if torch_mode == "constant":
        return [imp.call_function(_node_name(node), F.pad, x, tuple(torch_pads), "constant",
                                  value)]
    return [imp.call_function(_node_name(node), F.pad, x, tuple(torch_pads), torch_mode)]


@handles("QuantizeLinear")
def _quantize_linear(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    return quantize_node(imp, node, linear_params(imp, node, "QuantizeLinear"))


@handles("DequantizeLinear")
def _dequantize_linear(imp: Importer, node: Any, attrs: dict[str, Any]
                       ) -> list[torch.fx.Node]:
    """The identity in a float graph: the values are already the dequantized ones."""
    params = imp.quant_params.get(node.input[0])
    if params is None:
        raise UnsupportedOperatorError(f"{imp.where(node)}: DequantizeLinear of integers that "
                                       "no QuantizeLinear made (computed in integers)")
    if not same_params(params, linear_params(imp, node, "DequantizeLinear")):
        raise UnsupportedOperatorError(f"{imp.where(node)}: reads integers back with another "
                                       "scale or zero point than they were quantized with")
    return [imp.dynamic(node.input[0], node)]


@handles("Quant")
def _qonnx_quant(imp: Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    rank = imp.example(imp.dynamic(node.input[0], node)).dim()
    inputs = [None] + [imp.require_constant(node, i, what) for i, what in
                       ((1, "the Quant scale"), (2, "the Quant zero point"),
                        (3, "the Quant bit width"))]
    return quantize_node(imp, node, qonnx_params(inputs, attrs, rank))


SUPPORTED_ONNX_OPS = frozenset(HANDLERS) | {"Constant", "ConstantOfShape"}
