"""Tiles: each layer cut along its output rows (and its output channels across cores), with
the exact producer tiles each one reads.

A consumer tile producing output rows ``[r0, r1)`` reads input rows
``[r0·s − pad, (r1−1)·s − pad + (k−1)·d + 1)`` (clipped to the map): from stride, padding,
dilation and kernel size. Channel-wise operators (pooling, element-wise, depthwise) read only
their own channels; the others read every input channel. So a consumer tile is ready when
exactly those producer tiles are done, not the whole feature map.

    >>> plan = Plan(allocation={"conv1": (0, 1)}, rows={"conv1": 8})   # doctest: +SKIP
    >>> tiles = make_tiles(graph, plan)                                 # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field

from kiln.errors import ConfigError
from kiln.hw.schedule.graph import Graph, Node


@dataclass
class Plan:
    """What the scheduler is told: the cores of each layer (its output channels split evenly
    across them), the output rows per tile of each layer (absent: the whole layer), and the
    fused groups in execution order (absent: one group per layer, i.e. layer by layer).
    Inside a group, tiles of different layers interleave row by row."""

    allocation: dict[str, tuple[int, ...]]
    rows: dict[str, int] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)
    split: dict[str, str] = field(default_factory=dict)  # "K" (default) or "OY" across cores
    # Input-channel chunks of a MAC layer whose weights do not fit a core at once: each chunk
    # adds its partial sums to the previous one's on the same core (weights stream in).
    chunks: dict[str, int] = field(default_factory=dict)
    # How core-to-core data uses a bus that DRAM is on: "share" (up to what DRAM leaves
    # free), or "links" (point-to-point links where there are any).
    routes: str = "share"
    # Whether a long core-to-core transfer may be split over routes without a common link
    # (False: one route per transfer, as Stream moves data).
    multipath: bool = True
    # Channel-wise layers (pools, element-wise) whose one-row tile does not fit a core: their
    # output channels cut into this many parts, dealt to the layer's cores in turn.
    channel_parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"allocation": {k: list(v) for k, v in self.allocation.items()},
                "split": {k: self.split.get(k, "K") for k in self.allocation},
                "rows_per_tile": dict(self.rows), "input_channel_chunks": dict(self.chunks),
                "fused_groups": [list(g) for g in self.groups],
                "core_to_core_routes": self.routes, "split_transfers": self.multipath,
                "channel_parts": dict(self.channel_parts)}

    def copy(self) -> Plan:
        return Plan(dict(self.allocation), dict(self.rows), [list(g) for g in self.groups],
                    dict(self.split), dict(self.chunks), self.routes, self.multipath,
                    dict(self.channel_parts))


@dataclass
class Tile:
    """One unit of work on one core. ``deps``: ids of the producer tiles it reads;
    ``reads_input_bits``: what it reads of the network's input (from DRAM)."""

    id: int
    node: str
    part: int
    core: int
    rows: tuple[int, int]
    channels: tuple[int, int]
    deps: list[int]
    dep_bits: list[int]  # how much of each producer tile it reads (rows and channels it needs)
    output_bits: int
    weight_bits: int
    reads_input_bits: int
    group: int
    order: int = 0
    is_final: bool = False
    in_channels: tuple[int, int] | None = None  # the input channels it reads (None: all)
    chunk: int = 0  # which input-channel chunk; chunk > 0 adds to chunk − 1's partial sums
    chunks: int = 1
    input_channels: tuple[int, int] | None = None  # of the network input it reads (None: all)

    @property
    def label(self) -> str:
        text = f"{self.node}[rows {self.rows[0]}:{self.rows[1]}, ch {self.channels[0]}:" \
               f"{self.channels[1]}"
        if self.chunks > 1:
            text += f", in {self.in_channels[0]}:{self.in_channels[1]}"
        return text + "]"


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """``[0, total)`` cut into ``parts`` near-equal ranges (the first ones one larger)."""
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for index in range(parts):
        size = base + (1 if index < extra else 0)
        ranges.append((start, start + size))
        start += size
    return [r for r in ranges if r[1] > r[0]]


def row_ranges(node: Node, rows_per_tile: int | None) -> list[tuple[int, int]]:
    step = node.out_rows if not rows_per_tile else max(1, min(rows_per_tile, node.out_rows))
    return [(r, min(node.out_rows, r + step)) for r in range(0, node.out_rows, step)]


