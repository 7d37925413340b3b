"""An independent check of a schedule: replays it and names the first broken rule.

It re-derives from the graph which producer rows and channels each tile reads (it does not
trust the tiles' dependency lists) and checks that:
- the tiles of each layer cover its output exactly once;
- every producer tile a tile reads ends before it starts, and its data is on the tile's core
  for the whole tile (the producer's own buffer there, or a slice moved in before the start
  from where the data was at the time: the producer's core after the producer ended, or DRAM
  after it was written back);
- weights are on the core for every MAC tile; the network input was read in;
- a core runs one tile at a time; the transfers on a bus, on one direction of a link (a link
  is full duplex, as in Stream) or on the DRAM port never take more than its bandwidth
  together, and no transfer is faster than its narrowest link;
- no core holds more than its memory at any cycle; every final output reaches DRAM.

    >>> problems = check_schedule(schedule)      # doctest: +SKIP
    >>> validate(schedule)                        # raises InvalidScheduleError if any
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

from kiln.errors import KilnError
from kiln.hw.schedule.scheduler import input_of

_EPS = 1e-6


class InvalidScheduleError(KilnError):
    """A schedule that breaks a rule: a tile too early, a resource used twice, memory over."""


def _alive(buffer, start: float, end: float) -> bool:
    finish = math.inf if buffer.end is None else buffer.end
    return buffer.start <= start + _EPS and finish + _EPS >= end


def _needed(node, producer, rows: tuple[int, int]) -> tuple[int, int]:
    if node.needs_all_rows:
        first, last = 0, node.in_rows
    else:
        first = rows[0] * node.stride_rows - node.pad_top
        last = (rows[1] - 1) * node.stride_rows - node.pad_top + (
            node.kernel_rows - 1) * node.dilation_rows + 1
        first, last = max(0, first), min(node.in_rows, last)
    if producer.out_rows != node.in_rows and node.in_rows:
        first = first * producer.out_rows // node.in_rows
        last = -(-last * producer.out_rows // node.in_rows)
    return max(0, first), min(producer.out_rows, max(last, first + 1))


def _source_problem(moves, source, item, dram, transfers_by_item, buffers_by_core_item):
    """Why a transfer of a producer tile's data had no data to send, or None."""
    producer = source.tile.id
    for move in moves:
        if move.source == dram:
            written = [t.end for t in transfers_by_item.get(item, []) if t.target == dram]
            if not written or min(written) > move.start + _EPS:
                return (f"reads {source.tile.label} from DRAM at cycle {move.start:g} "
                        "before it was written there")
            continue
        held = [b for kind in ("out", "copy")
                for b in buffers_by_core_item.get((move.source, (kind, producer)), [])
                if _alive(b, move.start, move.end) and b.ready <= move.start + _EPS and
                (kind == "copy" or move.source == source.tile.core)]
        if move.start + _EPS < source.end or not held:
            return (f"{source.tile.label} leaves core {move.source} at cycle {move.start:g}, "
                    "before it exists there or after it was freed")
    return None


def check_schedule(schedule, limit: int = 20) -> list[str]:
    """Every rule a schedule breaks (at most ``limit``), each naming the tile and cycle."""
    problems: list[str] = []

    def fail(message: str) -> None:
        problems.append(message)
        if len(problems) >= limit:
            raise _EnoughError

    with contextlib.suppress(_EnoughError):
        _check(schedule, fail)
    return problems


class _EnoughError(Exception):
    """Enough problems found to stop looking."""


