"""Spatial candidates: which layer dims unroll over which array dimensions.

Every unrolling of layer dims over the array dims (one dim per array dim, or two when
``mixed``) is ranked by the array's real utilization, so a 56-wide loop on a 32-wide
dimension counts as 28/32 used; a user's partial spatial mapping keeps its dimensions and
has the others searched (with ZigZag's own completions among the candidates).

    >>> candidates = spatial_candidates(layer, hw, keep=3)        # doctest: +SKIP
    >>> [str(mapping) for mapping in candidates]                   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np

from kiln.hw.accelerator import Accelerator
from kiln.hw.mapping import SpatialMapping, max_unrolling
from kiln.hw.workload import Layer


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
