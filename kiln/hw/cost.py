"""The cost of one layer on one accelerator under one mapping (ZigZag 3.9.1's model).

Written as the equations it implements, one term per function. Vocabulary:

* *arch level* ``a``: 0 is the MAC array, ``a = m + 1`` is memory level ``m`` of an operand.
* a loop is *relevant* (r) to an operand when it changes which element is touched,
  *irrelevant* (ir) when it reuses the same one; a convolution input's ``OX``/``FX`` loops
  are *partially relevant* and are split into an r part (new pixels) and an ir part (reuse).
* per memory level and operand, data moves in four directions: ``rd_out_to_low``,
  ``wr_in_by_low`` (partial sums coming back), ``rd_out_to_high`` and ``wr_in_by_high``.

Energy = MAC energy + Σ accesses × access energy, where accesses per level and direction
= ⌈words per period × bits / min bandwidth⌉ × min/max bandwidth × periods × instances.
Latency = temporal cycles + stalls (per port: transfers slower than their allowed window,
with double buffering where a level can hold two tiles) + on-loading + off-loading +
systolic drain.

    >>> from kiln.hw.cost import evaluate                      # doctest: +SKIP
    >>> cost = evaluate(layer, hw, spatial, temporal)           # doctest: +SKIP
    >>> cost.energy_pj, cost.latency_cycles                     # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kiln.errors import KilnError
from kiln.hw.accelerator import Accelerator, Port
from kiln.hw.mapping import Loop, SpatialMapping, TemporalMapping
from kiln.hw.workload import Layer, pr_extent

DIRS = ("rd_out_to_low", "wr_in_by_low", "rd_out_to_high", "wr_in_by_high")
RD_LOW, WR_LOW, RD_HIGH, WR_HIGH = DIRS


class MappingError(KilnError):
    """A mapping that cannot run on the accelerator (it overflows a memory, misses a port)."""


@dataclass
class Cost:
    """Energy (pJ), latency (cycles), utilization and their breakdowns for one layer."""

    layer: str
    energy_pj: float
    mac_energy_pj: float
    latency_cycles: float
    ideal_cycles: int
    temporal_cycles: float
    stall_cycles: float
    onload_cycles: float
    offload_cycles: float
    drain_cycles: int
    spatial_utilization: float
    utilization: float
    energy_by_level: dict[str, dict[str, float]] = field(default_factory=dict)
    accesses: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    spatial: str = ""
    temporal: dict = field(default_factory=dict)

    @property
    def edp(self) -> float:
        return self.energy_pj * self.latency_cycles

    def as_dict(self) -> dict:
        return {
            "layer": self.layer,
            "energy_pj": self.energy_pj,
            "mac_energy_pj": self.mac_energy_pj,
            "latency_cycles": self.latency_cycles,
            "ideal_cycles": self.ideal_cycles,
            "temporal_cycles": self.temporal_cycles,
            "stall_cycles": self.stall_cycles,
            "onload_cycles": self.onload_cycles,
            "offload_cycles": self.offload_cycles,
            "drain_cycles": self.drain_cycles,
            "spatial_utilization": self.spatial_utilization,
            "utilization": self.utilization,
            "energy_by_level": self.energy_by_level,
            "spatial_mapping": self.spatial,
            "temporal_mapping": self.temporal,
        }


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


def analysis_parts(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    temporal: TemporalMapping,
    rel: Relevancy,
    cache: dict | None = None,
    operand_keys: dict[str, tuple] | None = None,
    total_cycles: float | None = None,
) -> dict[str, OperandAnalysis]:
    """Each operand's analysis under one mapping (memoized in ``cache`` per operand key)."""
    if total_cycles is None:
        total_cycles = math.prod(s for level in temporal.loops[layer.output] for _, s in level)
    parts = {}
    for op in layer.operands:
        levels = temporal.loops[op]
        if cache is None:
            parts[op] = analyse_operand(layer, hw, spatial, op, levels, total_cycles, rel)
            continue
        # Orders that differ only inside a level's runs give one operand the same analysis
        # (what canonical_key relies on for whole mappings): worked out once per search.
        known = operand_keys.get(op) if operand_keys is not None else None
        key = ("operand", id(spatial), op, total_cycles,
               known if known is not None else operand_key(levels, rel.r[op], rel.ir[op]))
        part = cache.get(key)
        if part is None:
            part = cache[key] = analyse_operand(layer, hw, spatial, op, levels, total_cycles,
                                                rel, cache)
        parts[op] = part
    return parts


