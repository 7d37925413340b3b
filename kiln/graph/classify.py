"""Map fx nodes (modules, functions, methods) to kiln's :class:`OpKind`."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.graph import onnx_ops
from kiln.graph.metadata import OpKind

# Order matters where one class derives from another (ReLU6 derives from Hardtanh).
_MODULE_KINDS: list[tuple[type[nn.Module], OpKind]] = [
    (nn.Conv2d, OpKind.CONV),
    (nn.Conv1d, OpKind.CONV1D),
    (nn.Linear, OpKind.LINEAR),
    (nn.BatchNorm1d, OpKind.BATCHNORM),
    (nn.BatchNorm2d, OpKind.BATCHNORM),
    (nn.ReLU, OpKind.RELU),
    (nn.ReLU6, OpKind.RELU6),
    (nn.Hardtanh, OpKind.CLIP),
    (nn.Sigmoid, OpKind.SIGMOID),
    (nn.Tanh, OpKind.TANH),
    (nn.MaxPool2d, OpKind.MAXPOOL),
    (nn.AvgPool2d, OpKind.AVGPOOL),
    (nn.Flatten, OpKind.FLATTEN),
    (nn.Softmax, OpKind.SOFTMAX),
    (nn.Dropout, OpKind.DROPOUT),
    (nn.Identity, OpKind.IDENTITY),
    (nn.LocalResponseNorm, OpKind.LRN),
]

_FUNCTION_KINDS: dict[Any, OpKind] = {
    torch.relu: OpKind.RELU,
    F.relu: OpKind.RELU,
    F.relu6: OpKind.RELU6,
    F.hardtanh: OpKind.CLIP,
    torch.clamp: OpKind.CLIP,
    torch.clip: OpKind.CLIP,
    torch.sigmoid: OpKind.SIGMOID,
    torch.tanh: OpKind.TANH,
    operator.add: OpKind.ADD,
    torch.add: OpKind.ADD,
    operator.sub: OpKind.SUB,
    torch.sub: OpKind.SUB,
    operator.mul: OpKind.MUL,
    torch.mul: OpKind.MUL,
    operator.truediv: OpKind.DIV,
    torch.div: OpKind.DIV,
    torch.cat: OpKind.CONCAT,
    torch.concat: OpKind.CONCAT,
    torch.flatten: OpKind.FLATTEN,
    torch.reshape: OpKind.RESHAPE,
    torch.permute: OpKind.TRANSPOSE,
    torch.transpose: OpKind.TRANSPOSE,
    torch.matmul: OpKind.MATMUL,
    operator.matmul: OpKind.MATMUL,
    torch.mm: OpKind.MATMUL,
    torch.bmm: OpKind.MATMUL,
    torch.softmax: OpKind.SOFTMAX,
    F.softmax: OpKind.SOFTMAX,
    F.max_pool2d: OpKind.MAXPOOL,
    F.avg_pool2d: OpKind.AVGPOOL,
    F.conv2d: OpKind.CONV,
    F.linear: OpKind.LINEAR,
    F.pad: OpKind.PAD,
    F.dropout: OpKind.DROPOUT,
    onnx_ops.onnx_flatten: OpKind.FLATTEN,
    onnx_ops.onnx_reshape: OpKind.RESHAPE,
    onnx_ops.onnx_softmax: OpKind.SOFTMAX,
    onnx_ops.onnx_sum: OpKind.ADD,
    onnx_ops.onnx_transpose: OpKind.TRANSPOSE,
    onnx_ops.onnx_gemm: OpKind.MATMUL,
    onnx_ops.onnx_avgpool_exclude_pad: OpKind.AVGPOOL,
}

_METHOD_KINDS: dict[str, OpKind] = {
    "view": OpKind.RESHAPE,
    "reshape": OpKind.RESHAPE,
    "flatten": OpKind.FLATTEN,
    "relu": OpKind.RELU,
    "clamp": OpKind.CLIP,
    "add": OpKind.ADD,
    "mul": OpKind.MUL,
    "permute": OpKind.TRANSPOSE,
    "transpose": OpKind.TRANSPOSE,
    "contiguous": OpKind.IDENTITY,
    "softmax": OpKind.SOFTMAX,
    "matmul": OpKind.MATMUL,
}


def module_kind(module: nn.Module) -> OpKind:
    """The kind of a leaf module, ``OTHER`` if kiln does not know it."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        is_global = size == 1 or (isinstance(size, tuple) and all(s == 1 for s in size))
        return OpKind.GLOBAL_AVGPOOL if is_global else OpKind.AVGPOOL
    for cls, kind in _MODULE_KINDS:
        if type(module) is cls:
            return kind
    for cls, kind in _MODULE_KINDS:
        if isinstance(module, cls):
            return kind
    return OpKind(getattr(module, "kiln_kind", OpKind.OTHER))


def node_kind(node: torch.fx.Node, root: nn.Module) -> OpKind:
    """The kind of an fx node of the graph module ``root``."""
    if node.op == "placeholder":
        return OpKind.INPUT
    if node.op == "output":
        return OpKind.OUTPUT
    if node.op == "get_attr":
        return OpKind.CONSTANT
    if node.op == "call_module":
        return module_kind(root.get_submodule(node.target))
    if node.op == "call_function":
        if node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return OpKind.GLOBAL_AVGPOOL if size in (1, (1, 1)) else OpKind.AVGPOOL
        return _FUNCTION_KINDS.get(node.target, OpKind.OTHER)
    if node.op == "call_method":
        if node.target == "mean" and _reduces_spatial(node):
            return OpKind.GLOBAL_AVGPOOL
        return _METHOD_KINDS.get(str(node.target), OpKind.OTHER)
    return OpKind.OTHER


def _reduces_spatial(node: torch.fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1])


def target_name(node: torch.fx.Node, root: nn.Module) -> str:
    """A readable name of what the node runs (module class, function or method name)."""
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)
