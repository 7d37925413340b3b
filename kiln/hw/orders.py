"""Temporal loop orders: the space of orders the mapper searches for one spatial mapping.

A layer's temporal loops are split into loop prime factors (LPFs), merged down to at most
``lpf_limit`` of them (ZigZag's LOMA rule), and every distinct order of that multiset is a
candidate. A user's ``temporal_ordering`` (ZigZag mapping YAML, innermost first) either
gives the whole order, or constrains positions of it, as ZigZag 3.9 reads it:

- ``[K, 4]`` — the loop at this position is K of size 4;
- ``[K, "*"]`` — the loop at this position is *some* K loop (any of its LPFs);
- ``["*", "*"]`` — the entries after it count from the outermost end instead.

Example:
    >>> space = order_space({"K": 4, "C": 3}, [("C", None)], lpf_limit=6)
    >>> [order for order in space.orders()]
    [[('C', 3), ('K', 2), ('K', 2)]]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from kiln.errors import ConfigError

Loop = tuple[str, int]
ANY = "*"


def prime_factors(n: int) -> list[int]:
    """The prime factors of ``n`` with multiplicity, smallest first (1 has none)."""
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def loop_prime_factors(sizes: dict[str, int], limit: int | None,
                       static: list[Loop] | None = None) -> list[Loop]:
    """Each temporal loop split into prime factors; while there are more than ``limit``,
    the two smallest factors of the dim with the most are merged (ZigZag's lpf limit).

    ``static`` loops (sizes a user fixed at a position) replace their prime factors, count
    toward the limit and are never merged, as in ZigZag."""
    factors = {dim: sorted(prime_factors(size)) for dim, size in sizes.items() if size > 1}
    reserved: Counter[Loop] = Counter()
    for dim, size in static or []:
        values = factors.get(dim, [])
        for prime in prime_factors(size):
            if prime not in values:
                left = math.prod(values)
                raise ConfigError(f"temporal ordering: {dim} {size} does not divide what is "
                                  f"left of {dim} ({left})")
            values.remove(prime)
        factors[dim] = sorted([*values, size])
        reserved[(dim, size)] += 1
    limit = None if limit is None else max(limit, len(factors))
    while limit is not None and sum(len(f) for f in factors.values()) > limit:
        mergeable = {dim: _unreserved(values, dim, reserved) for dim, values in factors.items()}
        candidates = [dim for dim in factors if len(mergeable[dim]) >= 2]
        if not candidates:
            break
        dim = max(candidates, key=lambda d: len(factors[d]))
        first, second = mergeable[dim][:2]
        values = list(factors[dim])
        values.remove(first)
        values.remove(second)
        factors[dim] = sorted([*values, first * second])
    return [(dim, f) for dim, values in factors.items() for f in values]


def _unreserved(values: list[int], dim: str, reserved: Counter[Loop]) -> list[int]:
    left = Counter({size: count for (d, size), count in reserved.items() if d == dim})
    free = []
    for value in values:
        if left[value]:
            left[value] -= 1
        else:
            free.append(value)
    return free


def unique_orderings(loops: list[Loop],
                     positions: dict[int, tuple[str, int | None]] | None = None
                     ) -> Iterator[list[Loop]]:
    """Every distinct order of a multiset of loops (identical loops are not permuted) that
    meets ``positions``: index (innermost 0) → (dim, size or None for any size)."""
    counts: Counter[Loop] = Counter(loops)
    keys = sorted(counts)
    order: list[Loop] = []
    wanted = positions or {}
    if not wanted:
        yield from _lexicographic_permutations(sorted(loops))
        return

    def allowed(key: Loop, index: int) -> bool:
        if index not in wanted:
            return True
        dim, size = wanted[index]
        return key[0] == dim and (size is None or key[1] == size)

    def visit() -> Iterator[list[Loop]]:
        if len(order) == len(loops):
            yield list(order)
            return
        index = len(order)
        for key in keys:
            if counts[key] and allowed(key, index):
                counts[key] -= 1
                order.append(key)
                yield from visit()
                order.pop()
                counts[key] += 1

    yield from visit()


def _lexicographic_permutations(items: list[Loop]) -> Iterator[list[Loop]]:
    """Every distinct order of a sorted multiset, in lexicographic order (what the
    constrained walk yields without constraints), by the classic next-permutation step:
    no generator chain as deep as the order is long."""
    items = list(items)
    last = len(items) - 1
    while True:
        yield list(items)
        pivot = last - 1
        while pivot >= 0 and items[pivot] >= items[pivot + 1]:
            pivot -= 1
        if pivot < 0:
            return
        swap = last
        while items[swap] <= items[pivot]:
            swap -= 1
        items[pivot], items[swap] = items[swap], items[pivot]
        items[pivot + 1:] = reversed(items[pivot + 1:])


def count_orderings(loops: list[Loop]) -> int:
    """How many distinct orders a multiset of loops has."""
    total = math.factorial(len(loops))
    for count in Counter(loops).values():
        total //= math.factorial(count)
    return total


@dataclass
class OrderSpace:
    """The loop orders to try: a user's complete order, or every order of ``lpfs`` that
    meets the ``positions`` a user constrained (innermost 0)."""

    lpfs: list[Loop]
    positions: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    complete: list[Loop] | None = None

    def orders(self) -> Iterator[list[Loop]]:
        if self.complete is not None:
            return iter([self.complete])
        return unique_orderings(self.lpfs, self.positions)

    def upper_bound(self) -> int:
        """Orders without the position constraints (what a progress bar can show)."""
        return 1 if self.complete is not None else count_orderings(self.lpfs)


def order_space(sizes: dict[str, int], ordering: list[tuple[str, int | None]] | None,
                lpf_limit: int | None) -> OrderSpace:
    """The orders of the temporal loops ``sizes`` (dim → size left after the spatial
    unrolling) that a user's ``ordering`` allows.

    Entries for a dimension with no temporal loop (not in the layer, size 1, or fully
    unrolled) are dropped: ZigZag drops those not in the layer with a warning; kiln also
    drops the rest, which no order could meet."""
    loops = {dim: size for dim, size in sizes.items() if size > 1}
    entries = [(dim, size) for dim, size in ordering or []
               if dim == ANY or (dim in loops and size != 1)]
    if not entries:
        lpfs = loop_prime_factors(loops, lpf_limit)
        return OrderSpace(lpfs or [(next(iter(sizes), "B"), 1)])
    if all(dim != ANY and size is not None for dim, size in entries):
        product: Counter[str] = Counter()
        for dim, size in entries:
            product[dim] = product.get(dim, 1) * size
        if all(product.get(dim, 1) == size for dim, size in loops.items()):
            return OrderSpace([], complete=[(dim, size) for dim, size in entries if size > 1])
    positions: dict[int, tuple[str, int | None]] = {}
    outer = False
    count = len(entries)
    for index, (dim, size) in enumerate(entries):
        if dim == ANY:
            outer = True
            continue
        positions[index - count if outer else index] = (dim, size)
    static = [(dim, size) for dim, size in positions.values() if size is not None and size > 1]
    lpfs = loop_prime_factors(loops, lpf_limit, static)
    total = len(lpfs)
    normalized = {}
    for index, wanted in positions.items():
        at = index + total if index < 0 else index
        if not 0 <= at < total:
            raise ConfigError(f"temporal ordering: position {index} of {wanted[0]} is outside "
                              f"the {total} temporal loops left")
        normalized[at] = wanted
    return OrderSpace(lpfs, normalized)
