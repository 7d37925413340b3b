"""The mapper: best spatial unrolling and temporal loop order for a layer on an accelerator.

Spatial candidates come from :mod:`kiln.hw.spatial` (ranked by real array utilization).
Temporal search enumerates the orders of the loops' prime factors (LOMA: loop-order-based
memory allocation) and gives each order its memory levels bottom-up, each memory taking the
loops that minimise the traffic to the level above. Orders that give the same allocated
mapping are evaluated once; ties are broken by (objective, energy, latency, mapping text)
so results never depend on enumeration order or hash seeds. The orders of a spatial
mapping are allocated, keyed and costed together with numpy
(:mod:`kiln.hw.allocation_batch`, :mod:`kiln.hw.mapping_keys`, :mod:`kiln.hw.operand_batch`,
:mod:`kiln.hw.cost_batch`).

    >>> from kiln.hw import load_accelerator, load_workload, map_layer   # doctest: +SKIP
    >>> best = map_layer(workload.layers[0], hw, objective="latency")     # doctest: +SKIP
    >>> best.cost.latency_cycles, str(best.spatial)                       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import ConfigError
from kiln.hw.accelerator import Accelerator
from kiln.hw.allocation import all_allocations
from kiln.hw.allocation_batch import OrderBatch, allocate_order_batch
from kiln.hw.analysis import Relevancy, operand_key, relevancy, spatial_per_level, tensor_elements
from kiln.hw.cost import Cost, MappingError, evaluate
from kiln.hw.cost_batch import BatchPlan
from kiln.hw.mapping import (
    Loop,
    MappingConstraints,
    SpatialMapping,
    TemporalMapping,
    fit_spatial,
    temporal_loop_sizes,
)
from kiln.hw.mapping_keys import KeyCoder, OperandShape
from kiln.hw.operand_batch import analyse_orders
from kiln.hw.orders import order_space
from kiln.hw.spatial import spatial_candidates, zigzag_completions
from kiln.hw.workload import Layer

OBJECTIVES = ("latency", "energy", "edp")
REFINE_ALLOCATIONS = 256
ORDERS_PER_CHUNK = 4096  # loop orders allocated together (numpy arrays of this many rows)


@dataclass
class MappingResult:
    """The best mapping found for a layer and what the search did. ``spatial`` is the
    unrolling used: a user's, reduced where it exceeded the array, layer or memories."""

    layer: str
    cost: Cost
    spatial: SpatialMapping
    temporal: TemporalMapping
    evaluated: int
    orderings: int
    rejected: dict[str, int] = field(default_factory=dict)
    plain_best: float = math.inf  # the objective's best in ZigZag's search space


# ---------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------


def canonical_key(
    temporal: TemporalMapping, rel: Relevancy, roomy_top: frozenset[str] = frozenset(),
) -> tuple:
    """What the cost depends on: per operand and level (after stationary ir loops move down)
    the multiset of loops and the products of the outermost r and ir runs. Orders with the
    same key cost exactly the same, so only one of them is evaluated.

    In a top memory that can hold the whole layer twice over (``roomy_top``: it is always
    double-buffered) the outermost runs matter neither, so only the multiset is kept.
    One mapping at a time: the search uses :class:`kiln.hw.mapping_keys.KeyCoder`, which
    groups orders the same way (tests compare them)."""
    parts = []
    for op, levels in sorted(temporal.loops.items()):
        mac_stationary, per_level = operand_key(levels, rel.r[op], rel.ir[op])
        last = len(per_level) - 1
        parts.append((op, mac_stationary, tuple(
            level[:1] if (index == last and op in roomy_top) else level
            for index, level in enumerate(per_level))))
    return tuple(parts)


def roomy_top_memories(layer: Layer, hw: Accelerator, rel: Relevancy) -> frozenset[str]:
    """Operands whose top memory holds every operand it stores at most half full."""
    full = {
        op: tensor_elements(layer, op, layer.sizes, rel)
        * max(layer.precision[op], layer.precision.get("O_final", 0) if op == layer.output else 0)
        for op in layer.operands
    }
    roomy = set()
    for op in layer.operands:
        top = hw.levels(layer.links[op])[-1]
        stored = sum(full[other] for other in layer.operands if layer.links[other] in top.operands)
        if stored <= 0.5 * top.size_bits:
            roomy.add(op)
    return frozenset(roomy)


def _objective(cost: Cost, objective: str) -> tuple:
    primary = {"latency": cost.latency_cycles, "energy": cost.energy_pj, "edp": cost.edp}[objective]
    return (primary, cost.energy_pj, cost.latency_cycles)


