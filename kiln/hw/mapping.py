"""Mappings: which loops are unrolled over the array and in which order the rest run.

A :class:`SpatialMapping` assigns each array dimension a few ``(layer dim, factor)``
unrollings (several on one dimension is a *mixed* unrolling). A :class:`TemporalMapping`
gives, for each layer operand, the loops held by each of its memory levels, innermost
first (``loops[op][0]`` is the lowest memory). ZigZag's mapping YAML is read as is.

    >>> spatial = SpatialMapping({"D1": {"K": 32}, "D2": {"C": 32}})
    >>> spatial.unrolled()
    {'K': 32, 'C': 32}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError
from kiln.hw.accelerator import Accelerator
from kiln.hw.workload import Layer
from kiln.strict_yaml import load_yaml_file

Loop = tuple[str, int]


@dataclass(frozen=True)
class SpatialMapping:
    """Array dimension → {layer dimension: unroll factor} (factors may be fractional, see below).

    A 56-wide loop on a 32-wide array dimension runs as 2 temporal steps of 28: the factor
    is 28, and the array's utilization says so.
    """

    unrollings: dict[str, dict[str, float]]

    def unrolled(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for per_dim in self.unrollings.values():
            for dim, factor in per_dim.items():
                total[dim] = total.get(dim, 1) * factor
        return total

    def used_units(self) -> float:
        return math.prod(math.prod(d.values()) for d in self.unrollings.values())

    def key(self) -> tuple:
        return tuple((oa, tuple(sorted(d.items()))) for oa, d in sorted(self.unrollings.items()))

    def __str__(self) -> str:
        parts = []
        for oa, per_dim in self.unrollings.items():
            inner = "·".join(f"{d}{_fmt(f)}" for d, f in per_dim.items())
            parts.append(f"{oa}:{inner}")
        return " ".join(parts)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


@dataclass(frozen=True)
class TemporalMapping:
    """Per layer operand, per memory level (lowest first), the loops it holds innermost first."""

    loops: dict[str, tuple[tuple[Loop, ...], ...]]

    @property
    def ordering(self) -> list[Loop]:
        """The loop order, innermost first (the same for every operand)."""
        any_op = next(iter(self.loops))
        return [loop for level in self.loops[any_op] for loop in level]

    def key(self) -> tuple:
        return tuple(sorted(self.loops.items()))

    def as_dict(self) -> dict[str, list[list[list[Any]]]]:
        return {
            op: [[list(loop) for loop in level] for level in levels]
            for op, levels in self.loops.items()
        }


@dataclass
class MappingConstraints:
    """What the user fixes: a spatial mapping, forced unrollings, a (partial) loop order.

    ``ordering`` lists ``(dim, size)`` innermost first, as ZigZag reads it: a complete
    order, or constraints on positions of the searched one; a size of ``None`` (``"*"`` in
    YAML) means "some loop of that dimension here", a dim of ``"*"`` makes the entries after
    it count from the outermost end (:mod:`kiln.hw.orders`).
    """

    spatial: SpatialMapping | None = None
    ordering: list[tuple[str, int | None]] = field(default_factory=list)
    links: dict[str, str] | None = None
    source: str = ""  # where it was written: "FILE: entry [i] 'name'", for error messages

    def dims(self) -> set[str]:
        """Every layer dimension the entry names (spatial mapping and temporal ordering)."""
        named = {dim for dim, _ in self.ordering if dim != "*"}
        if self.spatial is not None:
            named |= {dim for per_dim in self.spatial.unrollings.values() for dim in per_dim}
        return named


def load_zigzag_mapping(path: str | Path) -> dict[str, MappingConstraints]:
    """Read a ZigZag mapping YAML: entry name (layer, operator type, ``default``) → constraints."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"mapping file not found: {path}")
    data = load_yaml_file(path)
    if not isinstance(data, list):
        raise ConfigError(f"{path}: a ZigZag mapping is a list of entries with a 'name'")
    entries: dict[str, MappingConstraints] = {}
    allowed = {
        "name",
        "spatial_mapping",
        "temporal_ordering",
        "memory_operand_links",
        "core_allocation",
        "spatial_mapping_hint",
    }
    first_index: dict[str, int] = {}
    for index, entry in enumerate(data):
        where = f"{path}: [{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: every entry needs a 'name'")
        name = str(entry["name"])
        if name in first_index:
            raise ConfigError(f"{where}: entry name '{name}' is also entry [{first_index[name]}]'s",
                              hint="give each entry its own name (ZigZag silently uses the "
                                   "first of the two)")
        first_index[name] = index
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )
        spatial = None
        if entry.get("spatial_mapping"):
            unrollings: dict[str, dict[str, float]] = {}
            for oa_dim, items in entry["spatial_mapping"].items():
                per_dim: dict[str, float] = {}
                for item in items:
                    parts = [p.strip() for p in str(item).split(",")]
                    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                        raise ConfigError(
                            f"{where}.spatial_mapping.{oa_dim}: expected 'DIM, FACTOR', "
                            f"got {item!r}"
                        )
                    per_dim[parts[0].upper()] = int(parts[1])
                unrollings[str(oa_dim)] = per_dim
            spatial = SpatialMapping(unrollings)
        ordering: list[tuple[str, int | None]] = []
        for item in entry.get("temporal_ordering") or []:
            if not isinstance(item, list) or len(item) != 2:
                raise ConfigError(f"{where}.temporal_ordering: expected [DIM, SIZE], got {item!r}")
            size = None if item[1] == "*" else int(item[1])
            ordering.append((str(item[0]).upper(), size))
        links = entry.get("memory_operand_links")
        entries[name] = MappingConstraints(
            spatial, ordering, dict(links) if links else None, source=f"{path}: [{index}] '{name}'"
        )
    return entries


