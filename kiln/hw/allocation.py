"""LOMA: loop-order-based memory allocation, the temporal half of the mapper.

Given a loop order (innermost first), each memory, bottom-up, takes for each operand it
holds a prefix of that operand's loops left; among the prefixes that fit together it keeps
the one with the least traffic to the level above (ZigZag's rule, its tie-breaks included).
:func:`allocate` does one order (:mod:`kiln.hw.allocation_batch` many at once, with the
same choices), :func:`all_allocations` every cut of one order that fits.

    >>> temporal = allocate(layer, hw, spatial_levels, order, relevancy(layer))  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterator

from kiln.hw.accelerator import Accelerator, Memory
from kiln.hw.analysis import Relevancy, tile_counter
from kiln.hw.cost import MappingError
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
    This is the reference, one order at a time; the mapper uses
    :func:`kiln.hw.allocation_batch.allocate_order_batch`.
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