def analyse(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    temporal: TemporalMapping,
    rel: Relevancy,
    cache: dict | None = None,
    operand_keys: dict[str, tuple] | None = None,
) -> Analysis:
    """Per operand and memory level: instances, data held, and the four-way data movement."""
    total_cycles = math.prod(s for level in temporal.loops[layer.output] for _, s in level)
    parts = analysis_parts(layer, hw, spatial, temporal, rel, cache, operand_keys, total_cycles)
    return Analysis(
        levels={op: len(temporal.loops[op]) for op in layer.operands},
        total_cycles=total_cycles,
        unit_count={op: p.unit_count for op, p in parts.items()},
        data_bits_unrolled={op: p.data_bits_unrolled for op, p in parts.items()},
        effective_bits={op: p.effective_bits for op, p in parts.items()},
        movement={op: p.movement for op, p in parts.items()},
        parts=parts,
    )


# ---------------------------------------------------------------------------------------
# Energy terms
# ---------------------------------------------------------------------------------------


def mac_energy(layer: Layer, hw: Accelerator) -> float:
    """MAC energy = energy per MAC × MACs (padding MACs included, as ZigZag counts them)."""
    return hw.unit_energy * layer.macs


def word_accesses(
    move: Movement, direction: str, bandwidth: tuple[int, int] | None, instances: float, where: str
) -> int:
    """Memory word accesses in one direction: words per period rounded up to whole minimum-width
    words, scaled to the maximum port width, times periods and instances."""
    amount, bits, periods = move.amount[direction], move.precision[direction], move.count[direction]
    if amount == 0 or bits == 0:
        return 0
    if bandwidth is None:
        raise MappingError(
            f"{where}: no port serves {direction}, but the mapping moves data that way"
        )
    bw_min, bw_max = bandwidth
    return int(math.ceil(amount * bits / bw_min) * (bw_min / bw_max) * periods * instances)


def memory_accesses_of(
    layer: Layer, hw: Accelerator, op: str, part: OperandAnalysis
) -> list[dict[str, int]]:
    """Word accesses per memory level and direction of one operand's analysis (kept on
    the analysis: the same analysis, the same accesses)."""
    if part.accesses is not None:
        return part.accesses
    mem_op = layer.links[op]
    per_level = []
    for m, memory in enumerate(hw.levels(mem_op)[: len(part.movement)]):
        move = part.movement[m]
        instances = part.unit_count[m + 1]
        per_level.append(
            {
                d: word_accesses(
                    move, d, memory.bandwidth(mem_op, d), instances, f"{memory.name} ({mem_op})"
                )
                for d in DIRS
            }
        )
    part.accesses = per_level
    return per_level


def memory_accesses(
    layer: Layer, hw: Accelerator, analysis: Analysis
) -> dict[str, list[dict[str, int]]]:
    return {op: memory_accesses_of(layer, hw, op, analysis.parts[op]) for op in layer.operands}


def memory_energy(
    layer: Layer, hw: Accelerator, accesses: dict[str, list[dict[str, int]]]
) -> dict[str, dict[str, float]]:
    """Energy per memory and operand: reads × read energy + writes × write energy."""
    breakdown: dict[str, dict[str, float]] = {}
    for op, per_level in accesses.items():
        for memory, counts in zip(hw.levels(layer.links[op]), per_level, strict=False):
            reads = counts[RD_LOW] + counts[RD_HIGH]
            writes = counts[WR_LOW] + counts[WR_HIGH]
            energy = reads * memory.read_energy + writes * memory.write_energy
            breakdown.setdefault(memory.name, {})[op] = (
                breakdown.get(memory.name, {}).get(op, 0.0) + energy
            )
    return breakdown


# ---------------------------------------------------------------------------------------
# Latency terms
# ---------------------------------------------------------------------------------------