def constraints_for(
    layer: Layer, entries: dict[str, MappingConstraints] | None
) -> MappingConstraints:
    """ZigZag's lookup: the entry named after the layer, its operator type, or ``default``."""
    if not entries:
        return MappingConstraints()
    for key in (layer.name, layer.op_type, "default"):
        if key in entries:
            return entries[key]
    return MappingConstraints()


def max_unrolling(layer: Layer, hw: Accelerator) -> dict[str, dict[str, int]]:
    """Largest factor of each layer dim on each array dim: its size, the array's, and the
    bandwidth of the innermost memories (a relevant operand needs one word per position)."""
    limits = {
        oa: {dim: int(min(size, oa_size)) for dim, size in layer.sizes.items()}
        for oa, oa_size in hw.array_sizes.items()
    }
    relevant = relevant_dims(layer)
    for memory, mem_op, layer_op in _inner_operands(layer, hw):
        direction = "wr_in_by_low" if layer_op == layer.output else "rd_out_to_low"
        bandwidth = memory.bandwidth(mem_op, direction)
        if bandwidth is None:
            continue
        words = bandwidth[1] // layer.precision[layer_op]
        for oa in memory.served_dimensions:
            for dim in limits[oa]:
                if dim in relevant[layer_op] and words < limits[oa][dim]:
                    limits[oa][dim] = words
    return limits


def relevant_dims(layer: Layer) -> dict[str, set[str]]:
    """Per operand, the loop dims that change which element it touches (pr loops included)."""
    result = {}
    for op, dims in layer.operand_dims.items():
        dims_set = set()
        for dim in dims:
            if dim in layer.relations:
                dims_set.update((layer.relations[dim][0], layer.relations[dim][2]))
            else:
                dims_set.add(dim)
        result[op] = {d for d in dims_set if d in layer.sizes}
    return result


def _inner_operands(layer: Layer, hw: Accelerator) -> list[tuple[Any, str, str]]:
    """(memory, memory operand, layer operand) for every innermost memory the layer uses."""
    found = []
    for memory in hw.inner_memories():
        for mem_op in memory.operands:
            layer_op = _layer_op(layer, mem_op)
            if layer_op is not None:
                found.append((memory, mem_op, layer_op))
    return found