def _check(schedule, fail) -> None:
    graph, system = schedule.graph, schedule.system

    by_node: dict[str, list] = defaultdict(list)
    for entry in schedule.tiles:
        by_node[entry.tile.node].append(entry)
    buffers_by_core_item: dict[tuple, list] = defaultdict(list)
    for buffer in schedule.buffers:
        buffers_by_core_item[(buffer.core, buffer.item)].append(buffer)
    transfers_by_item: dict[tuple, list] = defaultdict(list)
    for transfer in schedule.transfers:
        transfers_by_item[transfer.item].append(transfer)

    # Coverage: each layer's output once.
    for node in graph.nodes:
        covered = sum((e.tile.rows[1] - e.tile.rows[0]) * (e.tile.channels[1] - e.tile.channels[0])
                      for e in by_node[node.name] if e.tile.chunk == e.tile.chunks - 1)
        if covered != node.out_rows * node.out_channels:
            fail(f"layer '{node.name}': its tiles cover {covered} of "
                 f"{node.out_rows * node.out_channels} output rows × channels")

    dram = system.offchip_core_id
    for entry in schedule.tiles:
        tile, node = entry.tile, graph.node(entry.tile.node)
        core = tile.core
        where = f"tile {tile.label} on core {core} at cycle {entry.start:g}"
        for producer_name in dict.fromkeys(node.inputs):
            producer = graph.node(producer_name)
            first, last = _needed(node, producer, tile.rows)
            if producer.out_rows == node.in_rows and not node.needs_all_rows:
                read = {r * node.stride_rows - node.pad_top + t * node.dilation_rows
                        for r in range(*tile.rows) for t in range(node.kernel_rows)}
            else:
                read = None
            # Re-derived here, not taken from the tiler: its own channels (channel-wise), its
            # groups' (grouped convolution) or its chunk's; a group outside the chunk reads
            # the chunk.
            wanted = tile.in_channels
            own = node.input_channels_for(tile.channels)
            if own is not None and producer.out_channels == node.in_channels:
                chunk = tile.in_channels or own
                low, high = max(own[0], chunk[0]), min(own[1], chunk[1])
                wanted = (low, high) if high > low else tile.in_channels
            for source in by_node[producer_name]:
                rows, channels = source.tile.rows, source.tile.channels
                if source.tile.chunk != source.tile.chunks - 1:
                    continue  # partial sums are not the producer's output
                if rows[1] <= first or rows[0] >= last:
                    continue
                if read is not None and not any(rows[0] <= r < rows[1] for r in read):
                    continue
                if wanted and (channels[1] <= wanted[0] or channels[0] >= wanted[1]):
                    continue
                if source.end > entry.start + _EPS:
                    fail(f"{where}: starts before {source.tile.label} ends "
                         f"(cycle {source.end:g})")
                    continue
                item = ("out", source.tile.id)
                own = [b for b in buffers_by_core_item.get((core, item), [])
                       if core == source.tile.core and _alive(b, entry.start, entry.end)
                       and b.ready <= entry.start + _EPS]
                copies = [b for b in buffers_by_core_item.get((core, ("copy", source.tile.id)),
                                                              [])
                          if _alive(b, entry.start, entry.end) and b.ready <= entry.start + _EPS]
                if own or copies:
                    continue
                slices = [b for b in buffers_by_core_item.get(
                    (core, ("slice", source.tile.id, tile.id)), [])
                    if _alive(b, entry.start, entry.end) and b.ready <= entry.start + _EPS]
                if not slices:
                    fail(f"{where}: the output of {source.tile.label} is not on core "
                         f"{core} while it runs")
                    continue
                moves = transfers_by_item.get(("slice", source.tile.id, tile.id), [])
                problem = _source_problem(moves, source, item, dram, transfers_by_item,
                                          buffers_by_core_item)
                if problem:
                    fail(f"{where}: {problem}")
        if tile.chunk > 0:
            previous = [e for e in by_node[node.name] if e.tile.rows == tile.rows and
                        e.tile.channels == tile.channels and e.tile.chunk == tile.chunk - 1]
            held = [b for e in previous for b in buffers_by_core_item.get(
                (core, ("out", e.tile.id)), []) if _alive(b, entry.start, entry.end)]
            if not previous or previous[0].end > entry.start + _EPS or \
                    previous[0].tile.core != core or not held:
                fail(f"{where}: the partial sums of the chunk before are not on core "
                     f"{core} when it starts")
        if node.is_mac and tile.weight_bits:
            weights = [b for b in buffers_by_core_item.get(
                (core, ("w", node.name, tile.chunk, tile.channels)), [])
                       if _alive(b, entry.start, entry.end) and b.ready <= entry.start + _EPS]
            if not weights:
                fail(f"{where}: the weights of '{node.name}' are not on core {core}")
        if tile.reads_input_bits:
            read = [b for b in buffers_by_core_item.get((core, input_of(tile)), [])
                    if b.ready <= entry.start + _EPS and _alive(b, entry.start, entry.end)]
            if not read:
                fail(f"{where}: its network input is not on core {core}")
        if tile.is_final:
            written = [t for t in transfers_by_item.get(("out", tile.id), [])
                       if t.target == dram and t.start + _EPS >= entry.end]
            if not written:
                fail(f"tile {tile.label}: its final output never reaches DRAM")

    # A transfer to several cores at once goes over a bus that reaches each of them.
    bus_cores = {name: set(link.cores) for name, link in system.channels().items()}
    for transfer in schedule.transfers:
        for extra in transfer.also_to:
            if not any(extra in bus_cores.get(r, ()) for r in transfer.resources):
                fail(f"transfer of {transfer.item} reaches core {extra} over "
                     f"{list(transfer.resources)}, which do not connect it")

    # Weights copied from another core: that core holds them all the while.
    for transfer in schedule.transfers:
        if transfer.item[0] == "w" and transfer.source != dram:
            held = [b for b in buffers_by_core_item.get((transfer.source, transfer.item), [])
                    if _alive(b, transfer.start, transfer.end)
                    and b.ready <= transfer.start + _EPS]
            if not held:
                fail(f"weights {transfer.item[1]} leave core {transfer.source} at cycle "
                     f"{transfer.start:g} without being there")

    # Pushed copies leave their core after the tile ended, while it still holds the output.
    by_id = {entry.tile.id: entry for entry in schedule.tiles}
    for transfer in schedule.transfers:
        if transfer.item[0] == "copy":
            source = by_id[transfer.item[1]]
            problem = _source_problem([transfer], source, ("out", source.tile.id), dram,
                                      transfers_by_item, buffers_by_core_item)
            if problem:
                fail(f"copy of {source.tile.label} to core {transfer.target}: {problem}")
            held = [b for b in buffers_by_core_item.get((transfer.target, transfer.item), [])
                    if b.ready + _EPS >= transfer.end and b.start <= transfer.start + _EPS]
            if not held:
                fail(f"copy of {source.tile.label} to core {transfer.target}: no buffer "
                     "receives it")

    # One tile per core at a time; links, buses and the DRAM port within their bandwidth.
    cores: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for entry in schedule.tiles:
        cores[entry.tile.core].append((entry.start, entry.end, entry.tile.label))
    for core_id, intervals in cores.items():
        intervals.sort()
        for (s1, e1, a), (s2, e2, b) in zip(intervals, intervals[1:], strict=False):
            if s2 + _EPS < e1 and e2 > s2 and e1 > s1:
                fail(f"core {core_id} runs two tiles at cycle {s2:g}: {a} and {b}")
    capacity = {name: link.bandwidth for name, link in system.channels().items()}
    capacity["dram"] = system.offchip.bandwidth
    load: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for transfer in schedule.transfers:
        label = f"transfer of {transfer.item} {transfer.source}->{transfer.target}"
        allowed = []
        for route in system.routes(transfer.source, transfer.target, extra_hops=1):
            names = set(system.route_channels(transfer.source, transfer.target, route))
            if dram in (transfer.target, transfer.source):
                names.add("dram")
            allowed.append(names)
        # ("share" resources are the scheduler's own budget on a bus, not hardware.)
        expected = {r for r in transfer.resources if not r.startswith("share ")}
        if expected not in allowed:
            fail(f"{label}: uses {sorted(expected)}, not a route from core "
                 f"{transfer.source} to core {transfer.target}")
        width = min(capacity[r] for r in expected) if expected else math.inf
        rate = transfer.rate
        if transfer.bits and (rate > width + _EPS or
                              (transfer.end - transfer.start) * rate + _EPS < transfer.bits):
            fail(f"{label}: moves {transfer.bits} bits in {transfer.end - transfer.start:g} "
                 f"cycles at {rate:g} bits/cycle (route allows {width:g})")
        if transfer.end > transfer.start:
            for resource in expected:
                load[resource].append((transfer.start, rate, label))
                load[resource].append((transfer.end, -rate, label))
    for resource, events in load.items():
        level = 0.0
        for time, delta, label in sorted(events, key=lambda e: (e[0], e[1])):
            level += delta
            if level > capacity[resource] + _EPS:
                fail(f"{resource} carries {level:g} bits/cycle at cycle {time:g} (it has "
                     f"{capacity[resource]:g}), with {label}")
                break

    # Memory over time per core.
    for core_id, core in system.cores.items():
        if core.kind == "offchip":
            continue
        events = []
        for buffer in schedule.buffers:
            if buffer.core != core_id:
                continue
            events.append((buffer.start, buffer.bits))
            events.append((math.inf if buffer.end is None else buffer.end, -buffer.bits))
        level = 0
        for time, delta in sorted(events, key=lambda e: (e[0], e[1])):
            level += delta
            if level > core.memory_bits:
                fail(f"core {core_id} holds {level:,} bits at cycle {time:g}, more than "
                     f"its {core.memory_bits:,}")
                break


def validate(schedule) -> None:
    """Raise :class:`InvalidScheduleError` naming what a schedule breaks."""
    problems = check_schedule(schedule)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InvalidScheduleError("invalid schedule: " + "; ".join(problems[:3]) + more)
