"""The scheduler's timeline of one shared resource against a brute-force reference, on random
reservations: the earliest fit and the free span must be exactly the reference's."""

from __future__ import annotations

import math
import random

import pytest

from kiln.hw.schedule.records import Timeline


class ReferenceTimeline:
    """Every reservation kept as is; use at a moment summed over all of them."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.reserved: list[tuple[float, float, float]] = []

    def use(self, time: float) -> float:
        return sum(rate for start, end, rate in self.reserved if start <= time < end)

    def _moments(self, after: float) -> list[float]:
        return sorted({t for s, e, _ in self.reserved for t in (s, e) if t > after})

    def earliest(self, ready: float, duration: float, rate: float) -> float:
        for time in [ready, *self._moments(ready)]:
            inside = [time] + [t for t in self._moments(time) if t < time + duration]
            if all(self.use(t) + rate <= self.capacity for t in inside):
                return time
        raise AssertionError("a free moment always exists after the last reservation")

    def free_span(self, start: float, rate: float) -> float:
        if self.use(start) + rate > self.capacity:
            return 0.0
        for time in self._moments(start):
            if self.use(time) + rate > self.capacity:
                return time - start
        return math.inf


@pytest.mark.parametrize("seed", range(6))
def test_timeline_matches_the_reference(seed):
    rng = random.Random(seed)
    capacity = rng.choice([1, 4, 64, 128])
    timeline, reference = Timeline(capacity), ReferenceTimeline(capacity)
    for _ in range(60):
        rate = rng.choice([r for r in (1, 2, 4, 32, 64, 128) if r <= capacity])
        ready = rng.randrange(0, 400)
        duration = rng.randrange(1, 60)
        start = timeline.earliest(ready, duration, rate)
        assert start == reference.earliest(ready, duration, rate)
        for _ in range(3):
            probe = rng.randrange(0, 500)
            assert timeline.free_span(probe, rate) == reference.free_span(probe, rate)
        if rng.random() < 0.8:  # reserve where it fits, as the scheduler does
            timeline.reserve(start, start + duration, rate)
            reference.reserved.append((start, start + duration, rate))
        else:  # or a reservation placed anywhere that fits, out of order
            anywhere = rng.randrange(0, 500)
            fits = reference.earliest(anywhere, duration, rate)
            timeline.reserve(fits, fits + duration, rate)
            reference.reserved.append((fits, fits + duration, rate))
    assert max(reference.use(t) for s, e, _ in reference.reserved for t in (s, e)) <= capacity


def test_a_rate_above_capacity_is_refused():
    with pytest.raises(ValueError, match="exceeds the capacity"):
        Timeline(32).earliest(0, 10, 64)