def _producer_rows(node: Node, producer: Node, rows: tuple[int, int]) -> tuple[int, int]:
    start, end = node.input_rows(*rows)
    if producer.out_rows != node.in_rows and node.in_rows > 0:
        # A reshaped edge (or an artificial chain): rows correspond in proportion.
        start = start * producer.out_rows // node.in_rows
        end = math.ceil(end * producer.out_rows / node.in_rows)
    return max(0, start), min(producer.out_rows, max(end, start + 1))


def check_plan(graph: Graph, plan: Plan, system) -> None:
    """Every layer has cores that exist and can run it; groups name known layers once."""
    for node in graph.nodes:
        cores = plan.allocation.get(node.name)
        if not cores:
            raise ConfigError(f"layer '{node.name}' ({node.op_type}) has no core allocated")
        for core_id in cores:
            core = system.cores.get(core_id)
            if core is None:
                raise ConfigError(f"layer '{node.name}': core {core_id} does not exist in "
                                  f"{system.source}")
            if not core.runs(node.op_type):
                able = [c.id for c in system.cores_for(node.op_type)]
                raise ConfigError(
                    f"layer '{node.name}': {core.label} cannot run {node.op_type} "
                    f"(cores that can: {', '.join(map(str, able)) or 'none'})")
        if len(set(cores)) != len(cores):
            raise ConfigError(f"layer '{node.name}': a core is listed twice in {list(cores)}")
    seen: set[str] = set()
    for index, group in enumerate(plan.groups):
        for name in group:
            if name not in graph.index:
                raise ConfigError(f"fused group {index}: unknown layer '{name}'")
            if name in seen:
                raise ConfigError(f"fused group {index}: layer '{name}' is in two groups")
            seen.add(name)


def group_of(graph: Graph, plan: Plan) -> dict[str, int]:
    """Each layer's group index; layers outside every group form their own, in order."""
    result: dict[str, int] = {}
    listed = {name: i for i, group in enumerate(plan.groups) for name in group}
    counter = 0
    by_group: dict[int, int] = {}
    for node in graph.nodes:  # groups are numbered in the order their first layer appears
        if node.name in listed:
            key = listed[node.name]
            if key not in by_group:
                by_group[key] = counter
                counter += 1
            result[node.name] = by_group[key]
        else:
            result[node.name] = counter
            counter += 1
    return result


def make_tiles(graph: Graph, plan: Plan) -> list[Tile]:
    """All tiles of the network with their dependencies, in the order the scheduler takes
    them (fused groups in order; inside a group, row by row across its layers)."""
    consumers = graph.consumers()
    groups = group_of(graph, plan)
    tiles: list[Tile] = []
    by_node: dict[str, list[Tile]] = {}
    starts: dict[str, list[int]] = {}
    for node in graph.nodes:
        cores = plan.allocation[node.name]
        by_rows = plan.split.get(node.name, "K") == "OY" and len(cores) > 1
        rows_per_tile = plan.rows.get(node.name)
        if by_rows:  # at least one row tile per core
            rows_per_tile = min(rows_per_tile or node.out_rows,
                                math.ceil(node.out_rows / len(cores)))
        row_list = row_ranges(node, rows_per_tile)
        # K across cores: each core a share of the output channels of every row tile;
        # OY across cores: whole row tiles dealt to the cores in turn (each holds all weights).
        channel_list = [(0, node.out_channels)] if by_rows else split(
            node.out_channels, plan.channel_parts.get(node.name, len(cores)))
        chunks = plan.chunks.get(node.name, 1) if node.is_mac and not node.channelwise else 1
        chunk_list = split(node.in_channels, chunks) if chunks > 1 else [None]
        own = []
        for row_index, rows in enumerate(row_list):
            placed = [cores[row_index % len(cores)]] if by_rows else [
                cores[part % len(cores)] for part in range(len(channel_list))]
            for part, (channels, core) in enumerate(zip(channel_list, placed, strict=False)):
                previous: Tile | None = None
                for chunk, in_channels in enumerate(chunk_list):
                    deps, dep_bits = _dependencies(graph, node, rows, channels, in_channels,
                                                   by_node, starts)
                    if previous is not None:  # the partial sums so far, on this core
                        deps.append(previous.id)
                        dep_bits.append(previous.output_bits)
                    share = (channels[1] - channels[0]) / max(1, node.out_channels)
                    if in_channels is not None:
                        share *= (in_channels[1] - in_channels[0]) / max(1, node.in_channels)
                    reads_input = 0
                    input_channels = channels if node.channelwise else in_channels
                    if node.groups > 1 and in_channels is None:
                        input_channels = node.input_channels_for(channels)  # its groups'
                    if not node.inputs:
                        first, last = node.input_rows(*rows)
                        wide = node.in_channels if input_channels is None else (
                            input_channels[1] - input_channels[0])
                        reads_input = (last - first) * node.in_cols * wide * node.act_bits
                    last_chunk = chunk == len(chunk_list) - 1
                    tile = Tile(
                        id=len(tiles), node=node.name, part=core if by_rows else part,
                        core=core, rows=rows, channels=channels, deps=deps, dep_bits=dep_bits,
                        output_bits=(rows[1] - rows[0]) * node.out_cols *
                        (channels[1] - channels[0]) * node.act_bits,
                        weight_bits=math.ceil(node.weight_count * share) * node.weight_bits,
                        reads_input_bits=reads_input, group=groups[node.name],
                        is_final=last_chunk and not consumers[node.name],
                        in_channels=in_channels, chunk=chunk, chunks=len(chunk_list),
                        input_channels=input_channels if reads_input else None)
                    tiles.append(tile)
                    previous = tile
                    if last_chunk:
                        own.append(tile)
        by_node[node.name] = own
        starts[node.name] = [t.rows[0] for t in own]
    return _ordered(graph, tiles)


