"""LOMA allocation of many loop orders at once (numpy over orders).

:func:`kiln.hw.allocation.allocate` gives one order's loops to the memories bottom-up; here
every order of one multiset of loops is allocated together: per memory, every order's tile
sizes for each prefix of its loops left, what fits, the traffic to the level above and the
choice, with the same multiplications in the same order and the same tie-breaks, so every
order gets the same allocation (tests compare them order by order).

    >>> batch = allocate_order_batch(layer, hw, spatial_levels, orders, rel)  # doctest: +SKIP
    >>> batch.temporal(0), batch.reasons[1]                                     # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.hw.accelerator import Accelerator
from kiln.hw.analysis import Relevancy, tile_counter_spec
from kiln.hw.mapping import Loop, TemporalMapping
from kiln.hw.workload import Layer


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
