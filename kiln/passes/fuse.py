"""``fuse_batchnorm``: fold BatchNorm into the conv or linear layer before it."""

from __future__ import annotations

import torch
from torch import nn

from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.graph.shapes import propagate


def fold_batchnorm_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``layer``'s weight and bias, in place.

    w' = w · γ/σ (per output channel), b' = (b − μ) · γ/σ + β with σ = sqrt(var + eps).
    """
    with torch.no_grad():
        # float64 arithmetic, so the folded layer differs from conv+BN only by float32
        # rounding of the result.
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.affine else torch.ones_like(std)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        shape = [-1] + [1] * (layer.weight.dim() - 1)
        layer.weight.copy_(layer.weight.double() * factor.reshape(shape))
        bias = (layer.bias.double() if layer.bias is not None
                else torch.zeros_like(bn.running_mean, dtype=torch.float64))
        new_bias = ((bias - bn.running_mean.double()) * factor + beta).float()
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def fuse_batchnorm(graph: Graph) -> Graph:
    """Return a copy of ``graph`` with every BatchNorm that directly follows a conv or
    linear layer (its only user) folded into that layer and removed.

    A BatchNorm after anything else (e.g. the JSC models' input BatchNorm) stays.

    >>> from kiln.models import build_graph
    >>> fused = fuse_batchnorm(build_graph("convnet"))
    >>> [i.op.value for i in fused.layers()][:3]
    ['conv2d', 'relu', 'maxpool']
    """
    result = graph.copy()
    module = result.module
    kinds = {info.name: info.op for info in result.nodes()}
    for node in list(module.graph.nodes):
        if kinds.get(node.name) is not OpKind.BATCHNORM or node.op != "call_module":
            continue
        producer = node.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.op != "call_module":
            continue
        if kinds.get(producer.name) not in (OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR):
            continue
        if len(producer.users) != 1:
            continue
        layer = module.get_submodule(producer.target)
        bn = module.get_submodule(node.target)
        fold_batchnorm_into(layer, bn)
        node.replace_all_uses_with(producer)
        module.graph.erase_node(node)
        module.delete_submodule(node.target)
    module.graph.lint()
    module.recompile()
    return propagate(result)
