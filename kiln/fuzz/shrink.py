"""Shrink a failing network to a smallest one that fails the same way.

Greedy delta debugging over the :class:`NetworkSpec`: drop a layer, narrow it, shrink the
input, simplify the quantization; keep any change after which the network still fails
with the same signature (stage and message shape), until no change helps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from kiln.fuzz.differential import CaseResult, check_network
from kiln.fuzz.networks import NetworkSpec, build_module


def _valid(spec: NetworkSpec) -> bool:
    try:
        module = build_module(spec)
        with torch.no_grad():
            module(torch.zeros(1, *spec.input_shape))
    except Exception:  # an impossible geometry (a kernel larger than its input, ...)
        return False
    vector = len(spec.input_shape) == 1
    for layer in spec.layers:  # a linear layer takes vectors: after a flatten
        if layer["op"] in ("flatten", "global_avgpool"):
            vector = True
        elif (layer["op"] == "linear") != vector:
            return False
    return True


def _layer_variants(layer: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Simpler versions of one layer, simplest first."""
    if "out" in layer and layer["out"] > 1:
        yield {**layer, "out": 1}
        yield {**layer, "out": max(1, layer["out"] // 2)}
    for key, simple in (("bn", False), ("act", None), ("bias", False), ("dilation", 1),
                        ("stride", 1), ("ceil", False), ("groups", 1)):
        if key in layer and layer[key] != simple:
            yield {**layer, key: simple}
    if layer.get("op") == "conv":
        if any(layer["padding"]):
            yield {**layer, "padding": [0, 0, 0, 0]}
        if layer["kernel"] != [1, 1]:
            yield {**layer, "kernel": [1, 1]}
            yield {**layer, "kernel": [max(1, k - 1) for k in layer["kernel"]]}
    if layer.get("op") in ("maxpool", "avgpool"):
        if layer["padding"]:
            yield {**layer, "padding": 0}
        if layer["kernel"] > 1:
            yield {**layer, "kernel": layer["kernel"] - 1}


def _candidates(spec: NetworkSpec) -> Iterator[NetworkSpec]:
    layers = spec.layers
    for index in range(len(layers)):  # drop a layer
        yield spec.with_layers(layers[:index] + layers[index + 1:])
    shape = spec.input_shape
    for axis in range(len(shape)):  # a smaller input
        if shape[axis] > 1:
            for size in (1, shape[axis] // 2, shape[axis] - 1):
                if 1 <= size < shape[axis]:
                    yield replace(spec, input_shape=shape[:axis] + [size] + shape[axis + 1:])
    for index, layer in enumerate(layers):  # a simpler layer
        for variant in _layer_variants(layer):
            yield spec.with_layers(layers[:index] + [variant] + layers[index + 1:])
    if spec.via_onnx:
        yield replace(spec, via_onnx=False)
    for key, simple in (("bits", 8), ("granularity", "tensor"), ("symmetric", True)):
        if spec.weight.get(key) != simple:
            yield replace(spec, weight={**spec.weight, key: simple})
    for key, simple in (("bits", 8), ("signed", False), ("symmetric", False)):
        if spec.activation.get(key) != simple:
            yield replace(spec, activation={**spec.activation, key: simple})


def shrink(spec: NetworkSpec, failure: CaseResult, *, stages: tuple[str, ...],
           check: Callable[[NetworkSpec], CaseResult] | None = None,
           budget: int = 200, **options: Any) -> tuple[NetworkSpec, CaseResult, int]:
    """The smallest spec found that fails like ``failure`` did, its result, and the
    number of networks tried (at most ``budget``)."""
    assert failure.failure is not None
    signature = failure.failure.signature
    check = check or (lambda candidate: check_network(candidate, stages, **options))
    best, best_result, tried = spec, failure, 0
    improved = True
    while improved and tried < budget:
        improved = False
        for candidate in _candidates(best):
            if tried >= budget:
                break
            if not _valid(candidate):
                continue
            tried += 1
            result = check(candidate)
            if result.failure is not None and result.failure.signature == signature:
                best, best_result, improved = candidate, result, True
                break
    return best, best_result, tried