def utilization(layer: Layer, hw: Accelerator, analysis: Analysis) -> tuple[dict, dict, dict, dict]:
    """Per operand and memory level: fraction of the memory its data (and effective data) fills,
    alone and together with the operands sharing that memory."""
    individual, effective = {}, {}
    for op in layer.operands:
        sizes = [m.size_bits for m in hw.levels(layer.links[op])]
        individual[op] = [
            analysis.data_bits_unrolled[op][m + 1] / sizes[m] for m in range(analysis.levels[op])
        ]
        effective[op] = [
            analysis.effective_bits[op][m + 1] / sizes[m] for m in range(analysis.levels[op])
        ]
    shared = {op: list(v) for op, v in individual.items()}
    effective_shared = {op: list(v) for op, v in effective.items()}
    mem_to_layer = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    for group in hw.sharing_groups():
        members = [(mem_to_layer[mem], lv) for mem, lv in group.items() if mem in mem_to_layer]
        total = sum(individual[op][lv] for op, lv in members)
        total_effective = sum(effective[op][lv] for op, lv in members)
        for op, lv in members:
            shared[op][lv] = total
            effective_shared[op][lv] = total_effective
    return individual, shared, effective, effective_shared


def double_buffered(layer: Layer, hw: Accelerator, analysis: Analysis) -> dict[str, list[bool]]:
    """A level can double-buffer when its effective data fits in the half (or the room) left."""
    _, _, effective, effective_shared = utilization(layer, hw, analysis)
    mem_to_layer = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    groups = hw.sharing_groups()
    flags = {}
    for op in layer.operands:
        flags[op] = [False]
        for lv in range(analysis.levels[op]):
            if effective_shared[op][lv] <= 0.5:
                flags[op].append(True)
            elif effective[op][lv] <= 1 - effective_shared[op][lv]:
                flags[op].append(True)
                group = next((g for g in groups if g.get(layer.links[op]) == lv), None)
                for mem, mem_lv in (group or {}).items():
                    if mem in mem_to_layer:
                        effective_shared[mem_to_layer[mem]][mem_lv] += effective[op][lv]
            else:
                flags[op].append(False)
    return flags


@dataclass
class PortActivity:
    real: int
    allowed: int
    period: int
    count: int
    key: str

    @property
    def stall(self) -> int:
        return (self.real - self.allowed) * (self.count - 1)

    @property
    def window_total(self) -> int:
        return self.allowed * (self.count - 1)


def real_transfer_cycles(move: Movement, direction: str, bandwidth: tuple[int, int] | None) -> int:
    """Cycles one period's transfer takes at the port's full width."""
    if not bandwidth:
        return 0
    return math.ceil(move.amount[direction] * move.precision[direction] / bandwidth[1])


def allowed_transfer_cycles(
    move: Movement, direction: str, buffered_here: bool, buffered_above: bool
) -> int:
    """Cycles a transfer may take without stalling: the whole period when double-buffered,
    else the window left after the outermost ir loops."""
    buffered = buffered_above if direction in (RD_HIGH, WR_HIGH) else buffered_here
    return int(move.period[direction] if buffered else move.window[direction])


def updating_window_union(activities: list[PortActivity]) -> int:
    """Cycles during which at least one of the movements sharing a port may update memory."""
    for activity in activities:
        if activity.period == activity.allowed:
            return activity.period * activity.count
    longest = max(activities, key=lambda a: a.period)
    busy = np.zeros(longest.period, dtype=bool)
    for activity in activities:
        view = busy.reshape(-1, activity.period)
        view[:, : activity.allowed] = True
    return int(busy.sum()) * longest.count


