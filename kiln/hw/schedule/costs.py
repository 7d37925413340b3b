"""What a tile costs on a core: a MAC tile through kiln's mapper (each distinct tile shape
priced once per core, in memory and, with ``cache_dir``, on disk across runs); a pooling or
element-wise tile from the SIMD core's lanes and memory energies.

    >>> coster = TileCoster(system)                          # doctest: +SKIP
    >>> coster.cost(graph.node("conv1"), tile)               # doctest: +SKIP
    (1272.0, 424812.7)
"""

from __future__ import annotations

import math
from pathlib import Path

from kiln.errors import KilnError
from kiln.hw.cost import MappingError
from kiln.hw.mapping import MappingConstraints
from kiln.hw.schedule.graph import Node
from kiln.hw.schedule.system import Core, System
from kiln.hw.schedule.tiles import Tile
from kiln.hw.workload import Layer
from kiln.hw.workload_mapper import _cache_key, _cache_read, _cache_write, _solve, _Task


class TileDoesNotMapError(KilnError):
    """A tile that kiln's mapper cannot place on a core (a memory too small for it)."""


def tile_layer(node: Node, tile: Tile) -> Layer:
    """The loop nest of one tile: the layer's, with its rows and its share of channels."""
    layer = node.layer
    assert layer is not None
    sizes = dict(layer.sizes)
    pr_sizes = dict(layer.pr_sizes)
    rows = tile.rows[1] - tile.rows[0]
    channels = tile.channels[1] - tile.channels[0]
    if "OY" in sizes:
        sizes["OY"] = rows
        if "IY" in pr_sizes and rows != node.out_rows:
            # A row tile reads its whole window, padding rows included (they stream in as
            # zeros): every tile of the same height has the same shape and is priced once.
            pr_sizes["IY"] = (rows - 1) * node.stride_rows + (
                node.kernel_rows - 1) * node.dilation_rows + 1
        groups, per_group = sizes.get("G", 1), sizes["K"]
        if groups > 1 and per_group == 1:
            sizes["G"] = channels  # depthwise: the channels are groups
        elif groups > 1 and channels % per_group == 0:
            sizes["G"] = channels // per_group  # whole groups (K split by groups)
        elif groups > 1:
            # part of a group, or groups and parts of them: each output channel reads its
            # group's C inputs, so the MACs are exact (a tile of 7 channels of groups of 2
            # was 4 whole groups: 8 channels' MACs, found by kiln fuzz seed 1006)
            sizes["G"], sizes["K"] = 1, channels
        else:
            sizes["K"] = channels
    else:
        if "D" in sizes:
            sizes["D"] = rows
        sizes["K"] = channels
    if tile.in_channels is not None:
        sizes["C"] = tile.in_channels[1] - tile.in_channels[0]
    return Layer(f"{layer.name}", layer.op_type, sizes, layer.operand_dims, dict(layer.precision),
                 layer.relations, pr_sizes, dict(layer.links), [])


class TileCoster:
    """Prices tiles on cores and remembers every distinct (core, tile shape) it priced."""

    def __init__(self, system: System, objective: str = "latency",
                 cache_dir: str | Path | None = None, effort: str = "fast") -> None:
        self.system = system
        # "fast": the best spatial candidate and loop orders up to 4 prime factors per
        # loop; "full": kiln map's defaults (3 spatial candidates, 6 factors).
        self.options = (objective, 4, 1, False, False, 0) if effort == "fast" else (
            objective, 6, 3, False, False, 0)
        self.objective = objective
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memo: dict[tuple, tuple[float, float]] = {}
        self.priced = 0  # mapper runs (distinct shapes actually searched)

    def cost(self, node: Node, tile: Tile, core_id: int | None = None) -> tuple[float, float]:
        """(cycles, energy in pJ) of a tile on a core (default: the tile's own core)."""
        core = self.system.cores[tile.core if core_id is None else core_id]
        if node.layer is not None:
            return self._mac(core, node, tile)
        return self._simd(core, node, tile)

    def _mac(self, core: Core, node: Node, tile: Tile) -> tuple[float, float]:
        layer = tile_layer(node, tile)
        task = _Task(layer, MappingConstraints(), self.options)
        key = (core.source, core.name, _signature(layer), self.options)
        if key in self.memo:
            return self.memo[key]
        hw = core.accelerator
        assert hw is not None
        result = None
        disk_key = None
        if self.cache_dir is not None:
            disk_key = _cache_key(hw, task)
            result = _cache_read(self.cache_dir, disk_key)
        if result is None:
            try:
                result = _solve(hw, task)
            except MappingError as error:
                raise TileDoesNotMapError(
                    f"tile {tile.label} does not map on {core.label}: {error.message}") from None
            self.priced += 1
            if disk_key is not None:
                _cache_write(self.cache_dir, disk_key, result)
        value = (float(result.cost.latency_cycles), float(result.cost.energy_pj))
        self.memo[key] = value
        return value

    def _simd(self, core: Core, node: Node, tile: Tile) -> tuple[float, float]:
        rows = tile.rows[1] - tile.rows[0]
        channels = tile.channels[1] - tile.channels[0]
        outputs = rows * node.out_cols * channels
        operations = outputs * node.ops_per_output
        first, last = node.input_rows(*tile.rows)
        reads = (last - first) * node.in_cols * channels * node.act_bits * max(1, len(node.inputs))
        writes = outputs * node.act_bits
        # One operation per lane and cycle, or as fast as the memory ports move the data.
        cycles = max(math.ceil(operations / max(1, core.lanes)),
                     math.ceil((reads + writes) / max(1, 2 * core.bandwidth)), 1)
        energy = operations * core.op_energy_pj + reads * core.read_pj_per_bit + \
            writes * core.write_pj_per_bit
        return float(cycles), float(energy)


def _signature(layer: Layer) -> tuple:
    return (tuple(layer.sizes.items()), tuple(sorted(layer.precision.items())),
            tuple(sorted(layer.relations.items())), tuple(sorted(layer.pr_sizes.items())),
            tuple((k, tuple(v)) for k, v in layer.operand_dims.items()))
