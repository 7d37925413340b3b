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
    """Use of one resource over time (bits per cycle of a channel or the DRAM port) against its
    ``capacity``, as a step function: ``levels[i]`` is in use from ``times[i]`` until
    ``times[i + 1]``. Searches scan only the steps they look at, however long the
    reservations are."""

    def __init__(self, capacity: float = 1.0) -> None:
        self.capacity = capacity
        self.times: list[float] = [-math.inf]
        self.levels: list[float] = [0.0]
        self.last_end = -math.inf  # nothing is in use from here on

    def _step_at(self, time: float) -> int:
        """The index of the step that starts at ``time``, made if there is none."""
        index = bisect.bisect_right(self.times, time) - 1
        if self.times[index] != time:
            index += 1
            self.times.insert(index, time)
            self.levels.insert(index, self.levels[index - 1])
        return index

    def earliest(self, ready: float, duration: float, rate: float = 1.0) -> float:
        """The first moment from ``ready`` on with ``rate`` to spare for ``duration``."""
        limit = self.capacity + 1e-9 - rate
        if limit < 0:
            raise ValueError(f"a rate of {rate} exceeds the capacity {self.capacity}")
        if ready >= self.last_end:
            return ready
        times, levels = self.times, self.levels
        count = len(times)
        step = bisect.bisect_right(times, ready) - 1
        time = ready
        duration = max(duration, 1e-9)
        while True:
            if levels[step] > limit:  # the last step (after every reservation) is 0
                step += 1
                time = times[step]
                continue
            following = step + 1
            while following < count and times[following] < time + duration:
                if levels[following] > limit:
                    break
                following += 1
            else:
                return time
            step = following + 1
            time = times[step]

    def free_span(self, start: float, rate: float) -> float:
        """How long from ``start`` the resource has ``rate`` to spare (inf: for ever)."""
        limit = self.capacity + 1e-9 - rate
        if start >= self.last_end:
            return math.inf if limit >= 0 else 0.0
        step = bisect.bisect_right(self.times, start) - 1
        if self.levels[step] > limit:
            return 0.0
        for following in range(step + 1, len(self.times)):
            if self.levels[following] > limit:
                return self.times[following] - start
        return math.inf

    def reserve(self, start: float, end: float, rate: float = 1.0) -> None:
        if end <= start:
            return
        first = self._step_at(start)
        last = self._step_at(end)
        for step in range(first, last):
            self.levels[step] += rate
        self.last_end = max(self.last_end, end)
