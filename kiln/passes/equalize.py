"""Cross-layer equalization: even out the channels' weight ranges before quantization.

A layer quantized per tensor has one step for all its output channels; when their ranges
differ (BatchNorm folding makes them differ by 30x in the convnet's first conv), the narrow
channels keep few levels. For two layers in a chain y = W2 f(W1 x + b1) where f commutes
with a positive per-channel scale (ReLU, max and average pooling, flatten, identity,
dropout), f(x / s) = f(x) / s, so scaling W1's output channel i and b1_i by 1 / s_i and
W2's input channel i by s_i leaves the network's function unchanged. Nagel et al. (2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction") choose
s_i = sqrt(r1_i / r2_i), with r1_i the range of W1's output channel i and r2_i that of W2's
input channel i: both become sqrt(r1_i r2_i). Repeated over every pair until the scales
settle, since a layer in the middle of a chain belongs to two pairs.

Pairs are found in the fx graph: a conv or linear layer (ungrouped) whose only user chain
runs through such commuting ops to one ungrouped conv or linear layer; through a flatten
the linear layer reads each channel as a block of features. ReLU6, clips, tanh, adds and
anything else end a chain (a scale does not commute with them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind

#: Ops f with f(x / s) = f(x) / s for any positive per-channel s.
COMMUTING = {OpKind.RELU, OpKind.MAXPOOL, OpKind.AVGPOOL, OpKind.GLOBAL_AVGPOOL,
             OpKind.IDENTITY, OpKind.DROPOUT, OpKind.FLATTEN}


@dataclass
class _Pair:
    first: nn.Module    # its output channels are scaled down
    second: nn.Module   # its input channels (or feature blocks) scaled up
    block: int          # features of the second layer per channel (after a flatten)


def _layer(module: torch.fx.GraphModule, node: torch.fx.Node, kinds: dict) -> nn.Module | None:
    if node.op != "call_module" or kinds.get(node.name) not in (OpKind.CONV, OpKind.LINEAR):
        return None
    layer = module.get_submodule(node.target)
    return layer if getattr(layer, "groups", 1) == 1 else None


def equalizable_pairs(graph: Graph) -> list[_Pair]:
    """Every (producer, consumer) pair whose shared channels can be rescaled."""
    module = graph.module
    kinds = {info.name: info.op for info in graph.nodes()}
    pairs = []
    for node in module.graph.nodes:
        first = _layer(module, node, kinds)
        if first is None:
            continue
        current = node
        while len(current.users) == 1:
            (current,) = current.users
            second = _layer(module, current, kinds)
            if second is not None:
                channels = first.weight.shape[0]
                features = second.weight.shape[1]
                if features % channels == 0:
                    pairs.append(_Pair(first, second, features // channels))
                break
            if kinds.get(current.name) not in COMMUTING:
                break
    return pairs


def equalize(graph: Graph, *, iterations: int = 20, tolerance: float = 1e-3) -> Graph:
    """A copy of a float ``graph`` (BatchNorm folded first: see
    :func:`~kiln.passes.fuse.fuse_batchnorm`) with every equalizable pair's shared channels
    rescaled so that both sides have the same range; the function is unchanged.

    >>> from kiln.models import resolve_model                          # doctest: +SKIP
    >>> equalized = equalize(fuse_batchnorm(resolve_model("convnet")[0]))
    """
    result = graph.copy()
    pairs = equalizable_pairs(result)
    with torch.no_grad():
        for _ in range(iterations):
            largest_change = 0.0
            for pair in pairs:
                channels = pair.first.weight.shape[0]
                first_range = pair.first.weight.reshape(channels, -1).abs().amax(dim=1)
                # the second layer's input channel i: columns i*block .. (i+1)*block - 1
                second = pair.second.weight.transpose(0, 1).reshape(channels, -1)
                second_range = second.abs().amax(dim=1)
                usable = (first_range > 0) & (second_range > 0)
                scale = torch.ones(channels)
                scale[usable] = torch.sqrt(first_range[usable] / second_range[usable])
                largest_change = max(largest_change, float((scale - 1).abs().max()))
                shape = (channels,) + (1,) * (pair.first.weight.dim() - 1)
                pair.first.weight /= scale.reshape(shape)
                if pair.first.bias is not None:
                    pair.first.bias /= scale
                # scale[i] for each of the second layer's input features (block-major)
                per_feature = scale.repeat_interleave(pair.block)
                shape = (1, -1) + (1,) * (pair.second.weight.dim() - 2)
                pair.second.weight *= per_feature.reshape(shape)
            if largest_change < tolerance:
                break
    return result
