"""Search spaces: named choices, and the transform that turns one choice into a graph.

Every space is built from a graph and the ``[space]`` config section. ``choices()`` lists
each parameter's options (what Optuna samples, and what brute force enumerates);
``build(params)`` applies the transform passes to a fresh copy of the graph, so the network
definition is never touched.

    >>> from kiln.models import build_graph
    >>> space = MixedPrecisionSpace(build_graph("jsc-three-linear"), weight_bits=[4, 8])
    >>> space.choices()                                         # doctest: +NORMALIZE_WHITESPACE
    {'_2.w': [4, 8], '_4.w': [4, 8], '_6.w': [4, 8]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import ConfigError
from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.prune import prune_filters, shrink
from kiln.prune.scale import scalable_layers, scale_channels

_QUANTIZABLE = (OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR)


def _layers(graph: Graph, only: list[str]) -> list[tuple[str, str]]:
    layers = [(info.name, info.op.value) for info in graph.layers() if info.op in _QUANTIZABLE]
    if only:
        known = {name for name, _ in layers}
        unknown = [name for name in only if name not in known]
        if unknown:
            raise ConfigError(
                f"space.layers: unknown layers {unknown}; quantizable layers are {sorted(known)}"
            )
        layers = [(name, op) for name, op in layers if name in only]
    return layers


# The logits leave the network at 8 bits whatever the layers' widths: the integer program
# must end on a quantized tensor (``kiln lower`` refuses a float output), and 8 bits cost
# nothing measurable in accuracy where 2 or 4 would.
LAST_OUTPUT_BITS = 8


def quant_config(per_layer: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A quantization config (what ``kiln quantize --config`` reads) from per-layer choices:
    ``{layer: {"w": bits, "a": bits, "range": ..., "granularity": ...}}``, complete enough
    to lower: every layer input and the last layer's output are quantized.

    >>> quant_config({"fc": {"w": 4, "a": 8}})["rules"][-1]["match"]
    {'name': ['@last']}
    """
    rules = []
    for name, choice in per_layer.items():
        if choice.get("format", "int") == "bfp":
            # block floating point: ``w`` mantissa bits, one 8-bit exponent per 16 weights
            weight: dict[str, Any] = {"format": "bfp", "bits": int(choice["w"]), "block_size": 16}
        else:
            weight = {
                "bits": int(choice["w"]),
                "symmetric": True,
                "granularity": choice.get("granularity", "channel"),
                "range": choice.get("range", "minmax"),
            }
        activation = {
            "bits": int(choice["a"]),
            "signed": False,
            "symmetric": False,
            "range": "minmax",
        }
        rules.append({"match": {"name": [name]}, "weight": weight, "input": activation})
    rules.append({"match": {"name": ["@last"]},
                  "output": {"bits": LAST_OUTPUT_BITS, "signed": True, "symmetric": False,
                             "range": "minmax"}})
    return {"default": {}, "rules": rules}


@dataclass
class SearchSpace:
    """Base of the spaces: parameters and their options."""

    graph: Graph

    def choices(self) -> dict[str, list[Any]]:
        raise NotImplementedError

    def size(self) -> int:
        return math.prod(len(options) for options in self.choices().values())

    def describe(self, params: dict[str, Any]) -> str:
        return " ".join(f"{k}={v}" for k, v in params.items())