def _layer_op(layer: Layer, mem_op: str) -> str | None:
    for op, linked in layer.links.items():
        if linked == mem_op and op in layer.operand_dims:
            return op
    return None


def fit_spatial(
    layer: Layer, hw: Accelerator, spatial: SpatialMapping
) -> tuple[SpatialMapping, SpatialMapping, SpatialMapping]:
    """Limit a user's spatial mapping to the layer and the array (ZigZag's rules).

    Returns (fractional, integer, limited) mappings: a dim of size 56 asked to unroll 32
    becomes 2 temporal steps of 28. The fractional one is used for energy, the integer one
    for latency, the limited one (before the split) for the systolic drain.
    """
    limits = max_unrolling(layer, hw)
    reduced: dict[str, dict[str, int]] = {}
    for oa, per_dim in spatial.unrollings.items():
        if oa not in hw.array_sizes:
            raise ConfigError(
                f"spatial mapping uses array dimension '{oa}', which {hw.name} does not have "
                f"({', '.join(hw.array_sizes)})"
            )
        for dim, factor in per_dim.items():
            if dim not in layer.sizes:
                continue
            # Larger than the array, the layer or the inner memories' bandwidth allow:
            # reduced to what fits, as ZigZag does (it logs a warning; kiln's result
            # reports the reduced mapping as the one used).
            reduced.setdefault(oa, {})[dim] = max(1, min(int(factor), limits[oa][dim]))
        if oa in reduced and math.prod(reduced[oa].values()) > hw.array_sizes[oa]:
            raise ConfigError(
                f"spatial mapping on {oa} unrolls {math.prod(reduced[oa].values())} > array "
                f"size {hw.array_sizes[oa]}"
            )
    reduced = _limit_to_capacity(layer, hw, reduced)
    fractional: dict[str, dict[str, float]] = {}
    integer: dict[str, dict[str, float]] = {}
    for oa, per_dim in reduced.items():
        for dim, factor in per_dim.items():
            # Only the array dimension with the largest unroll of a dim absorbs the remainder.
            largest = max(v.get(dim, 0) for v in reduced.values())
            first = next(o for o, v in reduced.items() if v.get(dim, 0) == largest)
            if oa == first:
                earlier = math.prod(v.get(dim, 1) for o, v in fractional.items() if o != oa)
                steps = math.ceil(layer.sizes[dim] / (factor * earlier))
                exact = layer.sizes[dim] / steps / earlier
                fractional.setdefault(oa, {})[dim] = exact
                integer.setdefault(oa, {})[dim] = int(exact)
            else:
                fractional.setdefault(oa, {})[dim] = factor
                integer.setdefault(oa, {})[dim] = factor
    limited = SpatialMapping(
        {oa: {d: float(f) for d, f in pd.items()} for oa, pd in reduced.items()}
    )
    return SpatialMapping(fractional), SpatialMapping(integer), limited


def _limit_to_capacity(
    layer: Layer, hw: Accelerator, mapping: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    relevant = relevant_dims(layer)
    for memory, _mem_op, layer_op in _inner_operands(layer, hw):
        capacity = memory.size_bits / layer.precision[layer_op]
        entries = [
            (oa, dim)
            for oa in memory.served_dimensions
            for dim in mapping.get(oa, {})
            if dim in relevant[layer_op]
        ]
        factors = [mapping[oa][dim] for oa, dim in entries]
        while math.prod(factors) > capacity and any(f > 1 for f in factors):
            index = factors.index(max(factors))
            factors[index] -= 1
        for (oa, dim), factor in zip(entries, factors, strict=False):
            mapping[oa][dim] = factor
    return mapping


def temporal_loop_sizes(layer: Layer, spatial: SpatialMapping) -> dict[str, int]:
    """What is left of each dim after unrolling: ceil(size / unroll), 1s dropped."""
    unrolled = spatial.unrolled()
    sizes = {}
    for dim, size in layer.sizes.items():
        steps = math.ceil(size / unrolled.get(dim, 1) - 1e-9)
        if steps > 1:
            sizes[dim] = steps
    return sizes