def port_stalls(
    layer: Layer, hw: Accelerator, analysis: Analysis, flags: dict[str, list[bool]]
) -> tuple[float, dict[tuple[str, int, str], int]]:
    """Stall cycles: per port, the sum of its movements' stalls minus the slack they can share;
    ports work in parallel, so the worst port counts."""
    mem_to_layer = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    real_cycles: dict[tuple[str, int, str], int] = {}
    worst = 0
    for _memory, port, entries in hw.port_table():
        activities = []
        for mem_op, direction, level in entries:
            op = mem_to_layer.get(mem_op)
            if op is None or level >= analysis.levels[op]:
                continue
            move = analysis.movement[op][level]
            real = real_transfer_cycles(move, direction, (port.bandwidth_min, port.bandwidth_max))
            real_cycles[(op, level, direction)] = real
            if move.count[direction] == 0:
                continue
            allowed = allowed_transfer_cycles(
                move, direction, flags[op][level], flags[op][level + 1]
            )
            activities.append(
                PortActivity(
                    real,
                    allowed,
                    move.period[direction],
                    move.count[direction],
                    f"{op}{level}{direction}",
                )
            )
        if len(activities) == 1:
            worst = max(worst, activities[0].stall)
        elif activities:
            union = updating_window_union(activities)
            positive = sum(a.stall for a in activities if a.stall > 0)
            negative = sum(a.stall for a in activities if a.stall <= 0)
            windows = sum(a.window_total for a in activities)
            worst = max(worst, positive + max(0, negative + windows - union))
    return worst, real_cycles


def reduce_ordered(cycles: list[float], minimum: list[float], surplus: float) -> list[float]:
    """Hide up to ``surplus`` loading cycles under computation, longest transfers first."""
    result = list(cycles)
    if surplus <= 0:
        return result
    for index in sorted(range(len(cycles)), key=lambda i: cycles[i], reverse=True):
        if surplus <= 0:
            break
        reduction = min(max(0.0, result[index] - minimum[index]), surplus)
        result[index] -= reduction
        surplus -= reduction
    return result


def port_loading(
    layer: Layer,
    analysis: Analysis,
    port: Port,
    entries: list[tuple[str, str, int]],
    mem_to_layer: dict[str, str],
    real_cycles: dict,
    stall: float,
    data_bits_mac: dict[str, float],
) -> dict[tuple[str, int, str], tuple[float, bool]]:
    """Cycles each movement of one port needs before (inputs) or after (outputs) computing."""
    once, repeated = [], []
    for mem_op, direction, level in entries:
        op = mem_to_layer.get(mem_op)
        if op is None or level >= analysis.levels[op]:
            continue
        if op == layer.output and direction in (RD_LOW, WR_HIGH):
            continue
        count = analysis.movement[op][level].count[direction]
        if count == 1:
            once.append((op, level, direction))
        elif count > 1:
            repeated.append((op, level, direction))
    busy_bandwidth = sum(analysis.movement[op][lv].bw_avg[d] for op, lv, d in repeated)
    result: dict[tuple[str, int, str], tuple[float, bool]] = {}
    if once:
        minimum = [math.ceil(data_bits_mac[op] / port.bandwidth_max) for op, _, _ in once]
        needed = [real_cycles.get(key, 0) for key in once]
        computing = analysis.total_cycles + stall
        surplus = max(0.0, (port.bandwidth_max - busy_bandwidth) / port.bandwidth_max * computing)
        for key, remaining in zip(once, reduce_ordered(needed, minimum, surplus), strict=False):
            result[key] = (remaining, port.shared_by_two_inputs)
    for key in repeated:
        result[key] = (real_cycles.get(key, 0), port.shared_by_two_inputs)
    return result


