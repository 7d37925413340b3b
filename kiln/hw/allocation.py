"""LOMA: loop-order-based memory allocation, the temporal half of the mapper.

Given a loop order (innermost first), each memory, bottom-up, takes for each operand it
holds a prefix of that operand's loops left; among the prefixes that fit together it keeps
the one with the least traffic to the level above (ZigZag's rule, its tie-breaks included).
:func:`allocate` does one order, :func:`allocate_orders` many at once (numpy over orders,
the same choices and the same float operations), :func:`all_allocations` every cut of one
order that fits.

    >>> temporal = allocate(layer, hw, spatial_levels, order, relevancy(layer))  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.hw.accelerator import Accelerator, Memory
from kiln.hw.cost import MappingError, Relevancy, tile_counter, tile_counter_spec
from kiln.hw.mapping import Loop, TemporalMapping
from kiln.hw.workload import Layer


class MemoryTooSmallError(MappingError):
    """The loops given to a memory (or left for the top one) do not fit in it."""



# ---------------------------------------------------------------------------------------
# Memory allocation of one loop order
# ---------------------------------------------------------------------------------------


def allocate(
    layer: Layer,
    hw: Accelerator,
    spatial_levels: dict[str, list[list[Loop]]],
    ordering: list[Loop],
    rel: Relevancy,
) -> TemporalMapping:
    """Give the loops of ``ordering`` (innermost first) to each memory bottom-up.

    Each memory takes, for each operand it holds, a prefix of that operand's remaining
    loops; among the prefixes that fit together it picks the one with the fewest accesses
    to the level above (size × remaining iterations). Raises :class:`MemoryTooSmallError`.
    This is the reference, one order at a time; the mapper uses :func:`allocate_orders`.
    """
    mem_to_op = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    tops = {op: hw.levels(layer.links[op])[-1] for op in layer.operands}
    memories = [(memory, [mem_to_op[m] for m in memory.operands if m in mem_to_op])
                for memory in hw.memories]
    memories = [(memory, ops) for memory, ops in memories if ops]
    unallocated = {op: list(ordering) for op in layer.operands}
    allocated = {op: list(spatial_levels[op][0]) for op in layer.operands}
    arch_level = dict.fromkeys(layer.operands, 1)
    result: dict[str, list[tuple[Loop, ...]]] = {op: [] for op in layer.operands}
    for memory, ops in memories:
        options = _all_prefix_sizes(
            layer, ops, allocated, unallocated, spatial_levels, arch_level, memory, rel, tops,
        )
        chosen = _best_prefixes(ops, options, unallocated, memory, tops)
        error = None
        for op, count in zip(ops, chosen, strict=False):
            loops = unallocated[op][:count]
            del unallocated[op][:count]
            allocated[op] += loops
            result[op].append(tuple(loops))
            allocated[op] += spatial_levels[op][arch_level[op]]
            if memory is tops[op] and unallocated[op] and error is None:
                error = MemoryTooSmallError(
                    f"{memory.name} (top memory of {op}) cannot hold all loops"
                )
            arch_level[op] += 1
        if error is not None:
            raise error
    return TemporalMapping({op: tuple(levels) for op, levels in result.items()})


def all_allocations(
    layer: Layer,
    hw: Accelerator,
    spatial_levels: dict[str, list[list[Loop]]],
    ordering: list[Loop],
    rel: Relevancy,
) -> Iterator[TemporalMapping]:
    """Every way to cut ``ordering`` into memory levels that fits (not only LOMA's choice)."""
    mem_to_op = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    memories = [m for m in hw.memories if any(op in mem_to_op for op in m.operands)]
    tops = {op: hw.levels(layer.links[op])[-1] for op in layer.operands}

    def visit(
        index: int, unallocated: dict, allocated: dict, arch_level: dict, result: dict
    ) -> Iterator[TemporalMapping]:
        if index == len(memories):
            yield TemporalMapping({op: tuple(levels) for op, levels in result.items()})
            return
        memory = memories[index]
        ops = [mem_to_op[m] for m in memory.operands if m in mem_to_op]
        try:
            options = _all_prefix_sizes(
                layer, ops, allocated, unallocated, spatial_levels, arch_level, memory, rel,
                tops,
            )
        except MemoryTooSmallError:
            return
        ranges = []
        for op in ops:
            count = len(options[op])
            if memory is tops[op]:
                if count - 1 != len(unallocated[op]):
                    return
                ranges.append([count - 1])
            else:
                ranges.append(list(reversed(range(count))))
        for combo in itertools.product(*ranges):
            if sum(options[op][i] for op, i in zip(ops, combo, strict=False)) > memory.size_bits:
                continue
            new_un, new_al, new_lv, new_res = (
                dict(unallocated),
                dict(allocated),
                dict(arch_level),
                dict(result),
            )
            for op, count in zip(ops, combo, strict=False):
                loops = unallocated[op][:count]
                new_un[op] = unallocated[op][count:]
                new_al[op] = allocated[op] + loops + spatial_levels[op][arch_level[op]]
                new_res[op] = result[op] + [tuple(loops)]
                new_lv[op] = arch_level[op] + 1
            yield from visit(index + 1, new_un, new_al, new_lv, new_res)

    yield from visit(
        0,
        {op: list(ordering) for op in layer.operands},
        {op: list(spatial_levels[op][0]) for op in layer.operands},
        dict.fromkeys(layer.operands, 1),
        {op: [] for op in layer.operands},
    )


def _all_prefix_sizes(
    layer: Layer,
    ops: list[str],
    allocated: dict,
    unallocated: dict,
    spatial_levels: dict,
    arch_level: dict,
    memory: Memory,
    rel: Relevancy,
    tops: dict[str, Memory] | None = None,
) -> dict[str, list[float]]:
    """For each operand a memory holds, the sizes of the loop prefixes that fit in it (for
    the operand's top memory, ``tops``, only the last entry is exact: it takes every loop)."""
    return {
        op: _prefix_sizes(
            layer,
            op,
            allocated[op],
            unallocated[op],
            spatial_levels[op],
            arch_level[op],
            memory,
            rel,
            tops is not None and tops.get(op) is memory,
        )
        for op in ops
    }


def _precision_for(
    layer: Layer,
    op: str,
    unallocated: list[Loop],
    spatial_levels: list[list[Loop]],
    arch_level: int,
    rel: Relevancy,
) -> int:
    if op != layer.output:
        return layer.precision[op]
    pending = [d for lv in spatial_levels[arch_level:] for d, _ in lv] + [d for d, _ in unallocated]
    return (
        layer.precision["O"]
        if any(d in rel.ir[op] for d in pending)
        else layer.precision["O_final"]
    )


def _prefix_sizes(
    layer: Layer,
    op: str,
    allocated: list[Loop],
    unallocated: list[Loop],
    spatial_levels: list[list[Loop]],
    arch_level: int,
    memory: Memory,
    rel: Relevancy,
    is_top: bool = False,
) -> list[float]:
    bits = _precision_for(layer, op, unallocated, spatial_levels, arch_level, rel)
    sizes: dict[str, float] = defaultdict(lambda: 1)
    for dim, size in allocated:
        sizes[dim] *= size
    count = rel.counters.get(op)
    if count is None:
        count = rel.counters[op] = tile_counter(layer, op, rel)
    if is_top:
        # The top memory takes every loop left: tiles only grow with a longer prefix, so
        # when the whole fits every prefix does, and only the whole is read (the same
        # float: the same products in the same order).
        whole = defaultdict(lambda: 1, sizes)
        for dim, size in unallocated:
            whole[dim] *= size
        needed = count(whole) * bits
        if needed <= memory.size_bits:
            return [needed] * (len(unallocated) + 1)
    touching = rel.touching[op]
    fits = []
    needed = 0.0
    for index in range(len(unallocated) + 1):
        if index:
            dim, size = unallocated[index - 1]
            sizes[dim] *= size
            if dim not in touching:  # a loop the operand ignores leaves its tile as it was
                fits.append(needed)
                continue
        needed = count(sizes) * bits
        if needed > memory.size_bits:
            if index == 0:
                raise MemoryTooSmallError(
                    f"{memory.name} cannot hold the {op} tile below it ({needed:.0f} bits > "
                    f"{memory.size_bits})"
                )
            break
        fits.append(needed)
    return fits


def _best_prefixes(
    ops: list[str],
    options: dict[str, list[float]],
    unallocated: dict[str, list[Loop]],
    memory: Memory,
    tops: dict[str, Memory],
) -> list[int]:
    offsets = dict.fromkeys(ops, 0)
    choices: dict[str, list[float]] = {}
    accesses: dict[str, list[float]] = {}
    for op in ops:
        sizes = options[op]
        if memory is tops[op]:
            offsets[op] = len(sizes) - 1
            choices[op] = sizes[-1:]
            accesses[op] = [0]
            continue
        choices[op] = sizes
        # Accesses to the level above: the tile size times the iterations of the loops
        # left above it (suffix products, so that each prefix costs O(1)).
        remaining = unallocated[op]
        above = [1.0] * (len(remaining) + 1)
        for index in range(len(remaining) - 1, -1, -1):
            above[index] = above[index + 1] * remaining[index][1]
        accesses[op] = [above[index] * size for index, size in enumerate(sizes)]
    # Among the combinations that fit together, the last one (in product order) with the
    # least traffic to the level above wins, as in ZigZag's LOMA.
    if len(ops) == 1:
        op = ops[0]
        traffic = accesses[op]
        least = min(traffic)
        last = max(i for i, t in enumerate(traffic) if t == least)
        return [last + offsets[op]]
    # The last operand's options are not walked one by one: tiles only grow with a longer
    # prefix, so what fits beside the others is a prefix of its options, found by
    # bisection, and its least traffic is a running minimum. The winner is the one the
    # full walk would pick, float rounding of the sums included (the last of equal sums).
    *outer_ops, last_op = ops
    last_sizes, last_traffic = choices[last_op], accesses[last_op]
    running_min = list(itertools.accumulate(last_traffic, min))
    best, best_traffic = [offsets[op] for op in ops], math.inf
    ranges = [range(len(choices[op])) for op in outer_ops]
    for position, combo in enumerate(itertools.product(*ranges)):
        held = 0.0
        traffic_sum = 0.0
        for op, i in zip(outer_ops, combo, strict=True):
            held += choices[op][i]
            traffic_sum += accesses[op][i]
        fitting = bisect.bisect_right(last_sizes, memory.size_bits - held)
        if fitting == 0:
            if position == 0:
                raise MemoryTooSmallError(
                    f"{memory.name} cannot hold the tiles of {', '.join(ops)} together"
                )
            continue
        least = traffic_sum + running_min[fitting - 1]
        last_index = fitting - 1
        while traffic_sum + last_traffic[last_index] != least:
            last_index -= 1
        traffic_sum = least
        if traffic_sum <= best_traffic:
            best_traffic = traffic_sum
            best = [i + offsets[op] for op, i in zip(outer_ops, combo, strict=True)]
            best.append(last_index + offsets[last_op])
    return best


# ---------------------------------------------------------------------------------------
# Many orders at once
# ---------------------------------------------------------------------------------------


@dataclass
class OrderBatch:
    """Loop orders of the same loops, as arrays (innermost first), and how each was cut
    into memory levels: ``counts[op][i]`` holds how many loops each memory of ``op`` took
    in order ``i``, ``reasons[i]`` why order ``i`` does not fit (None when it does)."""

    orders: list[list[Loop]]
    dims: Any  # [order, position] column of the loop's dim in ``columns``
    sizes: Any  # [order, position] the loop's size
    columns: dict[str, int]
    counts: dict[str, Any] = field(default_factory=dict)
    reasons: Any = None
    loop_ids: Any = None  # [order, position] index of the loop in the sorted distinct loops

    @classmethod
    def of(cls, layer: Layer, orders: list[list[Loop]]) -> OrderBatch:
        count, length = len(orders), len(orders[0]) if orders else 0
        loops = sorted(set(orders[0])) if orders else []
        dims = list(dict.fromkeys([*layer.sizes, *(d for d, _ in loops)]))
        columns = {dim: index for index, dim in enumerate(dims)}
        number = {loop: index for index, loop in enumerate(loops)}
        loop_ids = np.array([[number[loop] for loop in order] for order in orders],
                            dtype=np.int64).reshape(count, length)
        dim_of = np.array([columns[d] for d, _ in loops], dtype=np.int64)
        size_of = np.array([s for _, s in loops], dtype=np.float64)
        return cls(orders, dim_of[loop_ids], size_of[loop_ids], columns, loop_ids=loop_ids)

    @classmethod
    def from_temporals(cls, layer: Layer, temporals: list[TemporalMapping]) -> OrderBatch:
        """The orders and cuts of mappings allocated elsewhere (:func:`all_allocations`)."""
        batch = cls.of(layer, [temporal.ordering for temporal in temporals])
        batch.counts = {op: np.array([[len(level) for level in temporal.loops[op]]
                                      for temporal in temporals], dtype=np.int64)
                        for op in layer.operands}
        batch.reasons = np.full(len(temporals), None, dtype=object)
        return batch

    def temporal(self, index: int) -> TemporalMapping:
        order = self.orders[index]
        loops = {}
        for op, counts in self.counts.items():
            levels, at = [], 0
            for count in counts[index]:
                levels.append(tuple(order[at:at + int(count)]))
                at += int(count)
            loops[op] = tuple(levels)
        return TemporalMapping(loops)


def allocate_orders(
    layer: Layer,
    hw: Accelerator,
    spatial_levels: dict[str, list[list[Loop]]],
    orders: list[list[Loop]],
    rel: Relevancy,
) -> list[TemporalMapping | str]:
    """:func:`allocate` for many orders of the same loops at once: per order its
    :class:`TemporalMapping`, or why it does not fit (the text before `` (`` of the
    :class:`MemoryTooSmallError` that :func:`allocate` raises)."""
    batch = allocate_order_batch(layer, hw, spatial_levels, orders, rel)
    return [batch.reasons[i] if batch.reasons[i] is not None else batch.temporal(i)
            for i in range(len(orders))]


def allocate_order_batch(
    layer: Layer,
    hw: Accelerator,
    spatial_levels: dict[str, list[list[Loop]]],
    orders: list[list[Loop]],
    rel: Relevancy,
) -> OrderBatch:
    """The LOMA allocation of many orders of the same loops, as an :class:`OrderBatch`.

    Each memory's choice is worked out for every order together with numpy. Tile sizes grow
    by the same multiplications in the same order as in :func:`allocate`, and ties go the
    same way, so every order gets the same allocation (tests compare them order by order).
    """
    batch = OrderBatch.of(layer, orders)
    count_orders, length = batch.dims.shape
    rows = np.arange(count_orders)
    column, order_dims, order_sizes = batch.columns, batch.dims, batch.sizes
    dims = list(column)
    # above[:, p]: the product of the loops from position p outwards, multiplied from the
    # outermost in (as _best_prefixes builds it), so every start shares the same floats.
    above = np.ones((count_orders, length + 1))
    for position in range(length - 1, -1, -1):
        above[:, position] = above[:, position + 1] * order_sizes[:, position]

    mem_to_op = {mem: op for op, mem in layer.links.items() if op in layer.operand_dims}
    tops = {op: hw.levels(layer.links[op])[-1] for op in layer.operands}
    memories = [(memory, [mem_to_op[m] for m in memory.operands if m in mem_to_op])
                for memory in hw.memories]
    memories = [(memory, ops) for memory, ops in memories if ops]

    # Per operand: loops allocated so far (a count of the order's first loops), the tile's
    # per-dim sizes so far, the arch level, and the counts each memory took.
    start = {op: np.zeros(count_orders, dtype=np.int64) for op in layer.operands}
    sizes = {}
    for op in layer.operands:
        tile = np.ones((count_orders, len(dims)))
        for dim, factor in spatial_levels[op][0]:
            tile[:, column[dim]] = tile[:, column[dim]] * factor
        sizes[op] = tile
    arch_level = dict.fromkeys(layer.operands, 1)
    taken: dict[str, list[np.ndarray]] = {op: [] for op in layer.operands}
    reason = np.full(count_orders, None, dtype=object)

    def fail(where: np.ndarray, text: str) -> None:
        reason[where & np.equal(reason, None)] = text

    for memory, ops in memories:
        options = {}  # op -> (tile stack by prefix length, bits needed, how many fit)
        for op in ops:
            stack, needed = _prefix_tiles(layer, op, rel, sizes[op], start[op], order_dims,
                                          order_sizes, spatial_levels[op], arch_level[op],
                                          column)
            left = length - start[op]
            within = np.arange(length + 1)[None, :] <= left[:, None]
            fits = ((needed <= memory.size_bits) & within).sum(axis=1)
            fail(fits == 0, f"{memory.name} cannot hold the {op} tile below it")
            options[op] = (stack, needed, fits)
        chosen = _best_prefixes_of_orders(ops, options, start, above, memory, tops, fail)
        for op, count in zip(ops, chosen, strict=True):
            stack = options[op][0]
            tile = stack[count, rows]
            for dim, factor in spatial_levels[op][arch_level[op]]:
                tile[:, column[dim]] = tile[:, column[dim]] * factor
            sizes[op] = tile
            start[op] = np.minimum(start[op] + count, length)  # (orders that failed)
            taken[op].append(count)
            if memory is tops[op]:
                fail(start[op] < length, memory.name)
            arch_level[op] += 1

    batch.counts = {op: np.stack(taken[op], axis=1) if taken[op] else
                    np.zeros((count_orders, 0), dtype=np.int64) for op in layer.operands}
    batch.reasons = reason
    return batch


def _prefix_tiles(layer, op, rel, tile, start, order_dims, order_sizes, spatial_levels,
                  arch_level, column):
    """Per order, the operand's tile (per-dim sizes) and bits after taking 0, 1, … of its
    next loops: (stack of tiles [prefix, order, dim], bits [order, prefix])."""

    count_orders, length = order_dims.shape
    rows = np.arange(count_orders)
    relevant, windows = tile_counter_spec(layer, op, rel)
    relevant = [column[d] for d in relevant if d in column]
    windows = [(column.get(a), column.get(b), step_a, step_b, cap)
               for a, b, step_a, step_b, cap in windows]

    def elements(sizes: np.ndarray) -> np.ndarray:
        total = np.ones(count_orders)
        for dim in relevant:
            total = total * sizes[:, dim]
        for dim_a, dim_b, step_a, step_b, cap in windows:
            size_a = np.trunc(sizes[:, dim_a]) if dim_a is not None else 1.0
            size_b = np.trunc(sizes[:, dim_b]) if dim_b is not None else 1.0
            extent = size_a * size_b - np.maximum(0, size_b - step_a) * (size_a - step_b)
            total = total * (extent if cap is None else np.minimum(cap, extent))
        return total

    if op == layer.output:
        # Partial outputs while an ir loop is still to come (above, spatial or temporal).
        irrelevant = np.array([d in rel.ir[op] for d in column], dtype=bool)
        later = np.zeros((count_orders, length + 1), dtype=bool)
        for position in range(length - 1, -1, -1):
            later[:, position] = later[:, position + 1] | irrelevant[order_dims[:, position]]
        pending = later[rows, start] | any(
            d in rel.ir[op] for level in spatial_levels[arch_level:] for d, _ in level)
        bits = np.where(pending, layer.precision["O"], layer.precision["O_final"])
    else:
        bits = np.full(count_orders, layer.precision[op])
    stack = [tile]
    needed = [elements(tile) * bits]
    for prefix in range(1, length + 1):
        position = start + prefix - 1
        inside = position < length
        position = np.minimum(position, length - 1)
        dim = order_dims[rows, position]
        grown = stack[-1].copy()
        grown[rows, dim] = np.where(inside, grown[rows, dim] * order_sizes[rows, position],
                                    grown[rows, dim])
        stack.append(grown)
        needed.append(elements(grown) * bits)
    return np.stack(stack), np.stack(needed, axis=1)


def _best_prefixes_of_orders(ops, options, start, above, memory, tops, fail):
    """_best_prefixes for every order: how many loops each operand gives this memory."""
    count_orders = above.shape[0]
    rows = np.arange(count_orders)
    choice_sizes, traffic, valid, offsets = {}, {}, {}, {}
    for op in ops:
        _, needed, fits = options[op]
        last = np.maximum(fits - 1, 0)
        if memory is tops[op]:
            # The top memory takes every loop that fits (the rest is an error).
            choice_sizes[op] = needed[rows, last][:, None]
            traffic[op] = np.zeros((count_orders, 1))
            valid[op] = np.ones((count_orders, 1), dtype=bool)
            offsets[op] = last
            continue
        width = needed.shape[1]
        positions = np.minimum(start[op][:, None] + np.arange(width)[None, :],
                               above.shape[1] - 1)
        choice_sizes[op] = needed
        traffic[op] = above[rows[:, None], positions] * needed
        valid[op] = np.arange(width)[None, :] < fits[:, None]
        offsets[op] = np.zeros(count_orders, dtype=np.int64)
    if len(ops) == 1:
        op = ops[0]
        masked = np.where(valid[op], traffic[op], np.inf)
        least = masked.min(axis=1)
        width = masked.shape[1]
        last = width - 1 - np.argmax((masked == least[:, None])[:, ::-1], axis=1)
        return [np.where(valid[op].any(axis=1), last, 0) + offsets[op]]
    *outer_ops, last_op = ops
    last_sizes = np.where(valid[last_op], choice_sizes[last_op], np.inf)
    last_traffic = np.where(valid[last_op], traffic[last_op], np.inf)
    running_min = np.minimum.accumulate(last_traffic, axis=1)
    width = last_sizes.shape[1]
    best = [offsets[op].copy() for op in ops]
    best_traffic = np.full(count_orders, np.inf)
    ranges = [range(choice_sizes[op].shape[1]) for op in outer_ops]
    for position, combo in enumerate(itertools.product(*ranges)):
        usable = np.ones(count_orders, dtype=bool)
        held = np.zeros(count_orders)
        traffic_sum = np.zeros(count_orders)
        for op, i in zip(outer_ops, combo, strict=True):
            usable &= valid[op][:, i]
            held = held + choice_sizes[op][:, i]
            traffic_sum = traffic_sum + traffic[op][:, i]
        if not usable.any():
            continue
        fitting = (last_sizes <= (memory.size_bits - held)[:, None]).sum(axis=1)
        if position == 0:
            fail(fitting == 0, f"{memory.name} cannot hold the tiles of {', '.join(ops)} "
                               "together")
        usable &= fitting > 0
        fitting = np.maximum(fitting, 1)
        least = traffic_sum + running_min[rows, fitting - 1]
        equal = ((traffic_sum[:, None] + last_traffic) == least[:, None]) & (
            np.arange(width)[None, :] < fitting[:, None])
        last_index = width - 1 - np.argmax(equal[:, ::-1], axis=1)
        better = usable & (least <= best_traffic)
        best_traffic = np.where(better, least, best_traffic)
        for k, (op, i) in enumerate(zip(outer_ops, combo, strict=True)):
            best[k] = np.where(better, i + offsets[op], best[k])
        best[-1] = np.where(better, last_index + offsets[last_op], best[-1])
    return best
