"""What a schedule is made of: tiles placed in time, transfers over links, buffers in core
memories, and the timeline of one shared resource."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from kiln.hw.schedule.graph import Graph
from kiln.hw.schedule.system import System
from kiln.hw.schedule.tiles import Plan, Tile


@dataclass
class Transfer:
    """Data moved between two cores (the off-chip core is DRAM). ``item``: ``("out", tile)``
    a tile's output (spilled or final), ``("slice", producer, consumer)`` the part of a
    producer tile's output a consumer reads, ``("w", layer, chunk, channels)`` weights,
    ``("in", layer, rows, ...)`` the network input rows a tile reads. A bus carries one
    transfer to several cores at once: ``also_to`` lists the other cores that receive it."""

    item: tuple
    source: int
    target: int
    bits: int
    start: float
    end: float
    resources: tuple[str, ...]
    energy_pj: float
    reason: str
    rate: float = 0.0  # bits per cycle it takes of every link on its route
    also_to: tuple[int, ...] = ()


@dataclass
class Buffer:
    """``bits`` of ``item`` held in ``core``'s memory over ``[start, end)``; ``ready`` is when
    the data is complete in it."""

    core: int
    item: tuple
    bits: int
    start: float
    ready: float
    end: float | None = None
    last_use: float = 0.0


@dataclass
class ScheduledTile:
    tile: Tile
    start: float
    end: float
    energy_pj: float


@dataclass
class Schedule:
    """A complete schedule, its figures and everything the validator and the views read."""

    system: System
    graph: Graph
    plan: Plan
    tiles: list[ScheduledTile]
    transfers: list[Transfer]
    buffers: list[Buffer]
    spills: int = 0
    priced_shapes: int = 0
    figures: dict = field(default_factory=dict)

    @property
    def latency(self) -> float:
        ends = [t.end for t in self.tiles] + [t.end for t in self.transfers]
        return max(ends) if ends else 0.0

    @property
    def energy_pj(self) -> float:
        return sum(t.energy_pj for t in self.tiles) + sum(t.energy_pj for t in self.transfers)


class Timeline:
    """Use of one resource over time: intervals each taking a share (``rate``) of its
    ``capacity`` (bits per cycle of a link; 1 for a core), with earliest-fit search."""

    def __init__(self, capacity: float = 1.0) -> None:
        self.capacity = capacity
        self.starts: list[float] = []
        self.intervals: list[tuple[float, float, float]] = []
        self.longest = 0.0

    def _peak(self, start: float, end: float) -> tuple[float, list[float]]:
        """Highest use inside [start, end) and the ends of what overlaps it."""
        first = bisect.bisect_left(self.starts, start - self.longest)
        events, ends = [], []
        level = 0.0
        for s, e, rate in self.intervals[first:]:
            if s >= end:
                break
            if e <= start:
                continue
            ends.append(e)
            if s <= start:
                level += rate
            else:
                events.append((s, rate))
            if e < end:
                events.append((e, -rate))
        peak = level
        events.sort()
        for _, delta in events:
            level += delta
            peak = max(peak, level)
        return peak, ends

    def earliest(self, ready: float, duration: float, rate: float = 1.0) -> float:
        time = ready
        while True:
            peak, ends = self._peak(time, time + max(duration, 1e-9))
            if peak + rate <= self.capacity + 1e-9:
                return time
            time = min(e for e in ends if e > time)

    def free_span(self, start: float, rate: float) -> float:
        """How long from ``start`` the resource has ``rate`` to spare (inf: for ever)."""
        first = bisect.bisect_left(self.starts, start - self.longest)
        level, events = 0.0, []
        for s, e, r in self.intervals[first:]:
            if e <= start:
                continue
            if s <= start:
                level += r
                events.append((e, -r))
            else:
                events.append((s, r))
                events.append((e, -r))
        if level + rate > self.capacity + 1e-9:
            return 0.0
        events.sort()
        for time, delta in events:
            level += delta
            if level + rate > self.capacity + 1e-9:
                return time - start
        return math.inf

    def reserve(self, start: float, end: float, rate: float = 1.0) -> None:
        if end <= start:
            return
        index = bisect.bisect_right(self.starts, start)
        self.starts.insert(index, start)
        self.intervals.insert(index, (start, end, rate))
        self.longest = max(self.longest, end - start)
