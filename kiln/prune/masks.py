"""Pruning masks: unstructured (single weights) and structured (filters, channels).

A mask is a buffer ``<param>_mask`` beside the parameter it zeroes, so it is saved,
copied and carried through fine-tuning with the model: :func:`apply_masks` after every
optimizer step keeps pruned weights at zero (``fit(..., after_step=apply_masks)``).
Pruning a filter also zeroes its bias and the affine parameters of a BatchNorm that
directly follows, so the pruned channel is exactly zero and :func:`~kiln.prune.shrink`
can remove it without changing any output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kiln.errors import ConfigError
from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind

Norm = Literal["l1", "l2"]
Scope = Literal["layer", "global"]


def set_mask(module: nn.Module, param_name: str, mask: torch.Tensor) -> None:
    """Combine ``mask`` with any existing mask of ``module.<param_name>`` and apply it."""
    buffer_name = f"{param_name}_mask"
    existing = getattr(module, buffer_name, None)
    param = getattr(module, param_name)
    # Full-shape masks slice like their parameter when shrink removes channels.
    mask = mask.to(torch.float32).expand_as(param).clone()
    combined = mask if existing is None else existing * mask
    if existing is None:
        module.register_buffer(buffer_name, combined)
    else:
        setattr(module, buffer_name, combined)
    with torch.no_grad():
        getattr(module, param_name).mul_(combined)


def apply_masks(module: nn.Module) -> None:
    """Zero every masked parameter again (after an optimizer step)."""
    with torch.no_grad():
        for sub in module.modules():
            for name, buffer in sub.named_buffers(recurse=False):
                if name.endswith("_mask"):
                    getattr(sub, name.removesuffix("_mask")).mul_(buffer)


def sparsity(module: nn.Module) -> float:
    """Fraction of zero weights over all conv/linear weights."""
    zeros = total = 0
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            zeros += int((sub.weight == 0).sum())
            total += sub.weight.numel()
    return zeros / max(total, 1)


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    node: torch.fx.Node


def _check_amount(fraction: float | None, threshold: float | None, norm: str = "l1") -> None:
    if norm not in ("l1", "l2"):
        raise ConfigError(f"unknown norm '{norm}': use 'l1' or 'l2'")
    if (fraction is None) == (threshold is None):
        raise ConfigError("give exactly one of fraction or threshold")
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ConfigError(f"pruning fraction must be in [0, 1), got {fraction}")
    if threshold is not None and threshold < 0:
        raise ConfigError(f"pruning threshold must be >= 0, got {threshold}")


def _prunable(graph: Graph, layers: list[str] | None, *, skip_last: bool, skip_first: bool
              ) -> list[_Layer]:
    infos = {info.name: info for info in graph.nodes()}
    found = []
    for node in graph.module.graph.nodes:
        info = infos[node.name]
        if info.op in (OpKind.CONV, OpKind.LINEAR) and node.op == "call_module":
            module = graph.module.get_submodule(node.target)
            if getattr(module, "groups", 1) != 1:
                continue  # depthwise/grouped convs follow the channels of their input
            found.append(_Layer(node.name, module, node))
    if skip_last and found:
        found = found[:-1]  # the classifier's outputs are the classes
    if skip_first and found:
        found = found[1:]  # the network input's channels are the data
    if layers is not None:
        unknown = set(layers) - {layer.name for layer in found}
        if unknown:
            raise ConfigError(f"not prunable layers: {sorted(unknown)}; prunable: "
                              f"{[layer.name for layer in found]}")
        found = [layer for layer in found if layer.name in layers]
    return found


def _selection(scores: list[torch.Tensor], fraction: float | None, threshold: float | None,
               scope: Scope) -> list[torch.Tensor]:
    """Boolean 'prune' masks over each score vector."""
    if scope not in ("layer", "global"):
        raise ConfigError(f"unknown pruning scope '{scope}': use 'layer' or 'global'")
    if threshold is not None:
        return [s <= threshold for s in scores]
    if scope == "global":
        everything = torch.cat([s.flatten() for s in scores])
        count = int(fraction * everything.numel())
        if count == 0:
            return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
        cut = torch.kthvalue(everything, count).values
        return [s <= cut for s in scores]
    picked = []
    for s in scores:
        count = int(fraction * s.numel())
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        if count:
            mask[torch.argsort(s.flatten(), stable=True)[:count]] = True
        picked.append(mask.reshape(s.shape))
    return picked


def prune_magnitude(graph: Graph, *, fraction: float | None = None,
                    threshold: float | None = None, scope: Scope = "layer",
                    layers: list[str] | None = None) -> Graph:
    """Unstructured pruning: zero the smallest-magnitude weights of conv/linear layers.

    >>> from kiln.models import build_graph
    >>> pruned = prune_magnitude(build_graph("convnet"), fraction=0.5)
    >>> round(sparsity(pruned.module), 2)
    0.5
    """
    _check_amount(fraction, threshold)
    result = graph.copy()
    chosen = _prunable(result, layers, skip_last=False, skip_first=False)
    scores = [layer.module.weight.detach().abs() for layer in chosen]
    for layer, prune in zip(chosen, _selection(scores, fraction, threshold, scope), strict=True):
        set_mask(layer.module, "weight", (~prune).float())
    return result


def _filter_scores(layer: _Layer, norm: Norm) -> torch.Tensor:
    rows = layer.module.weight.detach().flatten(1)
    # Mean norms, so that layers of different fan-in compare in global scope.
    return rows.abs().mean(dim=1) if norm == "l1" else rows.square().mean(dim=1).sqrt()


def prune_filters(graph: Graph, *, fraction: float | None = None,
                  threshold: float | None = None, norm: Norm = "l1", scope: Scope = "layer",
                  layers: list[str] | None = None) -> Graph:
    """Structured pruning of filters (output channels) by L1 or L2 norm.

    The last layer (the classes) is never pruned. A pruned filter's bias, and the
    affine parameters of a BatchNorm right after it, are zeroed too.
    """
    _check_amount(fraction, threshold, norm)
    result = graph.copy()
    chosen = _prunable(result, layers, skip_last=True, skip_first=False)
    scores = [_filter_scores(layer, norm) for layer in chosen]
    infos = {info.name: info for info in result.nodes()}
    for layer, prune in zip(chosen, _selection(scores, fraction, threshold, scope), strict=True):
        keep = (~prune).float()
        weight = layer.module.weight
        set_mask(layer.module, "weight", keep.reshape([-1] + [1] * (weight.dim() - 1)))
        if layer.module.bias is not None:
            set_mask(layer.module, "bias", keep)
        users = list(layer.node.users)
        if len(users) == 1 and infos[users[0].name].op is OpKind.BATCHNORM:
            bn = result.module.get_submodule(users[0].target)
            if bn.affine:
                set_mask(bn, "weight", keep)
                set_mask(bn, "bias", keep)
    return result


def _flatten_group(graph: Graph, layer: _Layer) -> int:
    """Features per channel when a linear layer reads a flattened feature map, else 1."""
    source = layer.node.args[0]
    infos = {info.name: info for info in graph.nodes()}
    info = infos.get(getattr(source, "name", ""))
    if info is not None and info.op is OpKind.FLATTEN and info.input_shapes:
        shape = info.input_shapes[0]
        if len(shape) == 4:
            return shape[2] * shape[3]
    return 1


def prune_channels(graph: Graph, *, fraction: float | None = None,
                   threshold: float | None = None, norm: Norm = "l1", scope: Scope = "layer",
                   layers: list[str] | None = None) -> Graph:
    """Structured pruning of input channels of conv/linear layers by L1 or L2 norm.

    A linear layer after a flatten prunes whole channels of the feature map (all their
    spatial positions at once). The first layer (the data's channels) is never pruned.
    """
    _check_amount(fraction, threshold, norm)
    result = graph.copy()
    chosen = _prunable(result, layers, skip_last=False, skip_first=True)
    groups = [_flatten_group(result, layer) for layer in chosen]
    scores = []
    for layer, group in zip(chosen, groups, strict=True):
        weight = layer.module.weight.detach()
        columns = weight.transpose(0, 1).reshape(weight.shape[1] // group, -1)
        scores.append(columns.abs().mean(dim=1) if norm == "l1"
                      else columns.square().mean(dim=1).sqrt())
    for layer, group, prune in zip(chosen, groups,
                                   _selection(scores, fraction, threshold, scope), strict=True):
        keep = (~prune).float().repeat_interleave(group)
        weight = layer.module.weight
        set_mask(layer.module, "weight", keep.reshape([1, -1] + [1] * (weight.dim() - 2)))
    return result