# With --refine, kiln searches beyond ZigZag's space and meets many near-equal latencies at
# very different energies: within this fraction of the best primary figure, the other one
# (energy for latency, latency for energy) decides. The plain search keeps ZigZag's rule
# (strictly the best primary figure, then energy) so that both tools pick the same mapping.
NEAR_TIE = 1e-3


def pick_best(candidates: list[tuple[Cost, str, Any]], objective: str, near_tie: float = 0.0,
              ceiling: float = math.inf) -> tuple[Cost, str, Any]:
    """The best of ``(cost, text, payload)`` candidates: the lowest objective (then energy,
    latency, text); with ``near_tie`` > 0, among those within that fraction of the lowest
    primary figure and not above ``ceiling`` (what ZigZag's search space reached), the one
    best on the secondary figure."""
    best = min(candidates, key=lambda c: (_objective(c[0], objective), c[1]))
    if near_tie <= 0 or objective == "edp":
        return best
    bound = min(_objective(best[0], objective)[0] * (1 + near_tie), ceiling)
    close = [c for c in candidates if _objective(c[0], objective)[0] <= bound]

    def secondary(cost: Cost) -> float:
        return cost.energy_pj if objective == "latency" else cost.latency_cycles

    return min(close, key=lambda c: (secondary(c[0]), _objective(c[0], objective), c[1]))


