"""``normalize``: rewrite the spellings exporters use into the layers kiln lowers.

ONNX files (and traced modules) spell the same layer in several ways. Before quantizing,
this pass folds them into one form, exactly (float64 arithmetic, results stored in
float32):

* a constant ``Add`` / ``Sub`` after a conv or linear layer (the bias as a separate node,
  as in the ONNX model zoo's MNIST CNN, or a ``MatMul`` followed by an ``Add``) becomes
  that layer's bias;
* a constant ``Mul`` / ``Div`` after a conv or linear layer, by a scalar or a value per
  output channel, is folded into its weights and bias; so is a positive one after a ReLU
  that follows such a layer (relu(a·y) = a·relu(y) for a > 0);
* ``Identity`` and ``Dropout`` nodes (inference semantics) are removed.

Each fold needs the layer's output to have no other user and the constant to broadcast
per output channel only; anything else is left as it is, and ``lower`` then names it.

>>> import torch
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv = torch.nn.Conv2d(1, 2, 3, bias=False)
...         self.register_buffer("b", torch.tensor([1.0, -1.0]).reshape(2, 1, 1))
...     def forward(self, x):
...         return self.conv(x) + self.b
>>> from kiln.graph import from_torch
>>> g = normalize(from_torch(Net(), torch.zeros(1, 1, 5, 5)))
>>> [info.op.value for info in g.layers()]
['conv2d']
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
from torch import nn

from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.graph.shapes import propagate

_LAYER_KINDS = (OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR)
_FOLDABLE = (OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV)


def _constant(module: torch.fx.GraphModule, node: object) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        value = module
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    if isinstance(node, (int, float)):
        return torch.tensor(float(node))
    return None


def _per_channel(value: torch.Tensor, output_shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as one number per output channel (axis 1), or None if it varies along
    any other axis or does not broadcast to the layer's output."""
    try:
        full = np.broadcast_to(value.double().numpy(), (1, *output_shape[1:]))
    except ValueError:
        return None
    if value.dim() > len(output_shape):
        return None
    channels = full.reshape(1, output_shape[1], -1)
    if not np.all(channels == channels[:, :, :1]):
        return None
    return channels[0, :, 0].copy()


def _fold(layer: nn.Module, kind: OpKind, vector: np.ndarray, constant_first: bool) -> bool:
    """Apply ``layer(x) op constant`` to the layer's parameters; False if it cannot be."""
    if kind is OpKind.DIV and (constant_first or np.any(vector == 0)):
        return False
    if kind is OpKind.SUB and constant_first:
        return False  # constant - layer(x) would negate the weights: rare, left alone
    with torch.no_grad():
        channels = layer.weight.shape[0]
        bias = (layer.bias.double() if layer.bias is not None
                else torch.zeros(channels, dtype=torch.float64))
        values = torch.from_numpy(np.broadcast_to(vector, (channels,)).copy())
        if kind in (OpKind.ADD, OpKind.SUB):
            bias = bias + values if kind is OpKind.ADD else bias - values
        else:
            factor = values if kind is OpKind.MUL else 1.0 / values
            shape = [-1] + [1] * (layer.weight.dim() - 1)
            layer.weight.copy_((layer.weight.double() * factor.reshape(shape)).float())
            bias = bias * factor
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.float())
        else:
            layer.bias.copy_(bias.float())
    return True


def _drop_unused_constants(module: torch.fx.GraphModule) -> None:
    for node in list(module.graph.nodes):
        if node.op == "get_attr" and not node.users:
            module.graph.erase_node(node)
            target = str(node.target)
            if "." not in target and hasattr(module, target):
                delattr(module, target)


def normalize(graph: Graph) -> Graph:
    """Return a copy of ``graph`` with constant bias/scale nodes folded into the layers
    before them and Identity/Dropout removed (see the module docstring)."""
    result = graph.copy()
    module = result.module
    infos = {info.name: info for info in result.nodes()}
    changed = False
    for node in list(module.graph.nodes):
        info = infos.get(node.name)
        if info is None:
            continue
        if info.op in (OpKind.IDENTITY, OpKind.DROPOUT) and node.all_input_nodes:
            node.replace_all_uses_with(node.all_input_nodes[0])
            module.graph.erase_node(node)
            changed = True
            continue
        if info.op not in _FOLDABLE or len(node.args) != 2:
            continue
        first, second = node.args
        for producer, other, constant_first in ((first, second, False), (second, first, True)):
            through_relu = None
            if isinstance(producer, torch.fx.Node) and info.op in (OpKind.MUL, OpKind.DIV) and \
                    infos.get(producer.name) is not None and \
                    infos[producer.name].op is OpKind.RELU and len(producer.users) == 1 and \
                    producer.all_input_nodes:
                # relu(a·y) = a·relu(y) for a > 0: a positive scale after a ReLU folds too
                through_relu, producer = producer, producer.all_input_nodes[0]
            if not (isinstance(producer, torch.fx.Node) and producer.op == "call_module"):
                continue
            producer_info = infos.get(producer.name)
            if producer_info is None or producer_info.op not in _LAYER_KINDS:
                continue
            if len(producer.users) != 1 or (producer_info.op is OpKind.LINEAR and
                                            len(producer_info.output_shape) != 2):
                continue  # (a linear layer's features are axis 1 only on 2-D outputs)
            value = _constant(module, other)
            if value is None:
                continue
            vector = _per_channel(value, tuple(producer_info.output_shape))
            if vector is None or (through_relu is not None and not np.all(vector > 0)):
                continue
            if _fold(module.get_submodule(producer.target), info.op, vector, constant_first):
                node.replace_all_uses_with(through_relu if through_relu is not None
                                           else producer)
                module.graph.erase_node(node)
                changed = True
            break
    if not changed:
        return result
    _drop_unused_constants(module)
    for name, submodule in list(module.named_children()):
        if isinstance(submodule, (nn.Identity, nn.Dropout)) and not any(
                n.op == "call_module" and n.target == name for n in module.graph.nodes):
            delattr(module, name)
    module.graph.lint()
    module.recompile()
    return propagate(result)