def loading_cycles(
    layer: Layer,
    hw: Accelerator,
    analysis: Analysis,
    real_cycles: dict,
    stall: float,
    data_bits_mac: dict[str, float],
) -> tuple[float, float]:
    """(cycles loading inputs before computing, cycles off-loading outputs after)."""
    loads: dict[tuple[str, int, str], tuple[float, bool]] = {}
    mem_to_layer = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    for _memory, port, entries in hw.port_table():
        loads.update(
            port_loading(
                layer, analysis, port, entries, mem_to_layer, real_cycles, stall, data_bits_mac
            )
        )
    individual, half_shared, shared = {}, {}, {}
    for op in layer.inputs:
        individual[op] = half_shared[op] = shared[op] = 0
        for lv in range(analysis.levels[op] - 1):
            cycles_a, shared_a = loads.get((op, lv, WR_HIGH), (0, False))
            cycles_b, shared_b = loads.get((op, lv + 1, RD_LOW), (0, False))
            longest = max(cycles_a, cycles_b)
            if not shared_a and not shared_b:
                individual[op] += longest
            elif shared_a and shared_b:
                shared[op] += longest
            else:
                half_shared[op] = longest
    if len(layer.inputs) == 1:
        onload = individual[layer.inputs[0]]
    else:
        a, b = layer.inputs[0], layer.inputs[1]
        option_a = shared[a] + max(
            shared[b] + half_shared[b] + individual[b], half_shared[a] + individual[a]
        )
        option_b = shared[b] + max(
            shared[a] + half_shared[a] + individual[a], half_shared[b] + individual[b]
        )
        onload = min(option_a, option_b)
    out = layer.output
    offload = 0.0
    for lv in range(analysis.levels[out] - 1):
        offload += max(
            loads.get((out, lv, RD_HIGH), (0, False))[0],
            loads.get((out, lv + 1, WR_LOW), (0, False))[0],
        )
    return onload, offload


def systolic_drain(hw: Accelerator, spatial_user: SpatialMapping) -> int:
    """Along a systolic dimension the last results leave the array one cycle per unit later."""
    return sum(
        max(math.ceil(math.prod(spatial_user.unrollings[oa].values())) - 1, 0)
        for oa in hw.systolic_dimensions
        if oa in spatial_user.unrollings
    )


# ---------------------------------------------------------------------------------------
# The whole evaluation
# ---------------------------------------------------------------------------------------


def evaluate(
    layer: Layer,
    hw: Accelerator,
    spatial: SpatialMapping,
    temporal: TemporalMapping,
    spatial_int: SpatialMapping | None = None,
    spatial_user: SpatialMapping | None = None,
    rel: Relevancy | None = None,
    cache: dict | None = None,
    operand_keys: dict[str, tuple] | None = None,
) -> Cost:
    """Energy, latency and utilization of ``layer`` on ``hw`` under one mapping.

    ``spatial`` may hold fractional unrollings (energy uses it); ``spatial_int`` is its
    integer version (latency uses it), ``spatial_user`` the unrolling before the remainder
    split (the systolic drain uses it). Use :func:`kiln.hw.mapping.fit_spatial` to get them.
    ``operand_keys``: each operand's :func:`operand_key`, when the caller has them.
    """
    rel = rel or relevancy(layer)
    spatial_int = spatial_int or spatial
    spatial_user = spatial_user or spatial_int
    analysis = analyse(layer, hw, spatial, temporal, rel, cache, operand_keys)
    same = spatial_int.key() == spatial.key()
    analysis_int = analysis if same else analyse(layer, hw, spatial_int, temporal, rel, cache,
                                                 operand_keys)

    accesses = memory_accesses(layer, hw, analysis)
    breakdown = memory_energy(layer, hw, accesses)
    macs_energy = mac_energy(layer, hw)
    energy = macs_energy + sum(sum(v.values()) for v in breakdown.values())

    flags = double_buffered(layer, hw, analysis)
    stall, real_cycles = port_stalls(layer, hw, analysis_int, flags)
    bits_mac = {op: analysis_int.data_bits_unrolled[op][1] for op in layer.operands}
    onload, offload = loading_cycles(layer, hw, analysis_int, real_cycles, stall, bits_mac)
    ideal = math.ceil(layer.macs / hw.total_units)
    temporal_cycles = analysis_int.total_cycles
    drain = systolic_drain(hw, spatial_user)
    latency = temporal_cycles + stall + onload + offload + drain
    return Cost(
        layer=layer.name,
        energy_pj=energy,
        mac_energy_pj=macs_energy,
        latency_cycles=latency,
        ideal_cycles=ideal,
        temporal_cycles=temporal_cycles,
        stall_cycles=stall,
        onload_cycles=onload,
        offload_cycles=offload,
        drain_cycles=drain,
        spatial_utilization=ideal / temporal_cycles,
        utilization=ideal / latency,
        energy_by_level=breakdown,
        accesses=accesses,
        spatial=str(spatial_user),
        temporal=temporal.as_dict(),
    )