def search_temporal(
    layer: Layer,
    hw: Accelerator,
    spatial_user: SpatialMapping,
    objective: str = "latency",
    lpf_limit: int | None = 6,
    ordering: list[tuple[str, int | None]] | None = None,
    on_progress: Callable[[int], None] | None = None,
    exhaustive: bool = False,
    refine: int = 0,
) -> MappingResult:
    """Best temporal mapping for one spatial mapping: over every loop order, or those a
    user's ``ordering`` allows (ZigZag's reading: :mod:`kiln.hw.orders`).

    With ``exhaustive`` every memory allocation of every order is tried, not only the
    traffic-minimising one (affordable for small layers; use ``lpf_limit=None`` too).
    With ``refine=N`` only the N best orders get every allocation tried, after the search.

    Each distinct mapping's energy and latency come from :class:`kiln.hw.cost_batch.BatchPlan`
    (all mappings at once, equal to :func:`evaluate` to the last bit); only the winner is
    evaluated in full."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    rel = relevancy(layer)
    spatial, spatial_int, spatial_limited = fit_spatial(layer, hw, spatial_user)
    levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
    loop_sizes = temporal_loop_sizes(layer, spatial)
    space = order_space(loop_sizes, ordering, lpf_limit)
    total_cycles = math.prod(loop_sizes.values())
    batch = _Batch(layer, hw, rel, spatial, spatial_int, spatial_limited, total_cycles)
    seen: set[bytes] = set()
    roomy = roomy_top_memories(layer, hw, rel)
    rejected: dict[str, int] = defaultdict(int)
    orders: list[list[Loop]] = []  # the order of each candidate (refine revisits the best)
    coder: KeyCoder | None = None
    total = 0

    def add_new(allocated: OrderBatch) -> None:
        """Cost the mappings whose key is new (the first of equal ones stands for all)."""
        operand_keys, mapping_keys, shapes = coder.keys(allocated)
        new = []
        for index, key in enumerate(mapping_keys):
            reason = allocated.reasons[index]
            if reason is not None:  # why this order does not fit
                rejected[reason] += 1
                continue
            if key in seen:
                continue
            seen.add(key)
            new.append(index)
            orders.append(allocated.orders[index])
        batch.add(allocated, new, operand_keys, shapes)

    for chunk in _chunks(space.orders(), ORDERS_PER_CHUNK):
        if on_progress:
            on_progress(total)
        total += len(chunk)
        coder = coder or KeyCoder(layer, rel, chunk[0], roomy)
        if exhaustive:
            temporals = [temporal for order in chunk
                         for temporal in all_allocations(layer, hw, levels, order, rel)]
            if temporals:
                add_new(OrderBatch.from_temporals(layer, temporals))
        else:
            add_new(allocate_order_batch(layer, hw, levels, chunk, rel))
    if not len(batch):
        reasons = "; ".join(f"{k} ({v} orders)" for k, v in rejected.items()) or "no order fits"
        raise MappingError(f"spatial mapping {spatial_user}: {reasons}")
    energy, latency = batch.score()
    primary = _primary(objective, energy, latency)
    ranking = np.lexsort((latency, energy, primary))
    winner = batch.first_by_text(ranking, primary, energy, latency)
    plain_best = float(primary[winner])
    evaluated = len(batch)
    if refine and not exhaustive:
        plain = evaluated
        for position in batch.best_positions(ranking, primary, energy, latency, count=refine):
            # Deep hierarchies have very many allocations: the first REFINE_ALLOCATIONS
            # (largest lower-level tiles first, as LOMA prefers) of each order are tried.
            temporals = list(itertools.islice(
                all_allocations(layer, hw, levels, orders[position], rel), REFINE_ALLOCATIONS))
            if temporals:
                add_new(OrderBatch.from_temporals(layer, temporals))
        evaluated = len(batch)
        if evaluated > plain:
            energy, latency = batch.score()
            primary = _primary(objective, energy, latency)
            # The plain winner and every refined mapping compete (no other plain mapping
            # can win: pick_best's bound is at most the plain best).
            pool = np.concatenate([[winner], np.arange(plain, evaluated)])
            winner = batch.pick(pool, objective, primary, energy, latency, NEAR_TIE, plain_best)
    temporal = batch.temporal(winner)
    cost = evaluate(layer, hw, spatial, temporal, spatial_int, spatial_limited, rel,
                    batch.cache)
    return MappingResult(layer.name, cost, spatial_limited, temporal, evaluated, total,
                         dict(rejected), plain_best)


def _chunks(items: Iterator[list[Loop]], size: int) -> Iterator[list[list[Loop]]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _primary(objective: str, energy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    return {"latency": latency, "energy": energy, "edp": energy * latency}[objective]


class _Batch:
    """The distinct mappings of one search and their operand analyses' rows."""

    def __init__(self, layer: Layer, hw: Accelerator, rel: Relevancy, spatial: SpatialMapping,
                 spatial_int: SpatialMapping, spatial_limited: SpatialMapping,
                 total_cycles: float) -> None:
        self.layer, self.hw, self.rel = layer, hw, rel
        self.spatial, self.spatial_int = spatial, spatial_int
        self.same = spatial_int.key() == spatial.key()
        self.total_cycles = total_cycles
        self.plan = BatchPlan(layer, hw, rel, spatial_limited)
        self.cache: dict = {}
        self.sources: list[tuple[OrderBatch, int]] = []  # where each mapping comes from
        self.built: dict[int, TemporalMapping] = {}
        self.energy_rows: dict[str, list[int]] = {op: [] for op in layer.operands}
        self.latency_rows: dict[str, list[int]] = {op: [] for op in layer.operands}
        self.rows_of: dict[tuple[str, bytes], tuple[int, int]] = {}
        self.texts: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def temporal(self, index: int) -> TemporalMapping:
        """Mapping ``index`` (built when first asked for: most are only ever costed)."""
        found = self.built.get(index)
        if found is None:
            source, position = self.sources[index]
            found = self.built[index] = source.temporal(position)
        return found

    def add(self, source: OrderBatch, positions: list[int],
            operand_keys: dict[str, list[bytes]], shapes: dict[str, OperandShape]) -> None:
        """Mappings ``positions`` of ``source``. Operand analyses are worked out (for all
        of them at once) only for operand keys not met before in this search."""
        self.sources += [(source, position) for position in positions]
        for op in self.layer.operands:
            keys = operand_keys[op]
            fresh: dict[bytes, int] = {}
            for position in positions:
                key = keys[position]
                if (op, key) not in self.rows_of and key not in fresh:
                    fresh[key] = position
            if fresh:
                rows = np.array(list(fresh.values()), dtype=np.int64)
                moves = analyse_orders(self.layer, self.hw, self.spatial, op, self.rel, source,
                                       rows, shapes[op], self.total_cycles, self.cache)
                moves_int = moves if self.same else analyse_orders(
                    self.layer, self.hw, self.spatial_int, op, self.rel, source, rows,
                    shapes[op], self.total_cycles, self.cache)
                energy, latency = self.plan.table_rows(op, moves, moves_int)
                for key, energy_row, latency_row in zip(
                        fresh, self.plan.energy_tables[op].extend(energy),
                        self.plan.latency_tables[op].extend(latency), strict=True):
                    self.rows_of[(op, key)] = (energy_row, latency_row)
            found = [self.rows_of[(op, keys[position])] for position in positions]
            self.energy_rows[op] += [rows[0] for rows in found]
            self.latency_rows[op] += [rows[1] for rows in found]

    def score(self) -> tuple[np.ndarray, np.ndarray]:
        return self.plan.score(self.energy_rows, self.latency_rows, self.total_cycles)

    def text(self, index: int) -> str:
        found = self.texts.get(index)
        if found is None:
            found = self.texts[index] = str(self.temporal(index).as_dict())
        return found

    def first_by_text(self, ranking: np.ndarray, *figures: np.ndarray) -> int:
        """The first of ``ranking`` (sorted by ``figures``) or one of its equals: the one
        whose mapping text comes first (the tie-break that keeps results deterministic)."""
        head = ranking[0]
        same = np.logical_and.reduce([f[ranking] == f[head] for f in figures])
        tied = ranking if same.all() else ranking[: int(np.argmin(same))]
        return min((int(i) for i in tied), key=lambda i: (self.text(i), i))

    def best_positions(self, ranking: np.ndarray, *figures: np.ndarray, count: int) -> list[int]:
        """The ``count`` best mappings by (figures, text)."""
        if len(ranking) > count:
            last = ranking[count - 1]
            boundary = all(f[ranking[count]] == f[last] for f in figures)
            if boundary:
                same = np.logical_and.reduce([f[ranking] == f[last] for f in figures])
                ranking = ranking[: count + int(same[count:].sum())]
            else:
                ranking = ranking[:count]
        keyed = sorted(ranking, key=lambda i: (tuple(float(f[i]) for f in figures),
                                               self.text(int(i))))
        return [int(i) for i in keyed[:count]]

    def pick(self, pool: np.ndarray, objective: str, primary: np.ndarray, energy: np.ndarray,
             latency: np.ndarray, near_tie: float, ceiling: float) -> int:
        """:func:`pick_best` over the mappings in ``pool``."""
        def first(indices: np.ndarray, *figures: np.ndarray) -> int:
            order = np.lexsort(tuple(f[indices] for f in reversed(figures)))
            return self.first_by_text(indices[order], *figures)

        best = first(pool, primary, energy, latency)
        if near_tie <= 0 or objective == "edp":
            return best
        bound = min(primary[best] * (1 + near_tie), ceiling)
        close = pool[primary[pool] <= bound]
        secondary = energy if objective == "latency" else latency
        return first(close, secondary, primary, energy, latency)


