"""An event-driven list scheduler of tiles on the cores of a system.

Tiles are taken in the plan's order; each core runs its tiles in that order. A tile starts
when its core is free, its inputs have arrived (from the producer's core over the route's
links, or from DRAM), its weights are loaded, and its core's memory has room. Data that does
not fit is spilled: the buffer used furthest in the future is written back to DRAM (if it is
still needed and not there yet) and read again when needed.

Rules the validator (``validate.py``) checks independently:
- transfers through a bus, one direction of a link (links are full duplex, as in Stream) or
  the DRAM port share its bandwidth (each takes the narrowest bandwidth on its route, and
  together never more than any channel has); a core runs one tile at a time;
- a transfer starts after its data exists at the source; a tile starts after its inputs and
  weights are on its core and ends before they are freed;
- a core's buffers never exceed its memory.

A tile's inputs move in no earlier than the start of the tile before it on the same core
(double buffering); its weights up to 64 tiles ahead, as memory allows (DRAM is usually the
bottleneck, so keeping it busy matters most). Transfers go through ``routing.Network``: cut
into bursts that fill gaps in a channel's use, and core-to-core data split over routes that
share no link (one hop longer at most) when that delivers it sooner, as a DMA engine with
several paths would. A finished tile's output is pushed at once to the other cores with
larger memories that read it (over a bus to several at once when that is sooner), and then
leaves a small core even if a later tile there reads it: that tile pulls it back, so a SIMD
core's memory stays free for the rows streaming through it.

    >>> schedule = schedule_tiles(graph, system, plan)     # doctest: +SKIP
    >>> schedule.latency, schedule.energy_pj               # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from kiln.errors import KilnError
from kiln.hw.schedule.costs import TileCoster
from kiln.hw.schedule.graph import Graph
from kiln.hw.schedule.records import Buffer, Schedule, ScheduledTile, Transfer
from kiln.hw.schedule.routing import Network
from kiln.hw.schedule.system import System
from kiln.hw.schedule.tiles import Plan, Tile, check_plan, fit_rows, make_tiles

PUSH_SHARE = 0.25  # a pushed copy takes at most this share of the receiving core's memory


class DoesNotFitError(KilnError):
    """A tile whose weights, inputs and output do not fit in its core's memory."""


