"""Counting passes: parameters, MACs, activation sizes, weight bytes, per-layer summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kiln.errors import ConfigError
from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind


@dataclass(frozen=True)
class Counts:
    """Totals of a graph. Bytes assume every weight and activation at the given widths."""

    params: int
    macs: int
    layers: int
    compute_layers: int
    activation_elements: int
    peak_activation_elements: int
    weight_bits: int
    activation_bits: int

    @property
    def weight_bytes(self) -> float:
        return self.params * self.weight_bits / 8

    @property
    def activation_bytes(self) -> float:
        return self.activation_elements * self.activation_bits / 8

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weight_bytes"] = self.weight_bytes
        data["activation_bytes"] = self.activation_bytes
        return data


def _check_bits(bits: int, what: str) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ConfigError(f"{what} must be an integer from 1 to 64 bits, got {bits!r}")


def count(graph: Graph, *, weight_bits: int = 32, activation_bits: int = 32) -> Counts:
    """Totals of ``graph``: params, MACs, activation sizes and bytes at given widths.

    ``activation_elements`` sums every layer's output (what a layer-by-layer runtime
    writes once); ``peak_activation_elements`` is the largest single layer output.

    >>> import torch
    >>> from kiln.graph import from_torch
    >>> c = count(from_torch(torch.nn.Linear(10, 4), torch.zeros(1, 10)), weight_bits=8)
    >>> c.params, c.macs, c.weight_bytes
    (44, 40, 44.0)
    """
    _check_bits(weight_bits, "weight_bits")
    _check_bits(activation_bits, "activation_bits")
    layers = graph.layers()
    outputs = [info.output_elements for info in layers]
    return Counts(
        params=graph.total_params,
        macs=sum(info.macs for info in layers),
        layers=len(layers),
        compute_layers=sum(1 for info in layers if info.loops is not None),
        activation_elements=sum(outputs),
        peak_activation_elements=max(outputs, default=0),
        weight_bits=weight_bits,
        activation_bits=activation_bits,
    )


def layer_summary(graph: Graph, *, include_trivial: bool = True) -> list[dict[str, Any]]:
    """One row per layer: name, op, shapes, params, MACs and loop dims (for tables/JSON).

    ``include_trivial=False`` drops identity and dropout nodes.
    """
    rows = []
    trivial = {OpKind.IDENTITY, OpKind.DROPOUT}
    for info in graph.layers():
        if not include_trivial and info.op in trivial:
            continue
        loops = info.loops
        rows.append(
            {
                "name": info.name,
                "op": str(info.op),
                "target": info.target,
                "input_shapes": [list(s) for s in info.input_shapes],
                "output_shape": list(info.output_shape) if info.output_shape else None,
                "params": info.params,
                "macs": info.macs,
                "loops": loops.as_dict() if loops is not None else None,
            }
        )
    return rows


def format_loops(loops: dict[str, Any] | None) -> str:
    """Loop dims as a compact string, e.g. ``K64 C3 OY112 OX112 FY7 FX7 s2``."""
    if not loops:
        return ""
    parts = []
    for key in ("B", "G", "K", "C", "OY", "OX", "FY", "FX"):
        value = loops[key]
        if value != 1 or key in ("K", "C"):
            parts.append(f"{key}{value}")
    stride = tuple(loops["stride"])
    if stride != (1, 1):
        parts.append(f"s{stride[0]}" if stride[0] == stride[1] else f"s{stride[0]}x{stride[1]}")
    return " ".join(parts)
