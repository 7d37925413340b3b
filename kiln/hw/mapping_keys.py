"""What a mapping's cost depends on, for many allocated loop orders at once (numpy).

:func:`kiln.hw.analysis.operand_key` and :func:`kiln.hw.mapper.canonical_key` say it for one
mapping: per operand and memory level, after the irrelevant loops at the bottom of each
level move down (they re-read what the level below holds), the multiset of loops and the
products of the outermost relevant and irrelevant runs, and the stationarity at the MACs.
Orders with equal keys cost the same, so the mapper costs one of them.

Here the same keys are computed for every order of an
:class:`kiln.hw.allocation.OrderBatch`, encoded as bytes: two mappings get equal bytes
exactly when those functions give equal keys (tests compare the partitions). Moving the
stationary loops down only moves level boundaries: a boundary slides up past the
irrelevant loops right above it, so its final place is the first relevant loop at or after
it.

    >>> coder = KeyCoder(layer, rel, loops, roomy)          # doctest: +SKIP
    >>> operand_keys, mapping_keys = coder.keys(batch)      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.hw.allocation_batch import OrderBatch
from kiln.hw.analysis import Relevancy
from kiln.hw.mapping import Loop
from kiln.hw.workload import Layer


@dataclass
class OperandShape:
    """One operand's levels in each order after its stationary loops moved down: level
    ``i`` holds the loops at positions ``bounds[:, i]`` to ``bounds[:, i + 1]``;
    ``stationary`` is the product of the irrelevant loops at the very bottom (reuse at the
    MACs), ``top_r``/``top_ir`` each level's outermost relevant / irrelevant run, and
    ``cycles`` the product of every loop up to each level's top."""

    bounds: np.ndarray
    stationary: np.ndarray
    top_r: np.ndarray
    top_ir: np.ndarray
    cycles: np.ndarray


class KeyCoder:
    """Keys for the orders of one multiset of ``loops`` of one layer."""

    def __init__(self, layer: Layer, rel: Relevancy, loops: list[Loop],
                 roomy_top: frozenset[str] = frozenset()) -> None:
        self.layer, self.rel, self.roomy_top = layer, rel, roomy_top
        self.types = {loop: index for index, loop in enumerate(sorted(set(loops)))}
        # (OrderBatch numbers its loops the same way: by the sorted distinct loops.)

    def keys(self, batch: OrderBatch) -> tuple[dict[str, list[bytes]], list[bytes],
                                               dict[str, OperandShape]]:
        """Per operand, each order's operand key; each order's mapping key; and per operand
        the shape of its levels once stationary loops moved down (what the operand's
        analysis starts from)."""
        count, length = batch.dims.shape
        type_ids = batch.loop_ids  # the same numbering: the sorted distinct loops
        # Loops of each type up to each position, and the products of the sizes so far
        # (whole numbers well below 2**53: exact, so quotients of them are exact too).
        seen = np.zeros((count, length + 1, len(self.types)))
        if length:
            seen[:, 1:, :] = np.cumsum(
                np.eye(len(self.types))[type_ids], axis=1)
        product = np.ones((count, length + 1))
        for position in range(length):
            product[:, position + 1] = product[:, position] * batch.sizes[:, position]
        operand_rows, mapping_parts, shapes = {}, [], {}
        for op in sorted(batch.counts):
            rows, shapes[op] = self._operand_rows(batch, op, seen, product)
            operand_rows[op] = rows
            if op in self.roomy_top:
                # A top memory that is always double-buffered: its runs do not matter.
                rows = rows.copy()
                rows[:, -2:] = 0
            mapping_parts.append(rows)
        operand_keys = {op: [row.tobytes() for row in rows] for op, rows in operand_rows.items()}
        mapping = np.concatenate(mapping_parts, axis=1) if mapping_parts else np.zeros((count, 0))
        return operand_keys, [row.tobytes() for row in mapping], shapes

    def _operand_rows(self, batch: OrderBatch, op: str, seen: np.ndarray,
                      product: np.ndarray) -> tuple[np.ndarray, OperandShape]:
        count, length = batch.dims.shape
        rows = np.arange(count)
        columns = list(batch.columns)
        relevant = np.array([d in self.rel.r[op] for d in columns], dtype=bool)[batch.dims]
        irrelevant = np.array([d in self.rel.ir[op] for d in columns], dtype=bool)[batch.dims]
        # The first loop that is not irrelevant at or after each position.
        next_kept = np.full((count, length + 1), length, dtype=np.int64)
        for position in range(length - 1, -1, -1):
            next_kept[:, position] = np.where(irrelevant[:, position], next_kept[:, position + 1],
                                              position)
        # The last position before each one whose loop is not relevant (not irrelevant).
        last_not = {}
        for name, mask in (("r", relevant), ("ir", irrelevant)):
            last = np.full((count, length + 1), -1, dtype=np.int64)
            for position in range(length):
                last[:, position + 1] = np.where(mask[:, position], last[:, position], position)
            last_not[name] = last
        cuts = np.cumsum(batch.counts[op], axis=1)
        levels = cuts.shape[1]
        bounds = [np.zeros(count, dtype=np.int64)]
        for level in range(levels - 1):
            bounds.append(next_kept[rows, np.minimum(cuts[:, level], length)])
        bounds.append(np.full(count, length, dtype=np.int64))
        mac = product[rows, next_kept[:, 0]]  # stationarity at the MACs
        parts = [mac[:, None]]
        runs: dict[str, list[np.ndarray]] = {"r": [], "ir": []}
        for level in range(levels):
            low, high = bounds[level], bounds[level + 1]
            parts.append(seen[rows, high] - seen[rows, low])
            for name in ("r", "ir"):
                run_start = np.maximum(low, last_not[name][rows, high] + 1)
                runs[name].append(product[rows, high] / product[rows, run_start])
                parts.append(runs[name][-1][:, None])
        shape = OperandShape(
            np.stack(bounds, axis=1), mac,
            np.stack(runs["r"], axis=1) if levels else np.ones((count, 0)),
            np.stack(runs["ir"], axis=1) if levels else np.ones((count, 0)),
            np.stack([product[rows, b] for b in bounds[1:]], axis=1) if levels
            else np.ones((count, 0)))
        return np.concatenate(parts, axis=1), shape