@dataclass
class MixedPrecisionSpace(SearchSpace):
    """Per layer (or per op type) weight and activation widths, optionally the weight format
    (integer or block floating point), range method and granularity."""

    weight_bits: list[int] = field(default_factory=lambda: [8])
    activation_bits: list[int] = field(default_factory=lambda: [8])
    weight_range: list[str] = field(default_factory=lambda: ["minmax"])
    granularity: list[str] = field(default_factory=lambda: ["channel"])
    per: str = "layer"
    layers: list[str] = field(default_factory=list)
    weight_format: list[str] = field(default_factory=lambda: ["int"])

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name, op in _layers(self.graph, self.layers):
            groups.setdefault(name if self.per == "layer" else op, []).append(name)
        return groups

    def choices(self) -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = {}
        for group in self._groups():
            result[f"{group}.w"] = list(self.weight_bits)
            if len(self.activation_bits) > 1:
                result[f"{group}.a"] = list(self.activation_bits)
            if len(self.weight_range) > 1:
                result[f"{group}.range"] = list(self.weight_range)
            if len(self.granularity) > 1:
                result[f"{group}.granularity"] = list(self.granularity)
            if len(self.weight_format) > 1:
                result[f"{group}.format"] = list(self.weight_format)
        return result

    def per_layer(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        result = {}
        for group, names in self._groups().items():
            choice = {
                "w": params[f"{group}.w"],
                "a": params.get(f"{group}.a", self.activation_bits[0]),
                "range": params.get(f"{group}.range", self.weight_range[0]),
                "granularity": params.get(f"{group}.granularity", self.granularity[0]),
                "format": params.get(f"{group}.format", self.weight_format[0]),
            }
            for name in names:
                result[name] = choice
        return result

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        return quant_config(self.per_layer(params))

    def widths(self, params: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {name: (int(c["w"]), int(c["a"])) for name, c in self.per_layer(params).items()}


@dataclass
class ChannelSpace(SearchSpace):
    """A width multiplier for every scalable layer (its outputs and its consumers' inputs)."""

    multipliers: list[float] = field(default_factory=lambda: [1.0])
    layers: list[str] = field(default_factory=list)

    def _names(self) -> list[str]:
        names = scalable_layers(self.graph)
        if self.layers:
            unknown = [n for n in self.layers if n not in names]
            if unknown:
                raise ConfigError(f"space.layers: {unknown} cannot be scaled; scalable: {names}")
            names = [n for n in names if n in self.layers]
        return names

    def choices(self) -> dict[str, list[Any]]:
        return {f"{name}.mult": list(self.multipliers) for name in self._names()}

    def factors_names(self) -> list[str]:
        """The layers whose width the search scales."""
        return self._names()

    def factors(self, params: dict[str, Any]) -> dict[str, float]:
        """Each scaled layer's width multiplier."""
        return {name: float(params[f"{name}.mult"]) for name in self._names()}

    def build(self, params: dict[str, Any], seed: int = 0) -> Graph:
        return scale_channels(self.graph, self.factors(params), seed=seed)


@dataclass
class PruneQuantSpace(SearchSpace):
    """Per layer: a fraction of filters pruned (and physically removed) and a weight width."""

    fractions: list[float] = field(default_factory=lambda: [0.0])
    weight_bits: list[int] = field(default_factory=lambda: [8])
    activation_bits: list[int] = field(default_factory=lambda: [8])
    layers: list[str] = field(default_factory=list)

    def _quantizable(self) -> list[str]:
        return [name for name, _ in _layers(self.graph, self.layers)]

    def _prunable(self) -> list[str]:
        # The last layer produces the classes: it is never pruned.
        return self._quantizable()[:-1]

    def choices(self) -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = {}
        for name in self._prunable():
            if len(self.fractions) > 1 or self.fractions[0] != 0:
                result[f"{name}.prune"] = list(self.fractions)
        for name in self._quantizable():
            result[f"{name}.w"] = list(self.weight_bits)
            if len(self.activation_bits) > 1:
                result[f"{name}.a"] = list(self.activation_bits)
        return result

    def fractions_of(self, params: dict[str, Any]) -> dict[str, float]:
        return {
            name: float(params.get(f"{name}.prune", self.fractions[0])) for name in self._prunable()
        }

    def masked(self, params: dict[str, Any]) -> Graph:
        """The graph with the trial's filter masks set (not yet shrunk)."""
        graph = self.graph
        for name, fraction in self.fractions_of(params).items():
            if fraction > 0:
                graph = prune_filters(graph, fraction=fraction, layers=[name])
        return graph

    def prune(self, params: dict[str, Any]) -> Graph:
        """The pruned graph with its masked filters physically removed."""
        return shrink(self.masked(params))

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        per_layer = {
            name: {"w": params[f"{name}.w"], "a": params.get(f"{name}.a", self.activation_bits[0])}
            for name in self._quantizable()
        }
        return quant_config(per_layer)

    def widths(self, params: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {
            name: (int(params[f"{name}.w"]), int(params.get(f"{name}.a", self.activation_bits[0])))
            for name in self._quantizable()
        }


def make_space(graph: Graph, section: Any) -> SearchSpace:
    """The space a config's ``[space]`` section describes."""
    if section.kind == "mixed-precision":
        space: SearchSpace = MixedPrecisionSpace(
            graph,
            section.weight_bits,
            section.activation_bits,
            section.weight_range,
            section.granularity,
            section.per,
            section.layers,
            section.weight_format,
        )
    elif section.kind == "channels":
        space = ChannelSpace(graph, section.multipliers, section.layers)
    else:
        space = PruneQuantSpace(
            graph, section.fractions, section.weight_bits, section.activation_bits, section.layers
        )
    choices = space.choices()
    if not choices:
        raise ConfigError(
            f"the {section.kind} space of '{graph.name}' is empty: no layer has a choice "
            "(check space.layers and the option lists)"
        )
    if all(len(options) == 1 for options in choices.values()):
        raise ConfigError(
            f"the {section.kind} space has a single point: give some option more than one value"
        )
    return space
