"""What one operand holds and moves per memory level under one mapping (ZigZag 3.9.1's
"unit memory data movement"), from its own loops: the first half of the cost model
(:mod:`kiln.hw.cost` turns it into energy and latency).

Vocabulary:

* *arch level* ``a``: 0 is the MAC array, ``a = m + 1`` is memory level ``m`` of an operand.
* a loop is *relevant* (r) to an operand when it changes which element is touched,
  *irrelevant* (ir) when it reuses the same one; a convolution input's ``OX``/``FX`` loops
  are *partially relevant* and are split into an r part (new pixels) and an ir part (reuse).
* per memory level and operand, data moves in four directions: ``rd_out_to_low``,
  ``wr_in_by_low`` (partial sums coming back), ``rd_out_to_high`` and ``wr_in_by_high``.

    >>> part = analyse_operand(layer, hw, spatial, "W", levels, total_cycles,
    ...                        relevancy(layer))                       # doctest: +SKIP
    >>> part.movement[0].count["rd_out_to_low"]                         # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.hw.accelerator import Accelerator
from kiln.hw.mapping import Loop, SpatialMapping, TemporalMapping
from kiln.hw.workload import Layer, pr_extent

DIRS = ("rd_out_to_low", "wr_in_by_low", "rd_out_to_high", "wr_in_by_high")
RD_LOW, WR_LOW, RD_HIGH, WR_HIGH = DIRS


# ---------------------------------------------------------------------------------------
# Loop relevancy
# ---------------------------------------------------------------------------------------


@dataclass
class Relevancy:
    """r / ir dims per operand, and pr dims (IX → (OX, FX)) per operand that has them."""

    r: dict[str, set[str]]
    ir: dict[str, set[str]]
    pr: dict[str, dict[str, tuple[str, str]]]
    r_split: dict[str, set[str]]  # r dims with the pr parts ("IX_r") added
    ir_split: dict[str, set[str]]  # ir dims with the pr parts ("IX_ir") added
    touching: dict[str, frozenset[str]] = field(default_factory=dict)  # change its tile
    counters: dict[str, Callable[[dict[str, float]], float]] = field(default_factory=dict)


def relevancy(layer: Layer) -> Relevancy:
    pr_loop_dims = {d for (a, _, b, _) in layer.relations.values() for d in (a, b)}
    r, ir, pr, r_split, ir_split = {}, {}, {}, {}, {}
    for op, dims in layer.operand_dims.items():
        others = [d for d in layer.sizes if d not in dims]
        if any(d in layer.relations for d in dims):
            r[op] = {d for d in dims if d not in pr_loop_dims}
            ir[op] = {d for d in others if d not in pr_loop_dims and layer.sizes[d] != 1}
            pr[op] = {t: (a, b) for t, (a, _, b, _) in layer.relations.items()}
            r_split[op] = r[op] | {f"{t}_r" for t in layer.relations}
            ir_split[op] = ir[op] | {f"{t}_ir" for t in layer.relations}
        else:
            r[op] = {d for d in dims if layer.sizes.get(d, 1) != 1}
            ir[op] = {d for d in others if layer.sizes[d] != 1}
            pr[op] = {}
            r_split[op], ir_split[op] = set(r[op]), set(ir[op])
    touching = {op: frozenset(r[op]) | {d for pair in pr[op].values() for d in pair}
                for op in layer.operand_dims}
    return Relevancy(r, ir, pr, r_split, ir_split, touching)


def pr_dim_size(layer: Layer, target: str, sizes: dict[str, float]) -> float:
    """Extent of a pr dim (IX) covered by loops of ``sizes``, capped at the real input."""
    dim_a, scale_a, dim_b, scale_b = layer.relations[target]
    extent = pr_extent(scale_a, int(sizes.get(dim_a, 1)), scale_b, int(sizes.get(dim_b, 1)))
    return min(layer.pr_sizes.get(target, extent), extent)


def tensor_elements(layer: Layer, op: str, sizes: dict[str, float], rel: Relevancy) -> float:
    """Elements of operand ``op`` touched by loops of the given sizes."""
    total = 1.0
    # In the operand's equation order, as ZigZag multiplies, not the set's: with fractional
    # sizes the product's last bit (and so a tie between allocations) would otherwise
    # depend on the hash seed.
    for dim in layer.operand_dims[op]:
        if dim in rel.r[op]:
            total *= sizes.get(dim, 1)
    for target in rel.pr[op]:
        total *= pr_dim_size(layer, target, sizes)
    return total


def tile_counter_spec(layer: Layer, op: str, rel: Relevancy) -> tuple[tuple, list[tuple]]:
    """What :func:`tensor_elements` multiplies for one operand: its relevant dims (in the
    operand's equation order) and, per pr dim, (dim a, dim b, step a, step b, cap)."""
    relevant = tuple(dim for dim in layer.operand_dims[op] if dim in rel.r[op])
    windows = []
    for target in rel.pr[op]:
        dim_a, scale_a, dim_b, scale_b = layer.relations[target]
        divisor = math.gcd(scale_a, scale_b)
        windows.append((dim_a, dim_b, scale_a // divisor, scale_b // divisor,
                        layer.pr_sizes.get(target)))
    return relevant, windows


def tile_counter(layer: Layer, op: str, rel: Relevancy) -> Callable[[dict[str, float]], float]:
    """``tensor_elements`` for one operand as a fast function of ``sizes``, with the same
    float result (the same factors multiplied in the same order): the mapper calls it for
    every prefix of every loop order."""
    relevant, windows = tile_counter_spec(layer, op, rel)

    def count(sizes: dict[str, float]) -> float:
        total = 1.0
        for dim in relevant:
            total *= sizes.get(dim, 1)
        for dim_a, dim_b, step_a, step_b, cap in windows:
            size_a, size_b = int(sizes.get(dim_a, 1)), int(sizes.get(dim_b, 1))
            extent = size_a * size_b - max(0, size_b - step_a) * (size_a - step_b)
            total *= extent if cap is None else min(cap, extent)
        return total

    return count


def split_pr_loops(
    layer: Layer, op: str, levels: list[list[Loop]], rel: Relevancy
) -> list[list[Loop]]:
    """Replace each pr loop (OX) by its r part (new IX) and its ir part (reuse), bottom-up."""
    if not rel.pr[op]:
        return levels
    cumulative = {t: {a: 1.0, b: 1.0} for t, (a, b) in rel.pr[op].items()}
    previous_size = {t: 1.0 for t in rel.pr[op]}
    previous_reuse = {t: 1.0 for t in rel.pr[op]}
    result = []
    for level in levels:
        new_level: list[Loop] = []
        for dim, size in level:
            target = next((t for t, pair in rel.pr[op].items() if dim in pair), None)
            if target is None or dim in rel.r[op] or dim in rel.ir[op]:
                new_level.append((dim, size))
                continue
            cumulative[target][dim] *= size
            data = pr_dim_size(layer, target, cumulative[target])
            reuse = math.prod(cumulative[target].values()) / data
            new_level.append((f"{target}_r", data / previous_size[target]))
            new_level.append((f"{target}_ir", reuse / previous_reuse[target]))
            previous_size[target], previous_reuse[target] = data, reuse
        result.append(new_level)
    return result


# ---------------------------------------------------------------------------------------
# Spatial mapping per operand and arch level
# ---------------------------------------------------------------------------------------


def spatial_per_level(
    layer: Layer, hw: Accelerator, spatial: SpatialMapping, op: str
) -> list[list[Loop]]:
    """Spatial loops of each arch level of ``op``: a memory's served dims unroll below it."""
    memories = hw.levels(layer.links[op])
    remaining = {oa: d for oa, d in spatial.unrollings.items()}
    levels: list[list[Loop]] = []
    for memory in memories:
        merged: dict[str, float] = {}
        for oa in memory.served_dimensions:
            if oa in remaining:
                for dim, factor in remaining.pop(oa).items():
                    merged[dim] = merged.get(dim, 1) * factor
        levels.append(list(merged.items()))
    top: dict[str, float] = {}
    for per_dim in remaining.values():
        for dim, factor in per_dim.items():
            top[dim] = top.get(dim, 1) * factor
    levels.append(list(top.items()))
    return levels


@dataclass
class SpatialCounts:
    unit_count: list[float]
    unit_unique: list[float]
    bw_boost: list[float]


def spatial_counts(
    layer: Layer, op: str, levels: list[list[Loop]], rel: Relevancy
) -> SpatialCounts:
    """Instances per arch level (all; holding distinct data) and bandwidth boost between levels."""
    split = split_pr_loops(layer, op, levels, rel)
    n = len(levels)
    size_r = [math.prod(f for d, f in lv if d in rel.r_split[op]) for lv in split]
    size_total = [math.prod(f for _, f in lv) for lv in split]
    unit_count = [round(round(math.prod(size_total[a:]), 3)) for a in range(n)]
    unit_unique = [math.prod(size_r[a:]) for a in range(n)]
    bw_boost = [round(unit_unique[a] / unit_unique[a + 1]) for a in range(n - 1)]
    return SpatialCounts(unit_count, unit_unique, bw_boost)


# ---------------------------------------------------------------------------------------
# Temporal mapping: stationarity
# ---------------------------------------------------------------------------------------


def merge_stationary_loops(
    levels: list[list[Loop]], irrelevant: set[str]
) -> tuple[list[list[Loop]], int]:
    """Move the ir loops at the bottom of each memory level down to the level below (they
    re-read the same data, which the lower level already holds), until nothing moves.
    Returns the new levels and the MAC-level stationarity (ir loops at the very bottom)."""
    current = [list(lv) for lv in levels]
    while True:
        merged: list[list[Loop]] = [[] for _ in current]
        mac_stationary = 1
        for index, level in enumerate(current):
            position = 0
            while position < len(level) and level[position][0] in irrelevant:
                loop = level[position]
                if index == 0:
                    mac_stationary *= loop[1]
                    merged[0].append(loop)
                else:
                    merged[index - 1].append(loop)
                position += 1
            merged[index].extend(level[position:])
        if merged == current:
            return merged, mac_stationary
        current = merged


def operand_key(levels: tuple[tuple[Loop, ...], ...], relevant: set[str],
                irrelevant: set[str]) -> tuple:
    """What one operand's analysis depends on: per level (after its stationary ir loops
    move down) the multiset of loops and the products of the outermost r and ir runs, and
    the stationarity at the MACs."""
    merged, mac_stationary = merge_stationary_loops([list(lv) for lv in levels], irrelevant)
    return (mac_stationary, tuple((tuple(sorted(lv)), top_loop_product(lv, relevant),
                                   top_loop_product(lv, irrelevant)) for lv in merged))


def top_loop_product(level: list[Loop], dims: set[str]) -> float:
    """Product of the outermost loops of a level that all belong to ``dims``."""
    product = 1
    for dim, size in reversed(level):
        if dim not in dims:
            break
        product *= size
    return product


# ---------------------------------------------------------------------------------------
# Data movement per operand and memory level (ZigZag's "unit memory data movement")
# ---------------------------------------------------------------------------------------


@dataclass
class Movement:
    """Per direction: words per period, bits per word, period (cycles), periods, average
    and instantaneous bandwidth (bits/cycle), instantaneous window (cycles)."""

    amount: dict[str, float]
    precision: dict[str, int]
    period: dict[str, int]
    count: dict[str, int]
    bw_avg: dict[str, int]
    window: dict[str, int]


@dataclass
class Analysis:
    """Everything the cost terms need about one (layer, spatial, temporal) combination."""

    levels: dict[str, int]  # memory levels per operand
    total_cycles: float
    unit_count: dict[str, list[float]]
    data_bits_unrolled: dict[str, list[float]]
    effective_bits: dict[str, list[float]]
    movement: dict[str, list[Movement]]
    parts: dict[str, OperandAnalysis] = field(default_factory=dict)


def spatial_info(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    rel: Relevancy,
    cache: dict | None = None,
) -> tuple[dict[str, list[list[Loop]]], dict[str, SpatialCounts]]:
    """Spatial loops per arch level and instance counts of every operand (cached)."""
    key = id(spatial)
    if cache is not None and key in cache:
        return cache[key]
    levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
    counts = {op: spatial_counts(layer, op, levels[op], rel) for op in layer.operands}
    if cache is not None:
        cache[key] = (levels, counts)
    return levels, counts


@dataclass
class OperandAnalysis:
    unit_count: list[float]
    data_bits_unrolled: list[float]
    effective_bits: list[float]
    movement: list[Movement]
    accesses: list[dict[str, int]] | None = None  # filled by memory_accesses, once


def analyse_operand(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    op: str,
    levels: tuple[tuple[Loop, ...], ...],
    total_cycles: float,
    rel: Relevancy,
    cache: dict | None = None,
) -> OperandAnalysis:
    """Data held and moved per memory level of one operand (from its own loops only)."""
    out = layer.output
    n_levels = len(levels)
    n_arch = n_levels + 1
    stationary, mac_st = merge_stationary_loops([list(lv) for lv in levels], rel.ir[op])
    top_r = [1] + [top_loop_product(lv, rel.r[op]) for lv in stationary]
    top_ir = [1] + [top_loop_product(lv, rel.ir[op]) for lv in stationary]
    cycles_cabl, running = [], 1
    for lv in stationary:
        running *= math.prod(s for _, s in lv)
        cycles_cabl.append(running)
    su_levels, counts = spatial_info(layer, hw, spatial, rel, cache)

    # Combined loops per arch level: level a holds memory a-1's temporal loops plus the
    # spatial loops of arch level a ("1s1t"); "1s2t" puts arch level a-1's spatial loops
    # under memory a-1's temporal loops (data held *per instance*).
    tm = [[]] + stationary + [[]]
    combined_1s1t = split_pr_loops(
        layer, op, [tm[a] + su_levels[op][a] for a in range(n_arch)], rel
    )
    combined_1s2t = split_pr_loops(
        layer, op, [[]] + [tm[a + 1] + su_levels[op][a] for a in range(n_arch)], rel
    )

    if op == out:
        # Partial-sum flags: a memory level holds partial outputs when an ir loop of the
        # output sits at or above it.
        has_ir = [
            any(d in rel.ir_split[op] and s > 1 for d, s in combined_1s1t[a]) for a in range(n_arch)
        ]
        psum = [any(has_ir[m + 1 :]) for m in range(n_arch - 1)] + [False]
        precision = [
            layer.precision["O"] if psum[m] else layer.precision["O_final"] for m in range(n_arch)
        ]
    else:
        psum = [False] * n_arch
        precision = [layer.precision[op]] * n_arch

    r_lv2 = [
        math.prod(s for d, s in combined_1s2t[a] if d in rel.r_split[op]) for a in range(n_arch)
    ]
    data_elem = [round(round(math.prod(r_lv2[: a + 1]))) for a in range(n_arch)]
    data_bits = [data_elem[a] * precision[a] for a in range(n_arch)]
    eff_bits = [data_bits[a] // top_r[a] for a in range(n_arch)]
    if op == out:
        ir_lv = [
            math.prod(s for d, s in combined_1s1t[a] if d in rel.ir_split[op])
            for a in range(n_arch)
        ]
        ir_caal_out = [math.prod(ir_lv[a:]) for a in range(n_arch)] + [1, 1]
        out_size = tensor_elements(layer, out, layer.sizes, rel)

    cycles_each = ([mac_st] if op != out else [1]) + cycles_cabl
    boost = counts[op].bw_boost + [1]
    req_low = [data_elem[a] * precision[a] / cycles_each[a] for a in range(n_arch)]
    req_high = [req_low[a] * boost[a] for a in range(n_arch)]
    moves = []
    for m in range(n_levels):
        amount = {RD_LOW: 0.0, WR_LOW: 0.0, RD_HIGH: 0.0, WR_HIGH: 0.0}
        prec = {RD_LOW: 0, WR_LOW: 0, RD_HIGH: 0, WR_HIGH: 0}
        period = {RD_LOW: 0, WR_LOW: 0, RD_HIGH: 0, WR_HIGH: 0}
        count = {RD_LOW: 0, WR_LOW: 0, RD_HIGH: 0, WR_HIGH: 0}
        bw_avg = {RD_LOW: 0, WR_LOW: 0, RD_HIGH: 0, WR_HIGH: 0}
        low = (int(req_high[m]), int(cycles_each[m]), int(total_cycles // cycles_each[m]))
        high = (
            int(req_low[m + 1]),
            int(cycles_each[m + 1]),
            int(total_cycles // cycles_each[m + 1]),
        )
        if op != out:
            bw_avg[RD_LOW], period[RD_LOW], count[RD_LOW] = low
            amount[RD_LOW] = data_elem[m] * boost[m]
            bw_avg[WR_HIGH], period[WR_HIGH], count[WR_HIGH] = high
            amount[WR_HIGH] = data_elem[m + 1]
            prec[RD_LOW] = prec[WR_HIGH] = layer.precision[op]
        else:
            bw_avg[WR_LOW], period[WR_LOW], count[WR_LOW] = low
            amount[WR_LOW] = int(data_elem[m] * boost[m])
            bw_avg[RD_HIGH], period[RD_HIGH], count[RD_HIGH] = high
            amount[RD_HIGH] = data_elem[m + 1]
            if psum[m]:
                bw_avg[RD_LOW], period[RD_LOW], count[RD_LOW] = low
                amount[RD_LOW] = amount[WR_LOW]
            if psum[m + 1]:
                bw_avg[WR_HIGH], period[WR_HIGH], count[WR_HIGH] = high
                amount[WR_HIGH] = amount[RD_HIGH]
            reads_back = int(out_size * (ir_caal_out[m + 1] - 1)) != 0
            writes_back = int(out_size * (ir_caal_out[m + 2] - 1)) != 0
            prec[WR_LOW] = layer.precision["O"] if reads_back else layer.precision["O_final"]
            prec[RD_LOW] = layer.precision["O"] if reads_back else 0
            prec[WR_HIGH] = layer.precision["O"] if writes_back else 0
            prec[RD_HIGH] = layer.precision["O"] if writes_back else layer.precision["O_final"]
        scale = {
            RD_LOW: int(top_ir[m]),
            WR_LOW: int(top_ir[m]),
            RD_HIGH: int(top_ir[m + 1]),
            WR_HIGH: int(top_ir[m + 1]),
        }
        window = {d: int(period[d] / scale[d]) for d in DIRS}
        if m == n_levels - 1:
            # Traffic between the top memory and the outside world is not counted.
            for d in (RD_HIGH, WR_HIGH):
                amount[d] = prec[d] = period[d] = count[d] = bw_avg[d] = window[d] = 0
        moves.append(Movement(amount, prec, period, count, bw_avg, window))
    return OperandAnalysis(counts[op].unit_count, data_bits, eff_bits, moves)


def analyse(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    temporal: TemporalMapping,
    rel: Relevancy,
    cache: dict | None = None,
) -> Analysis:
    """Per operand and memory level: instances, data held, and the four-way data movement
    (with a ``cache``, each operand's analysis is worked out once per operand key)."""
    total_cycles = math.prod(s for level in temporal.loops[layer.output] for _, s in level)
    parts = {}
    for op in layer.operands:
        levels = temporal.loops[op]
        if cache is None:
            parts[op] = analyse_operand(layer, hw, spatial, op, levels, total_cycles, rel)
            continue
        # Orders that differ only inside a level's runs give one operand the same analysis.
        key = ("operand", id(spatial), op, total_cycles,
               operand_key(levels, rel.r[op], rel.ir[op]))
        part = cache.get(key)
        if part is None:
            part = cache[key] = analyse_operand(layer, hw, spatial, op, levels, total_cycles,
                                                rel, cache)
        parts[op] = part
    return Analysis(
        levels={op: len(temporal.loops[op]) for op in layer.operands},
        total_cycles=total_cycles,
        unit_count={op: p.unit_count for op, p in parts.items()},
        data_bits_unrolled={op: p.data_bits_unrolled for op, p in parts.items()},
        effective_bits={op: p.effective_bits for op, p in parts.items()},
        movement={op: p.movement for op, p in parts.items()},
        parts=parts,
    )
