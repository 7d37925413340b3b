"""``scale_channels``: widen or narrow layers by a factor (channel-multiplier NAS).

The output width of a conv/linear layer is multiplied by a factor and so is the input
width of every layer that consumes it; everything that carries those channels unchanged
(BatchNorm, ReLU, pooling, a residual add, a flatten before a linear layer) follows, so
consecutive layers stay consistent. The channel spaces are the ones ``shrink`` uses.
Scaled layers get fresh (seeded) weights: the network is meant to be trained again.
The input graph is never changed.

    >>> from kiln.models import build_graph
    >>> wide = scale_channels(build_graph("jsc-three-linear"), {"_2": 2.0})   # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.errors import ConfigError, UnknownNameError
from kiln.graph.core import Graph
from kiln.graph.shapes import propagate
from kiln.prune.shrink import _analyse


def scalable_layers(graph: Graph) -> list[str]:
    """Names of the layers whose output width can be scaled (not the network's output)."""
    spaces = _analyse(graph)
    names = {
        id(sub): node.name
        for node in graph.module.graph.nodes
        if node.op == "call_module"
        for sub in [graph.module.get_submodule(node.target)]
    }
    result = []
    for root in spaces.roots():
        space = spaces.data[root]
        if space.pinned or not space.producers or space.size is None:
            continue
        result.append(names[id(space.producers[0])])
    order = [node.name for node in graph.module.graph.nodes]
    return sorted(result, key=order.index)


def scale_channels(graph: Graph, factors: dict[str, float], *, seed: int = 0) -> Graph:
    """A copy of ``graph`` whose listed layers have ``round(width × factor)`` outputs."""
    for name, factor in factors.items():
        if factor <= 0:
            raise ConfigError(f"channel factor of '{name}' must be > 0, got {factor}")
    allowed = scalable_layers(graph)
    unknown = [name for name in factors if name not in allowed]
    if unknown:
        raise UnknownNameError(f"cannot scale {unknown}: scalable layers are {allowed}")
    result = graph.copy()
    spaces = _analyse(result)
    module_of = {
        node.name: result.module.get_submodule(node.target)
        for node in result.module.graph.nodes
        if node.op == "call_module"
    }
    new_out: dict[int, int] = {}
    new_in: dict[int, tuple[int, int]] = {}  # id -> (channels, group)
    channelwise: dict[int, int] = {}
    modules: dict[int, nn.Module] = {}
    for root in spaces.roots():
        space = spaces.data[root]
        if space.pinned or not space.producers or space.size is None:
            continue
        factor = next(
            (
                factors[n]
                for n, m in module_of.items()
                if n in factors and any(m is p for p in space.producers)
            ),
            None,
        )
        if factor is None or factor == 1:
            continue
        width = max(1, round(space.size * factor))
        for producer in space.producers:
            new_out[id(producer)] = width
            modules[id(producer)] = producer
        for member in space.channelwise:
            channelwise[id(member)] = width
            modules[id(member)] = member
        for consumer, group in space.consumers:
            new_in[id(consumer)] = (width, group)
            modules[id(consumer)] = consumer
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for key, layer in modules.items():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                _resize_batchnorm(layer, channelwise[key])
            elif isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                if key in channelwise:  # depthwise conv carrying the space
                    raise ConfigError("scaling through a depthwise conv is not supported")
                _resize_layer(layer, new_in.get(key), new_out.get(key))
    finally:
        torch.random.set_rng_state(generator_state)
    result.module.recompile()
    return propagate(result)


def _resize_layer(layer: nn.Module, inputs: tuple[int, int] | None, outputs: int | None) -> None:
    if isinstance(layer, nn.Linear):
        if inputs is not None:
            layer.in_features = inputs[0] * inputs[1]
        if outputs is not None:
            layer.out_features = outputs
        layer.weight = nn.Parameter(torch.empty(layer.out_features, layer.in_features))
        if layer.bias is not None:
            layer.bias = nn.Parameter(torch.empty(layer.out_features))
    else:
        if inputs is not None:
            layer.in_channels = inputs[0] * inputs[1]
        if outputs is not None:
            layer.out_channels = outputs
        shape = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
        layer.weight = nn.Parameter(torch.empty(shape))
        if layer.bias is not None:
            layer.bias = nn.Parameter(torch.empty(layer.out_channels))
    layer.reset_parameters()


def _resize_batchnorm(layer: nn.Module, width: int) -> None:
    layer.num_features = width
    if layer.affine:
        layer.weight = nn.Parameter(torch.ones(width))
        layer.bias = nn.Parameter(torch.zeros(width))
    if layer.track_running_stats:
        layer.running_mean = torch.zeros(width)
        layer.running_var = torch.ones(width)
        layer.num_batches_tracked = torch.tensor(0, dtype=torch.long)