def map_layer(
    layer: Layer,
    hw: Accelerator,
    objective: str = "latency",
    constraints: MappingConstraints | None = None,
    lpf_limit: int | None = 6,
    spatial_keep: int | None = 3,
    mixed: bool = False,
    exhaustive: bool = False,
    refine: int = 0,
) -> MappingResult:
    """Best mapping of one layer: over the given spatial mapping or the best ``spatial_keep``
    candidates (None: all), and over every loop order or the given one."""
    constraints = constraints or MappingConstraints()
    given = constraints.spatial
    if given is not None and set(hw.array_sizes) <= set(given.unrollings):
        spatials = [given]
    else:  # nothing given, or some array dimensions left free: those are searched
        spatials = spatial_candidates(layer, hw, mixed=mixed, keep=spatial_keep, fixed=given)
        if given is not None:
            # ZigZag ranks completions by its own indicator (raw unroll product and
            # diversity): its picks are searched too, so kiln never misses ZigZag's answer.
            known = {str(mapping) for mapping in spatials}
            spatials += [mapping for mapping in zigzag_completions(layer, hw, given)
                         if str(mapping) not in known]
        if not spatials:
            raise MappingError(f"layer '{layer.name}': no spatial unrolling fits {hw.name}")
    results: list[tuple[Cost, str, MappingResult]] = []
    evaluated, orderings = 0, 0
    rejected: dict[str, int] = defaultdict(int)
    failures: list[str] = []
    for spatial in spatials:
        ordering = constraints.ordering or None
        try:
            result = search_temporal(
                layer,
                hw,
                spatial,
                objective,
                lpf_limit,
                ordering,
                exhaustive=exhaustive,
                refine=refine,
            )
        except MappingError as error:
            failures.append(str(error))
            continue
        evaluated += result.evaluated
        orderings += result.orderings
        for k, v in result.rejected.items():
            rejected[k] += v
        results.append((result.cost, str(spatial), result))
    if not results:
        raise MappingError(
            f"layer '{layer.name}' cannot be mapped on {hw.name}: " + " | ".join(failures)
        )
    ceiling = min(result.plain_best for _, _, result in results)
    best = pick_best(results, objective, NEAR_TIE if refine else 0.0, ceiling)[2]
    best.plain_best = ceiling
    best.evaluated, best.orderings, best.rejected = evaluated, orderings, dict(rejected)
    return best
