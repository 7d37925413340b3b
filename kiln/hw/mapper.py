"""The mapper: best spatial unrolling and temporal loop order for a layer on an accelerator.

Spatial search enumerates every unrolling of layer dims over the array dims (one dim per
array dim, or mixed unrollings when asked), ranked by the array's real utilization, so a
56-wide loop on a 32-wide dimension counts as 28/32 used. Temporal search enumerates the
orders of the loops' prime factors (LOMA: loop-order-based memory allocation) and gives
each order its memory levels bottom-up, each memory taking the loops that minimise the
traffic to the level above. Orders that give the same allocated mapping are evaluated
once; ties are broken by (objective, energy, latency, mapping text) so results never
depend on enumeration order or hash seeds.

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
from kiln.hw.allocation import OrderBatch, all_allocations, allocate_order_batch
from kiln.hw.cost import (
    Cost,
    MappingError,
    Relevancy,
    evaluate,
    operand_key,
    relevancy,
    tensor_elements,
)
from kiln.hw.cost_batch import BatchPlan
from kiln.hw.mapping import (
    Loop,
    MappingConstraints,
    SpatialMapping,
    TemporalMapping,
    fit_spatial,
    max_unrolling,
    temporal_loop_sizes,
)
from kiln.hw.mapping_keys import KeyCoder, OperandShape
from kiln.hw.operand_batch import analyse_orders
from kiln.hw.orders import order_space
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
# Spatial candidates
# ---------------------------------------------------------------------------------------


def spatial_candidates(
    layer: Layer, hw: Accelerator, mixed: bool = False, keep: int | None = None,
    fixed: SpatialMapping | None = None,
) -> list[SpatialMapping]:
    """Every valid unrolling, best array utilization first (ties broken by the text).

    ``fixed`` holds a user's unrollings of some array dimensions: those stay as given and
    only the others are searched (ZigZag completes a partial spatial mapping the same way).
    """
    limits = max_unrolling(layer, hw)
    given = fixed.unrollings if fixed is not None else {}
    per_oa: list[list[dict[str, int]]] = []
    for oa, size in hw.array_sizes.items():
        if oa in given:
            # Clamped to the layer here only to rank; fit_spatial applies ZigZag's reduction.
            per_oa.append([{d: min(int(f), layer.sizes[d]) for d, f in given[oa].items()
                            if d in layer.sizes}])
            continue
        options: list[dict[str, int]] = [{}]
        for dim in layer.sizes:
            top = limits[oa][dim]
            for factor in range(2, top + 1):
                options.append({dim: factor})
        if mixed:
            dims = [d for d in layer.sizes if limits[oa][d] > 1]
            for a, b in itertools.combinations(dims, 2):
                for fa in range(2, limits[oa][a] + 1):
                    for fb in range(2, limits[oa][b] + 1):
                        if fa * fb <= size:
                            options.append({a: fa, b: fb})
        per_oa.append(options)
    names = list(hw.array_sizes)
    # Only the best `keep` are wanted: mappings (and their text, the tie-break) are built
    # for those and whatever ties with the last of them, not for every combination.
    scored = _score_spatial(layer, per_oa, hw.total_units, keep)
    ranked = []
    for utilization, combo in scored:
        mapping = SpatialMapping({oa: dict(given[oa]) if oa in given else dict(pd)
                                  for oa, pd in zip(names, combo, strict=False)
                                  if pd or oa in given})
        ranked.append((utilization, str(mapping), mapping))
    ranked.sort(key=lambda item: (item[0], item[1]))
    mappings = [m for _, _, m in ranked]
    return mappings[:keep] if keep else mappings


def _score_spatial(layer: Layer, per_oa: list[list[dict[str, int]]], total_units: int,
                   keep: int | None = None) -> list[tuple[float, tuple]]:
    """(−utilization, combination) of every combination of per-array-dimension options that
    fits the layer (with ``keep``: only those scoring at least as well as the keep-th best),
    computed over all combinations at once with numpy. Utilization counts what a dim that
    does not divide wastes: it runs ceil(size/unroll) steps.

    The array dimension with the most options is not expanded into the grid of the others'
    combinations: each of its options changes one dim's factor, so its effect on the
    integer products is worked out per (combination of the others, option) directly."""
    dims = list(layer.sizes)
    sizes, tables = _option_tables(layer, per_oa)
    single = [k for k, options in enumerate(per_oa)
              if all(not o or (len(o) == 1 and next(iter(o.values())) > 1) for o in options)]
    if not single:
        return _score_spatial_grid(per_oa, tables, sizes, total_units, keep)
    big = max(single, key=lambda k: (len(per_oa[k]), -k))
    others = [k for k in range(len(per_oa)) if k != big]
    grids = np.meshgrid(*[np.arange(len(tables[k])) for k in others], indexing="ij")
    rest = [g.reshape(-1) for g in grids] if others else []
    count = rest[0].size if rest else 1
    factors = np.ones((count, len(dims)), dtype=np.int64)
    for k, index in zip(others, rest, strict=True):
        factors *= tables[k][index]
    unrolled = factors > 1
    fits_rest = (factors <= sizes).all(axis=1)
    num_rest = np.where(unrolled, sizes, 1).prod(axis=1)
    steps_rest = np.where(unrolled, -(-sizes // factors), 1).prod(axis=1)
    # The big dimension's options: the dim each unrolls (-1: none) and its factor.
    option_dim = np.array([dims.index(next(iter(o))) if o else -1 for o in per_oa[big]])
    option_factor = np.array([next(iter(o.values())) if o else 1 for o in per_oa[big]])
    column = np.maximum(option_dim, 0)
    before = factors[:, column]  # [rest, option] the dim's factor before the option
    after = before * option_factor
    size = sizes[column]
    has_dim = option_dim >= 0
    num = num_rest[:, None] * np.where(has_dim & (before == 1), size, 1)
    old_steps = np.where(before > 1, -(-size // before), 1)
    steps = np.where(has_dim, steps_rest[:, None] // old_steps * -(-size // after),
                     steps_rest[:, None])
    fits = fits_rest[:, None] & np.where(has_dim, after <= size, unrolled.any(axis=1)[:, None])
    if not fits.any():  # every loop of size 1 (a 1x1 tile): it runs on one unit
        fits = (~unrolled.any(axis=1))[:, None] & ~has_dim[None, :]
    scores = -(num.astype(np.float64) / steps.astype(np.float64)) / total_units
    kept = np.nonzero(fits.reshape(-1))[0]
    flat = scores.reshape(-1)
    if keep and kept.size > keep:
        cutoff = np.partition(flat[kept], keep - 1)[keep - 1]
        kept = kept[flat[kept] <= cutoff]
    result = []
    for i in kept:
        row, option = divmod(int(i), len(per_oa[big]))
        combo = [None] * len(per_oa)
        combo[big] = per_oa[big][option]
        for k, index in zip(others, rest, strict=True):
            combo[k] = per_oa[k][int(index[row])]
        result.append((float(flat[i]), tuple(combo)))
    return result


def _option_tables(layer: Layer, per_oa: list[list[dict[str, int]]]
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The layer's dim sizes, and per array dimension its options as rows of per-dim
    factors (1 where an option does not unroll the dim)."""
    dims = list(layer.sizes)
    tables = []
    for options in per_oa:
        table = np.ones((len(options), len(dims)), dtype=np.int64)
        for row, option in enumerate(options):
            for dim, factor in option.items():
                table[row, dims.index(dim)] = factor
        tables.append(table)
    return np.array([layer.sizes[d] for d in dims], dtype=np.int64), tables


