"""``shrink``: physically remove pruned filters and channels, rewiring every consumer.

Channels that must be removed together form a *channel space*: a conv/linear output and
everything that carries its channels unchanged (BatchNorm, ReLU, pooling, depthwise
conv, quantizers) up to the layers that consume it; a residual add merges the spaces of
its inputs. A channel of a space is removed when it is provably irrelevant:

* **zero**: every producer's filter and bias are zero there and every BatchNorm and
  depthwise conv in the space maps zero to zero (what :func:`prune_filters` leaves), or
* **unused**: every consumer's weights for it are zero (what :func:`prune_channels` leaves).

Either way the shrunk network computes the same outputs as the masked one. Spaces that
reach something kiln cannot slice (the network output, concat, reshape, a grouped conv)
are kept whole: correct, just not smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.graph.shapes import propagate
from kiln.quant.fake_quant import FakeQuantize

_PASS_THROUGH = {OpKind.RELU, OpKind.RELU6, OpKind.CLIP, OpKind.TANH, OpKind.MAXPOOL,
                 OpKind.AVGPOOL, OpKind.GLOBAL_AVGPOOL, OpKind.IDENTITY, OpKind.DROPOUT}


@dataclass
class _Space:
    pinned: bool = False
    producers: list[nn.Module] = field(default_factory=list)
    consumers: list[tuple[nn.Module, int]] = field(default_factory=list)  # (layer, group)
    channelwise: list[nn.Module] = field(default_factory=list)  # BN, depthwise conv
    size: int | None = None


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.data: list[_Space] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.data.append(_Space())
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        self.parent[b] = a
        left, right = self.data[a], self.data[b]
        left.pinned |= right.pinned
        left.producers += right.producers
        left.consumers += right.consumers
        left.channelwise += right.channelwise
        return a

    def get(self, i: int) -> _Space:
        return self.data[self.find(i)]

    def roots(self) -> list[int]:
        return sorted({self.find(i) for i in range(len(self.parent))})


def _analyse(graph: Graph) -> _Spaces:
    spaces = _Spaces()
    infos = {info.name: info for info in graph.nodes()}
    space_of: dict[str, int] = {}
    module = graph.module

    def pin_inputs(node: torch.fx.Node) -> None:
        for arg in node.all_input_nodes:
            if arg.name in space_of:
                spaces.get(space_of[arg.name]).pinned = True

    for node in module.graph.nodes:
        info = infos[node.name]
        kind = info.op
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        in_space = space_of.get(source.name) if source is not None else None
        sub = module.get_submodule(node.target) if node.op == "call_module" else None
        if kind is OpKind.INPUT:
            space_of[node.name] = spaces.new()
            spaces.get(space_of[node.name]).pinned = True
        elif kind in (OpKind.CONV, OpKind.LINEAR) and sub is not None and in_space is not None:
            groups = getattr(sub, "groups", 1)
            channels_in = sub.in_channels if kind is OpKind.CONV else sub.in_features
            if groups == 1:
                group = 1
                if kind is OpKind.LINEAR and source is not None and \
                        infos[_behind_quantizers(source, module).name].op is OpKind.FLATTEN:
                    group = channels_in // max(spaces.get(in_space).size or channels_in, 1)
                spaces.get(in_space).consumers.append((sub, group))
                out = spaces.new()
                spaces.get(out).producers.append(sub)
                spaces.get(out).size = sub.out_channels if kind is OpKind.CONV else \
                    sub.out_features
                space_of[node.name] = out
            elif groups == channels_in == sub.out_channels:  # depthwise
                spaces.get(in_space).channelwise.append(sub)
                space_of[node.name] = in_space
            else:
                spaces.get(in_space).pinned = True
                space_of[node.name] = spaces.new()
                spaces.get(space_of[node.name]).pinned = True
        elif kind is OpKind.BATCHNORM and in_space is not None:
            spaces.get(in_space).channelwise.append(sub)
            space_of[node.name] = in_space
        elif kind in _PASS_THROUGH and in_space is not None:
            space_of[node.name] = in_space
        elif kind is OpKind.QUANTIZE and in_space is not None and isinstance(sub, FakeQuantize):
            if sub.spec.granularity == "channel":
                spaces.get(in_space).pinned = True
            space_of[node.name] = in_space
        elif kind is OpKind.ADD and len(node.all_input_nodes) == 2 and all(
                a.name in space_of for a in node.all_input_nodes) and len(node.args) == 2:
            first, second = (space_of[a.name] for a in node.all_input_nodes)
            space_of[node.name] = spaces.union(first, second)
        elif kind is OpKind.FLATTEN and in_space is not None and _flattens_channels(node, info):
            # Only linear layers may read the flattened map (through a per-tensor input
            # quantizer after QAT); anything else pins it.
            if all(_read_by_linear(user, infos, module) for user in node.users):
                space_of[node.name] = in_space
            else:
                spaces.get(in_space).pinned = True
                space_of[node.name] = spaces.new()
                spaces.get(space_of[node.name]).pinned = True
        else:
            pin_inputs(node)
    return spaces


def _is_tensor_quantizer(node: torch.fx.Node, module: torch.nn.Module) -> bool:
    if node.op != "call_module":
        return False
    sub = module.get_submodule(node.target)
    return isinstance(sub, FakeQuantize) and sub.spec.granularity != "channel"


def _behind_quantizers(node: torch.fx.Node, module: torch.nn.Module) -> torch.fx.Node:
    """The node whose value ``node`` is, looking back through per-tensor quantizers."""
    while _is_tensor_quantizer(node, module) and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def _read_by_linear(node: torch.fx.Node, infos: dict, module: torch.nn.Module) -> bool:
    """Whether a linear layer reads ``node``, directly or through per-tensor quantizers."""
    if infos[node.name].op is OpKind.LINEAR:
        return True
    return _is_tensor_quantizer(node, module) and bool(node.users) and all(
        _read_by_linear(user, infos, module) for user in node.users)


def _flattens_channels(node: torch.fx.Node, info) -> bool:
    return bool(info.input_shapes) and len(info.input_shapes[0]) in (2, 4) and (
        node.op == "call_module" or node.args[1:] in ((1,), ()))


def _is_zero_channel(space: _Space) -> torch.Tensor:
    size = space.size
    zero = torch.ones(size, dtype=torch.bool)
    for producer in space.producers:
        zero &= producer.weight.detach().flatten(1).abs().amax(dim=1) == 0
        if producer.bias is not None:
            zero &= producer.bias.detach() == 0
    for member in space.channelwise:
        if isinstance(member, nn.modules.batchnorm._BatchNorm):
            gamma = member.weight.detach() if member.affine else torch.ones(size)
            beta = member.bias.detach() if member.affine else torch.zeros(size)
            offset = beta - gamma * member.running_mean / torch.sqrt(member.running_var +
                                                                     member.eps)
            zero &= offset.abs() == 0
        elif member.bias is not None:
            zero &= member.bias.detach() == 0
    return zero


def _is_unused_channel(space: _Space) -> torch.Tensor:
    unused = torch.ones(space.size, dtype=torch.bool)
    for consumer, group in space.consumers:
        weight = consumer.weight.detach()
        columns = weight.transpose(0, 1).reshape(space.size, group, -1)
        unused &= columns.abs().amax(dim=(1, 2)) == 0
    return unused


def _slice(param_owner: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    value = getattr(param_owner, name, None)
    if value is None:
        return
    sliced = value.detach().index_select(dim, index).clone()
    if isinstance(value, nn.Parameter):
        setattr(param_owner, name, nn.Parameter(sliced, requires_grad=value.requires_grad))
    else:
        setattr(param_owner, name, sliced)


def _slice_output(layer: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "weight_mask"):
        _slice(layer, name, keep, 0)
    for name in ("bias", "bias_mask"):
        _slice(layer, name, keep, 0)
    for quantizer in (getattr(layer, "weight_quantizer", None),
                      getattr(layer, "bias_quantizer", None)):
        if quantizer is not None and quantizer.scale.numel() > 1:
            _slice(quantizer, "scale", keep, 0)
            _slice(quantizer, "zero_point", keep, 0)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _slice_input(layer: nn.Module, keep: torch.Tensor, group: int) -> None:
    columns = (keep[:, None] * group + torch.arange(group)[None, :]).flatten()
    for name in ("weight", "weight_mask"):
        _slice(layer, name, columns, 1)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(columns)
    else:
        layer.in_channels = len(columns)


def _slice_channelwise(member: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(member, nn.modules.batchnorm._BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var", "weight_mask",
                     "bias_mask"):
            _slice(member, name, keep, 0)
        member.num_features = len(keep)
    else:  # depthwise conv
        _slice_output(member, keep)
        member.in_channels = member.groups = len(keep)


def shrink(graph: Graph) -> Graph:
    """Return a smaller copy of ``graph`` with pruned filters and channels removed.

    The output equals the masked graph's (to float rounding) and the parameter count
    drops by every removed filter, channel, bias and BatchNorm entry.

    >>> from kiln.models import build_graph                       # doctest: +SKIP
    >>> small = shrink(prune_filters(build_graph("convnet"), fraction=0.5))
    """
    result = graph.copy()
    spaces = _analyse(result)
    for root in spaces.roots():
        space = spaces.data[root]
        if space.pinned or not space.producers or space.size is None:
            continue
        removable = _is_zero_channel(space) | _is_unused_channel(space)
        if not removable.any():
            continue
        keep = torch.nonzero(~removable).flatten()
        if keep.numel() == 0:
            keep = torch.tensor([0])  # keep the layer well-formed with one channel
        for producer in space.producers:
            _slice_output(producer, keep)
        for member in space.channelwise:
            _slice_channelwise(member, keep)
        for consumer, group in space.consumers:
            _slice_input(consumer, keep, group)
    result.module.recompile()
    return propagate(result)