class _Scheduler:
    def __init__(self, graph: Graph, system: System, plan: Plan, coster: TileCoster,
                 prefetch: int | None = 64, push: bool = True, multipath: bool = True) -> None:
        self.graph, self.system, self.plan, self.coster = graph, system, plan, coster
        self.dram = system.offchip_core_id
        self.network = Network(system, plan, multipath)
        self.core_free: dict[int, float] = defaultdict(float)
        self.recent_starts: dict[int, list[float]] = defaultdict(list)
        self.horizon: dict[int, float] = defaultdict(float)
        self.prefetch = prefetch
        self.push = push
        self.multicast = True
        self.buffers: list[Buffer] = []
        self.active: dict[int, list[Buffer]] = defaultdict(list)  # open buffers, per core
        # Closed buffers per core, by end: (end, id, start, bits), dropped once before the
        # core's horizon.
        self.ended: dict[int, list[tuple[float, int, float, int]]] = defaultdict(list)
        self.resident: dict[tuple[int, tuple], Buffer] = {}  # (core, item) → open buffer
        self.in_dram: dict[tuple, float] = {}  # item → when its DRAM copy is complete
        self.done: dict[int, ScheduledTile] = {}
        self.spills = 0

    # -- transfers ---------------------------------------------------------------------
    def _multicast(self, item: tuple, core: int, bits: int, ready: float) -> Transfer | None:
        """Weights (a layer split by rows) or network input (split by channels) that other
        cores will need too go from DRAM to all of them in one transfer over a bus that
        reaches them, each with room for them."""
        others = [c for c in self.system.cores if c != core and
                  self.left_on_core.get((item, c), 0) > 0 and (c, item) not in self.resident]
        if not others:
            return None
        buses = [link for link in self.system.links if link.kind == "bus" and
                 {self.dram, core} <= set(link.cores)]
        if not buses:
            return None
        bus = max(buses, key=lambda link: len(set(others) & set(link.cores)))
        start = ready
        receivers = []
        for other in others:
            if other not in bus.cores:
                continue
            room = self._earliest_room(other, max(ready, self.horizon[other]), bits)
            if room is not None:
                receivers.append(other)
                start = max(start, room)
        if not receivers:
            return None
        reason = "weights" if item[0] == "w" else "input"
        resources, width = self.network.route_resources(self.dram, core, (bus,))
        pieces = self.network.pieces(resources, width, bits, start)
        energy = bits * (bus.pj_per_bit * (1 + len(receivers)) +
                         self.system.offchip.read_pj_per_bit)
        made = self.network.reserve(item, self.dram, core, pieces, resources, width, energy,
                                    bits, reason, receivers)
        for other in receivers:
            self._open(other, item, bits, made[0].start, made[-1].end)
        return Transfer(item, self.dram, core, bits, made[0].start, made[-1].end,
                        tuple(resources), energy, reason, width, tuple(receivers))

    # -- memory ------------------------------------------------------------------------
    def _earliest_room(self, core: int, time: float, need: int) -> float | None:
        """The earliest moment from ``time`` on after which ``need`` more bits fit on the
        core for good (with what is already placed there), or None."""
        limit = self.system.cores[core].memory_bits - need
        events = []
        level = 0
        for buffer in self.active[core]:  # open: held from their start on
            if buffer.start <= time:
                level += buffer.bits
            else:
                events.append((buffer.start, buffer.bits))
        ended = self.ended[core]
        for end, _, start, bits in ended[bisect.bisect_right(ended, (time, math.inf)):]:
            if start <= time:
                level += bits
            else:
                events.append((start, bits))
            events.append((end, -bits))
        events.sort()
        # The room holds from the moment after which the level never exceeds the limit.
        room = time if level <= limit else None
        last = len(events) - 1
        for index, (moment, delta) in enumerate(events):
            level += delta
            if index < last and events[index + 1][0] == moment:
                continue  # the level after every change at this moment counts
            if level > limit:
                room = None
            elif room is None:
                room = moment
        return room

    def _close(self, buffer: Buffer, at: float) -> None:
        if buffer.end is not None:
            return
        buffer.end = max(at, buffer.ready, buffer.last_use, buffer.start)
        self.resident.pop((buffer.core, buffer.item), None)
        self.active[buffer.core].remove(buffer)
        bisect.insort(self.ended[buffer.core],
                      (buffer.end, id(buffer), buffer.start, buffer.bits))

    def _open(self, core: int, item: tuple, bits: int, start: float, ready: float) -> Buffer:
        buffer = Buffer(core, item, bits, start, ready, None, ready)
        self.buffers.append(buffer)
        self.active[core].append(buffer)
        self.resident[(core, item)] = buffer
        return buffer

    def _prune(self, core: int, before: float) -> None:
        # Nothing may be placed on this core before ``before`` any more.
        self.horizon[core] = max(self.horizon[core], before)
        ended = self.ended[core]
        del ended[:bisect.bisect_right(ended, (before, math.inf))]

    def _evict_one(self, core: int, keep: set[tuple], now: int) -> bool:
        """Spill what is needed furthest in the future (list order), the largest first."""
        candidates = [b for b in self.active[core] if b.item not in keep]
        if not candidates:
            return False
        victim = max(candidates, key=lambda b: (self._next_use(b.item, now), b.bits))
        self._evict(victim)
        return True

    def _evict(self, victim: Buffer) -> None:
        """Free a buffer, first writing it back to DRAM if it is the last copy of a tile
        output still needed. (A copy whose own readers are done stays while it is the last
        one, so a needed output is always on some core or in DRAM.)"""
        item = victim.item
        if item[0] in ("out", "copy"):
            producer = item[1]
            others = [b for b in self._holders(producer) if b is not victim]
            if self.pending[producer] and ("out", producer) not in self.in_dram and \
                    not others:
                write = self.network.move(("out", producer), victim.core, self.dram,
                                          victim.bits, victim.ready, "spill")
                self.in_dram[("out", producer)] = write.end
                victim.last_use = max(victim.last_use, write.end)
                self.spills += 1
        self._close(victim, victim.last_use)

    def _push(self, tile: Tile, core: int, end: float) -> None:
        """Send a finished tile's output to the other cores that will read it, right away,
        so a small core (a SIMD unit) does not hold it until its last reader runs. Several
        readers on one bus get it in one transfer when that delivers sooner than one
        transfer each."""
        own = self.resident[(core, ("out", tile.id))]
        targets = sorted({self.tile_core[c] for c in self.pending[tile.id]} - {core})
        bits = tile.output_bits
        rooms: dict[int, float] = {}
        for target in targets:
            receiver = self.system.cores[target]
            if bits > receiver.memory_bits * PUSH_SHARE or \
                    receiver.memory_bits <= self.system.cores[core].memory_bits:
                # Too big to park there, or no larger a memory than where it is: its
                # readers pull the rows they need when they run.
                continue
            room = self._earliest_room(target, max(end, self.horizon[target]), bits)
            if room is not None:
                rooms[target] = room
        pushed = []
        for receivers, bus in self._push_plan(core, rooms, bits):
            # Routes found now, after the transfers reserved before this one.
            ready = max(rooms[t] for t in receivers)
            if bus is not None:
                parts = [self.network.on_route(core, receivers[0], (bus,), bits, ready)]
            else:
                parts = self.network.split_routes(core, receivers[0], bits, ready)
            made = self.network.reserve_parts(("copy", tile.id), core, receivers[0], bits,
                                              parts, "push", receivers[1:])
            start, arrived = min(m.start for m in made), max(m.end for m in made)
            for target in receivers:
                self._open(target, ("copy", tile.id), bits, start, arrived)
            own.last_use = max(own.last_use, arrived)
            pushed += receivers
        local_readers = any(self.tile_core[c] == core for c in self.pending[tile.id])
        if len(pushed) == len(targets) and (pushed or not local_readers):
            # Every reader elsewhere has its copy, in a larger memory than this one; readers
            # here pull it back from there.
            self._close(own, own.last_use)

    def _push_plan(self, core: int, rooms: dict[int, float], bits: int) -> list[tuple]:
        """How to push to the receivers in ``rooms`` (core → when it has room): a list of
        (receivers, bus), one transfer each, over that bus or (None) the best routes. One
        transfer over a bus to all its receivers is taken when it finishes before the last
        of the separate transfers would (each estimated alone, so the separate ones are, if
        anything, favoured)."""
        best_bus, apart = None, {}  # apart: when each receiver would have it alone
        for link in self.system.links:
            on_bus = [t for t in rooms if link.kind == "bus" and {core, t} <= set(link.cores)]
            if len(on_bus) < 2:
                continue
            for target in on_bus:
                if target not in apart:
                    apart[target] = self.network.best_route(core, target, bits,
                                                            rooms[target])[0]
            found = self.network.on_route(core, on_bus[0], (link,), bits,
                                          max(rooms[t] for t in on_bus))
            if found[0] <= max(apart[t] for t in on_bus) and (
                    best_bus is None or len(on_bus) > len(best_bus[0])):
                best_bus = (on_bus, link)
        plan = [best_bus] if best_bus else []
        return plan + [([t], None) for t in rooms if not best_bus or t not in best_bus[0]]

    def _bring(self, item: tuple, bits: int, dep: int | None, core: int, room: float,
               weight_room: float) -> Transfer:
        """Move what a tile needs onto its core: weights (from DRAM, or from a core that
        holds them), network input, or the rows it reads of a producer tile (from the
        holder whose copy is ready first, or from DRAM)."""
        alternatives: tuple[tuple[int, float], ...] = ()
        if item[0] == "w":
            source, ready = self.dram, min(room, weight_room)
            # The same weights already on another core (a layer split by rows) can come
            # from there over a link instead of from DRAM.
            peers = [self.resident[(other, item)] for other in self.system.cores
                     if other != core and (other, item) in self.resident]
            alternatives = tuple((peer.core, max(peer.ready, ready)) for peer in peers)
        elif dep is None:
            source, ready = self.dram, room
        else:
            holders = self._holders(dep)
            if not holders:
                source, ready = self.dram, self.in_dram[("out", dep)]
            else:
                own = min(holders, key=lambda b: b.ready)
                source, ready = own.core, own.ready
        reason = {"w": "weights", "in": "input"}.get(item[0], "input")
        if item[0] in ("w", "in") and self.multicast:
            move = self._multicast(item, core, bits, ready)
            if move is not None:
                return move
        return self.network.move(item, source, core, bits,
                                 ready if item[0] == "w" else max(room, ready), reason,
                                 alternatives)

    def _used(self, core: int, item: tuple, end: float) -> None:
        """A tile on ``core`` read ``item`` until ``end``; freed after its last reader there."""
        buffer = self.resident[(core, item)]
        buffer.last_use = max(buffer.last_use, end)
        self.left_on_core[(item, core)] -= 1
        if self.left_on_core[(item, core)] == 0:
            self._close(buffer, end)

    def _holders(self, producer: int) -> list[Buffer]:
        """The open buffers holding a tile's whole output: its own and pushed copies."""
        found = []
        for holder in self.system.cores:
            for kind in ("out", "copy"):
                buffer = self.resident.get((holder, (kind, producer)))
                if buffer is not None:
                    found.append(buffer)
        return found

    # -- tiles -------------------------------------------------------------------------
    def run(self, tiles: list[Tile]) -> Schedule:
        self.tiles_by_id = {t.id: t for t in tiles}
        self.tile_core = {t.id: t.core for t in tiles}
        self.pending: dict[int, set[int]] = defaultdict(set)  # producer → consumers left
        self.left_on_core: dict[tuple, int] = defaultdict(int)  # (weights, core) → tiles
        for tile in tiles:
            for dep in tile.deps:
                self.pending[dep].add(tile.id)
            if tile.weight_bits:
                self.left_on_core[(weights_of(tile), tile.core)] += 1
            if tile.reads_input_bits:
                self.left_on_core[(input_of(tile), tile.core)] += 1
        # When each item is next needed (list position), for choosing what to spill.
        self.uses: dict[tuple, list[int]] = defaultdict(list)
        for tile in tiles:
            for dep in tile.deps:
                self.uses[("out", dep)].append(tile.order)
            if tile.weight_bits:
                self.uses[weights_of(tile)].append(tile.order)
        scheduled = [self._one(tile) for tile in tiles]
        return Schedule(self.system, self.graph, self.plan, scheduled, self.network.transfers,
                        self.buffers, self.spills, self.coster.priced)

    def _next_use(self, item: tuple, after: int) -> float:
        """The list position of the next tile (after ``after``) that reads an item."""
        key = ("out", item[1]) if item[0] == "copy" else item
        orders = self.uses.get(key, [])
        index = bisect.bisect_right(orders, after)
        return orders[index] if index < len(orders) else math.inf

    def _one(self, tile: Tile) -> ScheduledTile:
        core = tile.core
        node = self.graph.node(tile.node)
        cycles, energy = self.coster.cost(node, tile)
        # Inputs move in no earlier than the start of the tile before on this core; weights
        # no earlier than the start of the ``prefetch``-th tile before (None: as early as
        # memory allows): they come from DRAM, usually the bottleneck.
        starts = self.recent_starts[core]
        window = starts[-1] if starts else 0.0
        weight_window = starts[-self.prefetch] if self.prefetch and len(
            starts) >= self.prefetch else 0.0
        self._prune(core, weight_window)
        weight_item = weights_of(tile)
        # What has to come in: weights (unless resident), the slice of each producer tile
        # this tile reads (unless that tile's output is on this core), network input.
        needs: list[tuple[tuple, int, int | None]] = []
        if tile.weight_bits and (core, weight_item) not in self.resident:
            needs.append((weight_item, tile.weight_bits, None))
        local: list[tuple[int, int, Buffer]] = []
        for dep, bits in zip(tile.deps, tile.dep_bits, strict=True):
            here = self.resident.get((core, ("out", dep))) or self.resident.get(
                (core, ("copy", dep)))
            if here is not None:
                local.append((dep, bits, here))
            else:
                needs.append((("slice", dep, tile.id), bits, dep))
        input_item = input_of(tile)
        if tile.reads_input_bits and (core, input_item) not in self.resident:
            needs.append((input_item, tile.reads_input_bits, None))
        capacity = self.system.cores[core].memory_bits
        weights_here = self.resident[(core, weight_item)].bits if (
            core, weight_item) in self.resident else 0

        def total() -> int:
            return sum(bits for _, bits, _ in needs) + tile.output_bits + weights_here + sum(
                buffer.bits for _, _, buffer in local)

        # Whole producer tiles held here that leave no room: spill them and read only the
        # rows this tile needs.
        while total() > capacity and any(b.bits > bits for _, bits, b in local):
            dep, bits, buffer = max(local, key=lambda entry: entry[2].bits - entry[1])
            local.remove((dep, bits, buffer))
            self._evict(buffer)
            needs.append((("slice", dep, tile.id), bits, dep))
        need = sum(bits for _, bits, _ in needs) + tile.output_bits
        held = total() - need
        local_buffers = [buffer for _, _, buffer in local]
        if need + held > capacity:
            raise DoesNotFitError(
                f"tile {tile.label} on {self.system.cores[core].label} needs {need + held:,} "
                f"bits of memory (weights {tile.weight_bits:,}, output {tile.output_bits:,}, "
                f"inputs {need + held - tile.weight_bits - tile.output_bits:,}) but the core "
                f"holds {capacity:,}",
                hint="split the layer across more cores or use fewer rows per tile")
        keep = {("out", dep) for dep in tile.deps} | {("copy", dep) for dep in tile.deps} | {
            weight_item, input_item}
        while True:
            weights_need = sum(bits for item, bits, _ in needs if item[0] == "w")
            weight_room = self._earliest_room(core, weight_window, weights_need) if \
                weights_need else window
            room = None
            if weight_room is not None:
                room = self._earliest_room(core, max(window, weight_room), need)
            if room is not None:
                break
            if not self._evict_one(core, keep, tile.order):
                raise DoesNotFitError(
                    f"tile {tile.label} does not fit on {self.system.cores[core].label} "
                    f"({need:,} bits needed, {capacity:,} available)")
        arrivals = [room] + [buffer.ready for buffer in local_buffers]
        brought: list[Buffer] = []
        for item, bits, dep in needs:
            move = self._bring(item, bits, dep, core, room, weight_room)
            if move.source != self.dram:  # the sender holds the data until it has left
                held = [item] if dep is None else [("out", dep), ("copy", dep)]
                giver = next(self.resident[(move.source, k)] for k in held
                             if (move.source, k) in self.resident)
                giver.last_use = max(giver.last_use, move.end)
            buffer = self._open(core, item, bits, move.start, move.end)
            if item[0] == "slice":
                brought.append(buffer)
            arrivals.append(move.end)
        if tile.weight_bits:
            arrivals.append(self.resident[(core, weight_item)].ready)
        if tile.reads_input_bits:
            arrivals.append(self.resident[(core, input_item)].ready)
        start = max([self.core_free[core], *arrivals])
        end = start + cycles
        self.core_free[core] = end
        starts.append(start)
        self._open(core, ("out", tile.id), tile.output_bits, start, end)
        for buffer in local_buffers:
            buffer.last_use = max(buffer.last_use, end)
        for buffer in brought:
            buffer.last_use = end
            self._close(buffer, end)
        for dep in tile.deps:
            self.pending[dep].discard(tile.id)
            if not self.pending[dep]:  # every consumer has read it: free it everywhere
                for buffer in self._holders(dep):
                    self._close(buffer, buffer.last_use)
            elif not any(self.tile_core[c] == core for c in self.pending[dep]):
                copy = self.resident.get((core, ("copy", dep)))
                others = [b for b in self._holders(dep) if b is not copy]
                if copy is not None and (others or ("out", dep) in self.in_dram):
                    self._close(copy, copy.last_use)  # this core's readers are done with it
        if tile.reads_input_bits:
            self._used(core, input_item, end)
        if tile.weight_bits:
            self._used(core, weight_item, end)
        output = self.resident[(core, ("out", tile.id))]
        if tile.is_final:
            write = self.network.move(("out", tile.id), core, self.dram, tile.output_bits,
                                      end, "output")
            self.in_dram[("out", tile.id)] = write.end
            output.last_use = write.end
            self._close(output, write.end)
        elif self.push:
            self._push(tile, core, end)
        scheduled = ScheduledTile(tile, start, end, energy)
        self.done[tile.id] = scheduled
        return scheduled


def weights_of(tile: Tile) -> tuple:
    """The weights a tile uses: its layer's, for its output channels and input chunk (tiles
    of a layer split by rows on several cores use the same weights)."""
    return ("w", tile.node, tile.chunk, tile.channels)


def input_of(tile: Tile) -> tuple:
    """The network input a tile reads: its rows' window, its input channels (tiles of a
    layer split by output channels read the same input)."""
    return ("in", tile.node, tile.rows, tile.input_channels)


def schedule_tiles(graph: Graph, system: System, plan: Plan,
                   coster: TileCoster | None = None, prefetch: int | None = 64) -> Schedule:
    """Schedule a network on a system under a plan (allocation, rows per tile, groups)."""
    check_plan(graph, plan, system)
    fit_rows(graph, plan, system)
    coster = coster or TileCoster(system)
    tiles = make_tiles(graph, plan)
    schedule = _Scheduler(graph, system, plan, coster, prefetch).run(tiles)
    return schedule
