"""Moving data between the cores of a system: the use over time of every link direction,
bus and the DRAM port, the routes a transfer can take, and transfers cut into bursts that
fill gaps or split over several routes.

A link is two channels, one per direction, each with the link's bandwidth (full duplex, as
in Stream); a bus is one channel that every transfer on it shares. A transfer runs at its
route's narrowest bandwidth and may be cut into bursts (like a DMA); core-to-core data may
be split over routes that share no channel (one hop longer at most) when that delivers it
sooner.

    >>> network = Network(system, plan)                                    # doctest: +SKIP
    >>> transfer = network.move(item, 0, 2, bits=65536, ready=0.0, reason="input")  # doctest: +SKIP
"""

from __future__ import annotations

import math

from kiln.hw.schedule.records import Timeline, Transfer
from kiln.hw.schedule.system import System
from kiln.hw.schedule.tiles import Plan

MIN_BURST = 256  # cycles: the shortest piece a transfer is cut into
MIN_SHARE_BITS = 4096  # a share of a transfer split over several routes: at least this
MIN_SPLIT_CYCLES = 1024  # a transfer is split over several routes only if it takes longer


class Network:
    """The channels' timelines and every transfer reserved on them, for one schedule."""

    def __init__(self, system: System, plan: Plan, multipath: bool = True) -> None:
        self.system, self.plan = system, plan
        self.dram = system.offchip_core_id
        self.timelines: dict[str, Timeline] = {}
        for name, link in system.channels().items():
            self.timelines[name] = Timeline(link.bandwidth)
        self.timelines["dram"] = Timeline(system.offchip.bandwidth)
        self.multipath = multipath and plan.multipath
        self.route_resources_found: dict[tuple, tuple[tuple[str, ...], float]] = {}
        self.candidates: dict[tuple, list] = {}
        self.route_energy: dict[tuple, float] = {}
        self.transfers: list[Transfer] = []

    def pieces(self, resources: list[str], width: float, bits: int,
               ready: float) -> list[tuple[float, int, float]]:
        """Where a transfer fits: (start, cycles, bits) pieces, without reserving them. A
        transfer runs at its route's narrowest bandwidth and may be cut into bursts (like a
        DMA) that fill the gaps other transfers leave, none shorter than MIN_BURST cycles
        unless it is the last."""
        timelines = [self.timelines[resource] for resource in resources]
        for timeline in timelines:
            if timeline.last_end > ready:
                break
        else:  # every resource is free from then on
            return [(ready, math.ceil(bits / width) if bits else 0, bits)]
        remaining, time, pieces = bits, ready, []
        while remaining > 0 or not pieces:
            cycles_left = math.ceil(remaining / width) if remaining else 0
            shortest = min(cycles_left, MIN_BURST)
            while True:  # the earliest moment every resource on the way has room
                moved = time
                for timeline in timelines:
                    moved = max(moved, timeline.earliest(moved, shortest, width))
                if moved == time:
                    break
                time = moved
            span = min(timeline.free_span(time, width) for timeline in timelines)
            length = cycles_left if span >= cycles_left else max(shortest, math.floor(span))
            moved_bits = min(remaining, length * width)
            pieces.append((time, length, moved_bits))
            remaining -= moved_bits
            time += length
            if not bits:
                break
        return pieces

    def move(self, item: tuple, source: int, target: int, bits: int, ready: float,
             reason: str, alternatives: tuple[tuple[int, float], ...] = ()) -> Transfer:
        """Move data over whichever shortest route delivers it first (core-to-core data split
        over several routes when that is sooner); ``alternatives``: other (source, ready)
        places the same data can come from."""
        if alternatives:
            best = None
            for origin, when in ((source, ready), *alternatives):
                found = self.best_route(origin, target, bits, when)
                if best is None or found[0] < best[0]:
                    best, source = found, origin
            parts = [best]
        else:
            parts = self.split_routes(source, target, bits, ready)
        made = self.reserve_parts(item, source, target, bits, parts, reason)
        return Transfer(item, source, target, bits, min(m.start for m in made),
                        max(m.end for m in made), made[0].resources,
                        sum(m.energy_pj for m in made), reason, made[0].rate)

    def reserve_parts(self, item: tuple, source: int, target: int, bits: int, parts: list,
                      reason: str, also_to: tuple[int, ...] | list[int] = ()) -> list[Transfer]:
        """Reserve a transfer found as parts (``split_routes``' or ``on_route``'s entries);
        over a bus, ``also_to`` receive it too and each receiver counts in its energy."""
        made = []
        for _, resources, width, energy, pieces in parts:
            share = bits if len(parts) == 1 else sum(piece[2] for piece in pieces)
            made += self.reserve(item, source, target, pieces, resources, width,
                                 energy * (1 + len(also_to)), share, reason, also_to)
        return made

    def best_route(self, source: int, target: int, bits: int, ready: float) -> tuple:
        """(finish, resources, width, energy, pieces) of the route that delivers first,
        nothing reserved."""
        return self.fastest(source, target, bits, ready)[0]

    def fastest(self, source: int, target: int, bits: int, ready: float) -> tuple:
        """The best route's (finish, resources, width, energy, pieces), and the route (the
        first of the candidates on a tie). Routes are tried from the one that could finish
        first (free from its first moment on); one that cannot beat the best found is not
        worked out."""
        routes = self.candidate_routes(source, target)
        if len(routes) == 1:
            return self.on_route(source, target, routes[0], bits, ready), routes[0]
        bounds = []
        for index, route in enumerate(routes):
            resources, width = self.route_resources(source, target, route)
            # Its first burst cannot start before this, nor can it move faster than width.
            first = min(math.ceil(bits / width), MIN_BURST)
            bounds.append((self.available(resources, width, ready, first) + bits / width,
                           index))
        bounds.sort()
        best, best_index = None, None
        for bound, index in bounds:
            if best is not None and bound > best[0]:
                break
            found = self.on_route(source, target, routes[index], bits, ready)
            if best is None or (found[0], index) < (best[0], best_index):
                best, best_index = found, index
        return best, routes[best_index]

    def candidate_routes(self, source: int, target: int, extra_hops: int = 0) -> list:
        key = (source, target, extra_hops)
        if key not in self.candidates:
            routes = self.system.routes(source, target, extra_hops)
            if self.dram not in (source, target) and self.plan.routes == "links":
                # Core-to-core data on point-to-point links where there are any, leaving the
                # bus to DRAM traffic.
                routes = [r for r in routes if all(link.kind == "link" for link in r)] or \
                    routes
            self.candidates[key] = routes
        return self.candidates[key]

    def split_routes(self, source: int, target: int, bits: int, ready: float) -> list[tuple]:
        """How to move core-to-core data: the best single route, or shares of it over
        several routes that have no link in common (one hop longer at most), when that
        delivers it sooner. Each entry: (finish, resources, width, energy, pieces), nothing
        reserved."""
        best, best_route = self.fastest(source, target, bits, ready)
        if not self.multipath or self.dram in (source, target) or \
                best[0] - ready < MIN_SPLIT_CYCLES:
            return [best]
        chosen, routes = [best], [best_route]
        taken = set(best[1])
        for route in self.candidate_routes(source, target, extra_hops=1):
            resources, width = self.route_resources(source, target, route)
            if route is best_route or not taken.isdisjoint(resources):
                continue
            free = self.available(resources, width, ready)
            if free < best[0] - MIN_SPLIT_CYCLES:  # it can carry a useful share
                chosen.append((math.nan, resources, width, 0.0, [(free, 0, 0)]))
                routes.append(route)
                taken |= set(resources)
        if len(chosen) == 1:
            return [best]
        # Shares so that every route would finish together: route i, free from a_i at
        # width w_i, carries w_i * (F - a_i).
        starts = [found[4][0][0] for found in chosen]
        widths = [found[2] for found in chosen]
        order = sorted(range(len(chosen)), key=lambda i: starts[i])
        finish = math.inf
        for count in range(1, len(order) + 1):
            used = order[:count]
            rate = sum(widths[i] for i in used)
            finish = (bits + sum(widths[i] * starts[i] for i in used)) / rate
            if count == len(order) or finish <= starts[order[count]]:
                break
        shares = [max(0, int(widths[i] * (finish - starts[i]))) for i in range(len(chosen))]
        shares = [share if share >= MIN_SHARE_BITS else 0 for share in shares]
        shares[0] += bits - sum(shares)
        parts = [self.on_route(source, target, route, share, ready)
                 for route, share in zip(routes, shares, strict=True) if share > 0]
        if len(parts) > 1 and max(part[0] for part in parts) < best[0]:
            return parts
        return [best]

    def available(self, resources: list[str], width: float, ready: float,
                  cycles: int = MIN_BURST) -> float:
        """The first moment from ``ready`` on when every resource has ``width`` to spare for
        ``cycles`` (a burst)."""
        time = ready
        while True:
            moved = time
            for resource in resources:
                moved = max(moved, self.timelines[resource].earliest(moved, cycles, width))
            if moved == time:
                return time
            time = moved

    def route_resources(self, source: int, target: int,
                        route: tuple) -> tuple[tuple[str, ...], float]:
        """The resources a transfer along a route occupies, and its width."""
        key = (source, target, route)
        if key not in self.route_resources_found:
            self.route_resources_found[key] = self._find_route_resources(source, target, route)
        return self.route_resources_found[key]

    def _find_route_resources(self, source: int, target: int,
                              route: tuple) -> tuple[tuple[str, ...], float]:
        dram = self.system.offchip
        to_dram = self.dram in (source, target)
        width = math.inf
        resources = list(self.system.route_channels(source, target, route))
        for link in route:
            usable = link.bandwidth
            if not to_dram and self.dram in link.cores and self.plan.routes == "share":
                # Core-to-core data on the bus to DRAM leaves the DRAM its share of it
                # (all such transfers together): DRAM is usually the bottleneck.
                usable = max(link.bandwidth - dram.bandwidth, link.bandwidth / 2)
                share = f"share {link.index}"
                if share not in self.timelines:
                    self.timelines[share] = Timeline(usable)
                resources.append(share)
            width = min(width, usable)
        if to_dram:
            width = min(width, dram.bandwidth)
            resources.append("dram")
        return tuple(resources), width

    def pj_per_bit(self, route: tuple) -> float:
        """The energy per bit of a route's links, summed."""
        if route not in self.route_energy:
            self.route_energy[route] = sum(link.pj_per_bit for link in route)
        return self.route_energy[route]

    def on_route(self, source: int, target: int, route: tuple, bits: int,
                 ready: float) -> tuple:
        """(finish, resources, width, energy, pieces) of a transfer along one route."""
        dram = self.system.offchip
        resources, width = self.route_resources(source, target, route)
        energy = self.pj_per_bit(route) * bits
        if self.dram in (source, target):
            energy += bits * (dram.read_pj_per_bit if source == self.dram
                              else dram.write_pj_per_bit)
        pieces = self.pieces(resources, width, bits, ready)
        finish = pieces[-1][0] + pieces[-1][1]
        return finish, resources, width, energy, pieces

    def reserve(self, item: tuple, source: int, target: int, pieces: list, resources: list,
                width: float, energy: float, bits: int, reason: str,
                also_to: tuple[int, ...] | list[int] = ()) -> list[Transfer]:
        """Reserve a transfer's pieces on its resources and record them."""
        made = []
        for start, length, moved_bits in pieces:
            for resource in resources:
                self.timelines[resource].reserve(start, start + length, width)
            piece = Transfer(item, source, target, int(moved_bits), start, start + length,
                             tuple(resources), energy * (moved_bits / bits if bits else 0.0),
                             reason, width, tuple(also_to))
            self.transfers.append(piece)
            made.append(piece)
        return made