def reads_of(node: Node, producer: Node, channels: tuple[int, int],
             in_channels: tuple[int, int] | None) -> tuple[int, int] | None:
    """The producer channels a tile of output ``channels`` (and input-channel chunk
    ``in_channels``) reads; None: all. Its own or its groups' channels where the producer
    makes exactly this node's input channels."""
    own = node.input_channels_for(channels)
    if own is None or producer.out_channels != node.in_channels:
        return in_channels
    if in_channels is None:
        return own
    low, high = max(own[0], in_channels[0]), min(own[1], in_channels[1])
    return (low, high) if high > low else in_channels


def _dependencies(graph: Graph, node: Node, rows: tuple[int, int], channels: tuple[int, int],
                  in_channels: tuple[int, int] | None, by_node: dict[str, list[Tile]],
                  starts: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """The producer tiles a tile reads, and how many bits of each: the rows its window
    covers; the channels it reads (its own for channel-wise operators, its input-channel
    chunk, or all)."""
    deps: list[int] = []
    dep_bits: list[int] = []
    for producer_name in dict.fromkeys(node.inputs):
        producer = graph.node(producer_name)
        first, last = _producer_rows(node, producer, rows)
        exact = producer.out_rows == node.in_rows and not node.needs_all_rows
        read = node.rows_read(*rows) if exact else []
        wanted = reads_of(node, producer, channels, in_channels)
        produced = by_node[producer_name]
        row_starts = starts[producer_name]
        # Producer tiles are stored by row range, then channel part: start at the first tile
        # of the range holding the first needed row.
        index = max(0, bisect.bisect_right(row_starts, first) - 1)
        index = bisect.bisect_left(row_starts, row_starts[index])
        for candidate in produced[index:]:
            if candidate.rows[0] >= last:
                break
            if candidate.rows[1] <= first:
                continue
            low, high = candidate.channels
            if wanted:
                low, high = max(low, wanted[0]), min(high, wanted[1])
                if high <= low:
                    continue
            if exact:  # rows of this tile the window really reads
                overlap = bisect.bisect_left(read, candidate.rows[1]) - bisect.bisect_left(
                    read, candidate.rows[0])
                if overlap <= 0:
                    continue
            else:
                overlap = min(last, candidate.rows[1]) - max(first, candidate.rows[0])
            deps.append(candidate.id)
            dep_bits.append(overlap * producer.out_cols * (high - low) * producer.act_bits)
    return deps, dep_bits


def _ordered(graph: Graph, tiles: list[Tile]) -> list[Tile]:
    """A topological order by priority: group, then how far through its layer a tile is
    (so a fused group advances row by row), then layer order, then channel part."""
    topo = {node.name: i for i, node in enumerate(graph.nodes)}
    rows_of = {node.name: max(1, node.out_rows) for node in graph.nodes}
    waiting = {t.id: len(t.deps) for t in tiles}
    users: dict[int, list[int]] = {t.id: [] for t in tiles}
    for tile in tiles:
        for dep in tile.deps:
            users[dep].append(tile.id)

    def key(tile: Tile) -> tuple:
        return (tile.group, tile.rows[0] / rows_of[tile.node], topo[tile.node], tile.part,
                tile.id)

    heap = [key(t) for t in tiles if waiting[t.id] == 0]
    heapq.heapify(heap)
    ordered: list[Tile] = []
    while heap:
        tile = tiles[heapq.heappop(heap)[-1]]
        tile.order = len(ordered)
        ordered.append(tile)
        for user in users[tile.id]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(heap, key(tiles[user]))
    if len(ordered) != len(tiles):
        raise ConfigError("the tiles' dependencies form a cycle")
    return ordered


def tile_memory(graph: Graph, node: Node, rows: int, parts: int, chunks: int = 1) -> int:
    """Bits a tile of ``rows`` output rows (one of ``parts`` channel parts, one of ``chunks``
    input-channel chunks) holds at once: its output, the input rows it reads and its share
    of the weights."""
    channels = math.ceil(node.out_channels / parts)
    output = rows * node.out_cols * channels * node.act_bits
    if node.needs_all_rows:
        in_rows = node.in_rows
    else:
        in_rows = min(node.in_rows, (rows - 1) * node.stride_rows +
                      (node.kernel_rows - 1) * node.dilation_rows + 1)
    in_channels = channels if node.channelwise else math.ceil(node.in_channels / chunks)
    inputs = in_rows * node.in_cols * in_channels * node.act_bits * max(1, len(node.inputs))
    weights = math.ceil(node.weight_count / parts / chunks) * node.weight_bits
    return output + inputs + weights


def fit_rows(graph: Graph, plan: Plan, system, share: float = 0.5) -> dict[str, int]:
    """Rows per tile for each layer: the plan's, halved until a tile needs at most ``share``
    of its smallest core's memory (the rest holds what other tiles still need); where a
    layer's share of weights alone is more than that, its input channels are cut into
    chunks first; where one row of a channel-wise layer does not fit at all, its channels are
    cut into parts (``plan.channel_parts``). Returns the layers whose rows were reduced, with
    the new value."""
    reduced = {}
    for node in graph.nodes:
        if node.name not in plan.allocation:
            continue
        cores = plan.allocation[node.name]
        capacity = min(system.cores[c].memory_bits for c in cores) * share
        rows = plan.rows.get(node.name) or node.out_rows
        rows = max(1, min(rows, node.out_rows))
        start = rows
        parts = 1 if plan.split.get(node.name) == "OY" else len(cores)
        if node.is_mac and not node.channelwise and node.name not in plan.chunks:
            weights = math.ceil(node.weight_count / parts) * node.weight_bits
            chunks = 1
            while weights / chunks > capacity / 2 and chunks < node.in_channels:
                chunks *= 2
            if chunks > 1:
                plan.chunks[node.name] = chunks
        chunks = plan.chunks.get(node.name, 1)
        if chunks > 1:
            # Weights stream in chunk by chunk; cutting rows too would load each chunk once
            # per row tile. The whole map's partial sums stay on the core instead.
            rows = node.out_rows
        while rows > 1 and tile_memory(graph, node, rows, parts, chunks) > capacity:
            rows = math.ceil(rows / 2)
        if rows != start:
            plan.rows[node.name] = rows
            reduced[node.name] = rows
        memory = min(system.cores[c].memory_bits for c in cores)
        if node.channelwise and not node.is_mac and parts == len(cores) and \
                tile_memory(graph, node, rows, parts) > memory:
            # One row does not fit at all (a global pool reads its whole input): fewer
            # channels per tile, each tile reading only its own, down to the share.
            cut = parts
            while cut < node.out_channels and tile_memory(graph, node, rows, cut) > capacity:
                cut = min(node.out_channels, cut * 2)
            if cut != parts:
                plan.channel_parts[node.name] = cut
    return reduced