def _score_spatial_grid(per_oa: list[list[dict[str, int]]], tables: list[np.ndarray],
                        sizes: np.ndarray, total_units: int,
                        keep: int | None) -> list[tuple[float, tuple]]:
    """_score_spatial over the whole grid of combinations (when every array dimension has
    options that unroll two dims at once)."""
    grids = np.meshgrid(*[np.arange(len(t)) for t in tables], indexing="ij")
    indices = [g.reshape(-1) for g in grids]
    factors = np.ones((indices[0].size, len(sizes)), dtype=np.int64)
    for table, index in zip(tables, indices, strict=True):
        factors *= table[index]
    unrolled = factors > 1
    fits = (factors <= sizes).all(axis=1) & unrolled.any(axis=1)
    if not fits.any():  # every loop of size 1 (a 1x1 tile): it runs on one unit
        fits = ~unrolled.any(axis=1)
    steps = np.where(unrolled, -(-sizes // factors), 1).prod(axis=1).astype(np.float64)
    ideal = np.where(unrolled, sizes, 1).prod(axis=1).astype(np.float64) / steps
    scores = -ideal / total_units
    kept = np.nonzero(fits)[0]
    if keep and kept.size > keep:
        cutoff = np.partition(scores[kept], keep - 1)[keep - 1]
        kept = kept[scores[kept] <= cutoff]
    return [(float(scores[i]), tuple(per_oa[k][int(indices[k][i])] for k in range(len(per_oa))))
            for i in kept]


def zigzag_completions(layer: Layer, hw: Accelerator, fixed: SpatialMapping,
                       keep: int = 3) -> list[SpatialMapping]:
    """The ``keep`` completions of a partial spatial mapping that ZigZag 3.9 would try: one
    layer dim per free array dimension at a divisor of its largest unrolling, ranked by
    ZigZag's performance indicator (unroll product plus a diversity term)."""
    limits = max_unrolling(layer, hw)
    given = {oa: {d: min(int(f), limits[oa][d]) for d, f in per_dim.items() if d in layer.sizes}
             for oa, per_dim in fixed.unrollings.items() if oa in hw.array_sizes}
    free = [oa for oa in hw.array_sizes if oa not in fixed.unrollings]
    options = [[(dim, factor) for dim in layer.sizes
                for factor in range(limits[oa][dim], 0, -1) if limits[oa][dim] % factor == 0]
               for oa in free]
    ranked = []
    for combo in itertools.product(*options):
        totals: dict[str, int] = defaultdict(lambda: 1)
        for per_dim in given.values():
            for dim, factor in per_dim.items():
                totals[dim] *= factor
        for dim, factor in combo:
            totals[dim] *= factor
        if any(total > layer.sizes[dim] for dim, total in totals.items()):
            continue
        product = math.prod(totals.values())
        indicator = product + product / max(totals.values()) - 1
        mapping = SpatialMapping({**{oa: dict(pd) for oa, pd in fixed.unrollings.items()},
                                  **{oa: {dim: factor} for oa, (dim, factor)
                                     in zip(free, combo, strict=True) if factor > 1}})
        ranked.append((-indicator, str(mapping), mapping))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [mapping for _, _, mapping in ranked[:keep]]


# ---------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------


def canonical_key(
    temporal: TemporalMapping, rel: Relevancy, roomy_top: frozenset[str] = frozenset(),
    operand_keys: dict[str, tuple] | None = None,
) -> tuple:
    """What the cost depends on: per operand and level (after stationary ir loops move down)
    the multiset of loops and the products of the outermost r and ir runs. Orders with the
    same key cost exactly the same, so only one of them is evaluated.

    In a top memory that can hold the whole layer twice over (``roomy_top``: it is always
    double-buffered) the outermost runs matter neither, so only the multiset is kept.
    ``operand_keys``: each operand's :func:`kiln.hw.cost.operand_key`, when already known."""
    parts = []
    for op, levels in sorted(temporal.loops.items()):
        mac_stationary, per_level = (operand_keys[op] if operand_keys is not None else
                                     operand_key(levels, rel.r[op], rel.ir[op]))
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
    from kiln.hw.cost import spatial_per_level

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
