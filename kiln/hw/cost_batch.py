"""Energy and latency of many temporal mappings of one layer at once (numpy over mappings).

The mapper costs hundreds of loop orders per spatial mapping. What one operand holds and
moves per memory level depends only on its own loops (:func:`kiln.hw.analysis.analyse_operand`,
memoized per search); what couples the operands is cheap arithmetic on those figures
(double buffering in shared memories, port stalls, loading and off-loading). This module
tabulates each distinct operand analysis once and does the coupling for every mapping
together, with the same float operations in the same order as :func:`kiln.hw.cost.evaluate`,
so each mapping's energy and latency are equal to the last bit (tests check it). The
mapper then evaluates only the winner in full, for its breakdowns.

    >>> plan = BatchPlan(layer, hw, rel, spatial_user)                     # doctest: +SKIP
    >>> energy, latency = plan.score(energy_rows, latency_rows, cycles)    # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from kiln.hw.accelerator import Accelerator
from kiln.hw.analysis import DIRS, RD_HIGH, RD_LOW, WR_HIGH, WR_LOW, Relevancy
from kiln.hw.cost import (
    MappingError,
    PortActivity,
    mac_energy,
    systolic_drain,
    updating_window_union,
)
from kiln.hw.mapping import SpatialMapping
from kiln.hw.operand_batch import OrderMoves
from kiln.hw.workload import Layer

_HIGH = (RD_HIGH, WR_HIGH)


class PartTable:
    """The figures of each distinct analysis of one operand, one row each, in ``columns``
    order (rows are added as the search meets new operand keys)."""

    def __init__(self, columns: list[tuple]) -> None:
        self.columns = {name: i for i, name in enumerate(columns)}
        self.blocks: list[np.ndarray] = []
        self.count = 0
        self._array: np.ndarray | None = None

    def extend(self, rows: np.ndarray) -> range:
        """Add rows (:meth:`BatchPlan.table_rows`); their indices."""
        self.blocks.append(rows)
        self.count += len(rows)
        self._array = None
        return range(self.count - len(rows), self.count)

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = (np.concatenate(self.blocks) if self.blocks else
                           np.zeros((0, len(self.columns))))
            self.blocks = [self._array]
        return self._array


class BatchPlan:
    """What does not change between the temporal mappings of one layer, accelerator and
    spatial mapping: the operands' memories, ports, sharing groups and constant terms."""

    def __init__(self, layer: Layer, hw: Accelerator, rel: Relevancy,
                 spatial_user: SpatialMapping) -> None:
        self.layer, self.hw, self.rel = layer, hw, rel
        self.ops = list(layer.operands)
        self.mem_to_layer = {mem: op for op, mem in layer.links.items()
                             if op in layer.operand_dims}
        self.memories = {op: hw.levels(layer.links[op]) for op in self.ops}
        self.levels = {op: len(self.memories[op]) for op in self.ops}
        self.mac_energy = mac_energy(layer, hw)
        self.drain = systolic_drain(hw, spatial_user)
        # Ports in the order evaluate visits them, with the movements of this layer's operands.
        self.ports = []
        for _memory, port, entries in hw.port_table():
            kept = [(self.mem_to_layer[mem_op], direction, level)
                    for mem_op, direction, level in entries if mem_op in self.mem_to_layer]
            kept = [(op, d, lv) for op, d, lv in kept if lv < self.levels[op]]
            self.ports.append((port, kept))
        self.groups = []
        for group in hw.sharing_groups():
            self.groups.append([(self.mem_to_layer[mem], lv) for mem, lv in group.items()
                                if mem in self.mem_to_layer])
        # The group a (mem op, level) belongs to, as double_buffered finds it (the first).
        raw_groups = hw.sharing_groups()
        self.group_of = {}
        for op in self.ops:
            for lv in range(self.levels[op]):
                for raw, members in zip(raw_groups, self.groups, strict=True):
                    if raw.get(layer.links[op]) == lv:
                        self.group_of[(op, lv)] = members
                        break
        self._port_entries: dict[str, list[tuple[int, str, int]]] = {}
        self.energy_tables = {op: self._energy_table(op) for op in self.ops}
        self.latency_tables = {op: self._latency_table(op) for op in self.ops}

    # --- per-analysis figures --------------------------------------------------------

    def _energy_table(self, op: str) -> PartTable:
        levels = self.levels[op]
        return PartTable([("energy", m) for m in range(levels)]
                         + [("effective", m) for m in range(levels)])

    def _latency_table(self, op: str) -> PartTable:
        columns: list[tuple] = [("bits_mac",)]
        for m in range(self.levels[op]):
            for d in DIRS:
                columns += [("count", m, d), ("period", m, d), ("window", m, d),
                            ("bw_avg", m, d)]
        port_entries = self._port_entries[op] = [
            (index, d, lv) for index, (_port, entries) in enumerate(self.ports)
            for entry_op, d, lv in entries if entry_op == op]
        columns += [("real", index, lv, d) for index, d, lv in port_entries]
        return PartTable(columns)

    def table_rows(self, op: str, moves: OrderMoves,
                   moves_int: OrderMoves) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``energy_tables[op]`` and ``latency_tables[op]`` for many analyses at
        once (:func:`kiln.hw.operand_batch.analyse_orders`; ``moves_int`` under the integer
        spatial mapping): per memory level its energy (word accesses as
        :func:`kiln.hw.cost.word_accesses` counts them) and effective fill; the movement
        figures and per-port transfer cycles the latency terms read."""
        memories = self.memories[op]
        mem_op = self.layer.links[op]
        energies, effective = [], []
        for m, memory in enumerate(memories):
            accesses = {}
            for d in DIRS:
                amount, bits = moves.amount[m][d], moves.precision[m][d]
                moving = (amount != 0) & (bits != 0)
                bandwidth = memory.bandwidth(mem_op, d)
                if bandwidth is None:
                    if moving.any():
                        raise MappingError(f"{memory.name} ({mem_op}): no port serves {d}, "
                                           "but the mapping moves data that way")
                    accesses[d] = np.zeros(len(amount))
                    continue
                bw_min, bw_max = bandwidth
                words = (np.ceil(amount * bits / bw_min) * (bw_min / bw_max)
                         * moves.count[m][d] * moves.unit_count[m + 1])
                accesses[d] = np.where(moving, np.trunc(words), 0.0)
            reads = accesses[RD_LOW] + accesses[RD_HIGH]
            writes = accesses[WR_LOW] + accesses[WR_HIGH]
            energies.append(reads * memory.read_energy + writes * memory.write_energy)
            effective.append(moves.effective_bits[m + 1] / memory.size_bits)
        energy_rows = np.stack(energies + effective, axis=1)
        columns = [moves_int.data_bits[1].astype(np.float64)]
        for m in range(len(memories)):
            for d in DIRS:
                columns += [moves_int.count[m][d], moves_int.period[m][d],
                            moves_int.window[m][d], moves_int.bw_avg[m][d]]
        ports = [port for port, _ in self.ports]
        for index, d, lv in self._port_entries[op]:
            columns.append(np.ceil(moves_int.amount[lv][d] * moves_int.precision[lv][d]
                                   / ports[index].bandwidth_max))
        return energy_rows, np.stack(columns, axis=1)

    # --- the coupled terms, over all mappings at once -------------------------------

    def score(self, energy_rows: dict[str, list[int]], latency_rows: dict[str, list[int]],
              total_cycles: float) -> tuple[np.ndarray, np.ndarray]:
        """(energy pJ, latency cycles) per mapping; ``*_rows[op][i]`` is the row of mapping
        ``i``'s analysis of ``op`` in ``energy_tables[op]`` / ``latency_tables[op]``."""
        energy_of = {op: self.energy_tables[op].array()[np.asarray(energy_rows[op])]
                     for op in self.ops}
        latency_of = {op: self.latency_tables[op].array()[np.asarray(latency_rows[op])]
                      for op in self.ops}
        energy = self._energy(energy_of)
        flags = self._double_buffered(energy_of)
        stall, real = self._stalls(latency_of, flags)
        onload, offload = self._loading(latency_of, real, stall, total_cycles)
        latency = total_cycles + stall + onload + offload + self.drain
        return energy, latency

    def _column(self, figures: dict[str, np.ndarray], tables: dict[str, PartTable], op: str,
                name: tuple) -> np.ndarray:
        return figures[op][:, tables[op].columns[name]]

    def _energy(self, energy_of: dict[str, np.ndarray]) -> np.ndarray:
        # memory_energy's breakdown: memories in the order first met (operands in order,
        # levels upwards), then evaluate sums each memory's operands, then the memories.
        breakdown: dict[str, list[np.ndarray]] = {}
        for op in self.ops:
            for m, memory in enumerate(self.memories[op]):
                breakdown.setdefault(memory.name, []).append(
                    self._column(energy_of, self.energy_tables, op, ("energy", m)))
        total = None
        for terms in breakdown.values():
            per_memory = terms[0]
            for term in terms[1:]:
                per_memory = per_memory + term
            total = per_memory if total is None else total + per_memory
        return self.mac_energy + total

    def _double_buffered(self, energy_of: dict[str, np.ndarray]) -> dict:
        effective = {(op, lv): self._column(energy_of, self.energy_tables, op, ("effective", lv))
                     for op in self.ops for lv in range(self.levels[op])}
        shared = dict(effective)
        for members in self.groups:
            total = None
            for member in members:
                total = effective[member] if total is None else total + effective[member]
            for member in members:
                shared[member] = total
        flags = {}
        for op in self.ops:
            rows = len(energy_of[op])
            flags[op] = [np.zeros(rows, dtype=bool)]
            for lv in range(self.levels[op]):
                half = shared[(op, lv)] <= 0.5
                room = ~half & (effective[(op, lv)] <= 1 - shared[(op, lv)])
                flags[op].append(half | room)
                if room.any():
                    for member in self.group_of.get((op, lv), []):
                        shared[member] = np.where(room, shared[member] + effective[(op, lv)],
                                                  shared[member])
        return flags

    def _stalls(self, latency_of: dict[str, np.ndarray], flags: dict) -> tuple[np.ndarray, dict]:
        def col(op: str, *name) -> np.ndarray:
            return self._column(latency_of, self.latency_tables, op, name)

        rows = len(next(iter(latency_of.values())))
        worst = np.zeros(rows)
        real_cycles: dict[tuple[str, int, str], np.ndarray] = {}
        for index, (_port, entries) in enumerate(self.ports):
            activities = []
            for op, d, lv in entries:
                real = col(op, "real", index, lv, d)
                real_cycles[(op, lv, d)] = real
                count = col(op, "count", lv, d)
                period = col(op, "period", lv, d)
                buffered = flags[op][lv + 1] if d in _HIGH else flags[op][lv]
                allowed = np.where(buffered, period, col(op, "window", lv, d))
                activities.append((count != 0, real, allowed, period, count))
            if not activities:
                continue
            active = np.array([a[0] for a in activities])
            stalls = np.array([(real - allowed) * (count - 1)
                               for _, real, allowed, _, count in activities])
            stalls = np.where(active, stalls, 0.0)
            n_active = active.sum(axis=0)
            single = stalls.sum(axis=0)
            port_worst = np.where(n_active == 1, single, 0.0)
            several = n_active >= 2
            if several.any():
                windows = np.where(active, np.array(
                    [allowed * (count - 1) for _, _, allowed, _, count in activities]), 0.0)
                positive = np.where(stalls > 0, stalls, 0.0).sum(axis=0)
                negative = np.where(stalls <= 0, stalls, 0.0).sum(axis=0)
                union = self._window_union(activities, active, several)
                combined = positive + np.maximum(0.0, negative + windows.sum(axis=0) - union)
                port_worst = np.where(several, combined, port_worst)
            worst = np.maximum(worst, port_worst)
        return worst, real_cycles

    @staticmethod
    def _window_union(activities: list, active: np.ndarray, several: np.ndarray) -> np.ndarray:
        """updating_window_union per mapping: the first active movement that may use its
        whole period decides; otherwise the exact union, worked out per mapping."""
        union = np.zeros(active.shape[1])
        decided = np.zeros(active.shape[1], dtype=bool)
        for k, (_, _, allowed, period, count) in enumerate(activities):
            takes = several & active[k] & ~decided & (period == allowed)
            union = np.where(takes, period * count, union)
            decided |= takes
        for i in np.nonzero(several & ~decided)[0]:
            listed = [PortActivity(0, int(allowed[i]), int(period[i]), int(count[i]), "")
                      for k, (_, _, allowed, period, count) in enumerate(activities)
                      if active[k, i]]
            union[i] = updating_window_union(listed)
        return union

    def _loading(self, latency_of: dict[str, np.ndarray], real_cycles: dict,
                 stall: np.ndarray, total_cycles: float) -> tuple[np.ndarray, np.ndarray]:
        layer = self.layer
        rows = len(stall)
        zero = np.zeros(rows)
        no = np.zeros(rows, dtype=bool)
        # key -> (cycles, shared by two inputs, present)
        loads: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        computing = total_cycles + stall
        for _index, (port, entries) in enumerate(self.ports):
            kept = [(op, d, lv) for op, d, lv in entries
                    if not (op == layer.output and d in (RD_LOW, WR_HIGH))]
            if not kept:
                continue
            counts = [self._column(latency_of, self.latency_tables, op, ("count", lv, d))
                      for op, d, lv in kept]
            once = [c == 1 for c in counts]
            repeated = [c > 1 for c in counts]
            busy = zero
            for (op, d, lv), rep in zip(kept, repeated, strict=True):
                bw_avg = self._column(latency_of, self.latency_tables, op, ("bw_avg", lv, d))
                busy = busy + np.where(rep, bw_avg, 0.0)
            surplus = np.maximum(0.0, (port.bandwidth_max - busy) / port.bandwidth_max
                                 * computing)
            needed = np.array([real_cycles.get((op, lv, d), zero) for op, d, lv in kept],
                              dtype=np.float64)
            minimum = np.array([np.ceil(self._column(latency_of, self.latency_tables, op,
                                                     ("bits_mac",)) / port.bandwidth_max)
                                for op, _, _ in kept])
            once_mask = np.array(once)
            remaining = needed.copy()
            # reduce_ordered: the longest once-transfers first (stable among equals).
            order = np.argsort(np.where(once_mask, -needed, np.inf), axis=0, kind="stable")
            columns = np.arange(rows)
            for position in range(len(kept)):
                index = order[position]
                take = once_mask[index, columns] & (surplus > 0)
                reducible = np.maximum(0.0, needed[index, columns] - minimum[index, columns])
                reduction = np.where(take, np.minimum(reducible, surplus), 0.0)
                remaining[index, columns] -= reduction
                surplus = surplus - reduction
            shared_flag = port.shared_by_two_inputs
            for k, key in enumerate(kept):
                op, d, lv = key
                present = once[k] | repeated[k]
                value = np.where(once[k], remaining[k], np.where(repeated[k], needed[k], 0.0))
                old = loads.get((op, lv, d))
                if old is None:
                    loads[(op, lv, d)] = (value, np.where(present, shared_flag, False), present)
                else:
                    loads[(op, lv, d)] = (np.where(present, value, old[0]),
                                          np.where(present, shared_flag, old[1]),
                                          present | old[2])

        def load(key: tuple) -> tuple[np.ndarray, np.ndarray]:
            found = loads.get(key)
            if found is None:
                return zero, no
            value, shared, present = found
            return np.where(present, value, 0.0), shared & present

        individual, half_shared, shared = {}, {}, {}
        for op in layer.inputs:
            individual[op], half_shared[op], shared[op] = zero, zero, zero
            for lv in range(self.levels[op] - 1):
                cycles_a, shared_a = load((op, lv, WR_HIGH))
                cycles_b, shared_b = load((op, lv + 1, RD_LOW))
                longest = np.maximum(cycles_a, cycles_b)
                neither = ~shared_a & ~shared_b
                both = shared_a & shared_b
                individual[op] = np.where(neither, individual[op] + longest, individual[op])
                shared[op] = np.where(both, shared[op] + longest, shared[op])
                half_shared[op] = np.where(~neither & ~both, longest, half_shared[op])
        if len(layer.inputs) == 1:
            onload = individual[layer.inputs[0]]
        else:
            a, b = layer.inputs[0], layer.inputs[1]
            option_a = shared[a] + np.maximum(shared[b] + half_shared[b] + individual[b],
                                              half_shared[a] + individual[a])
            option_b = shared[b] + np.maximum(shared[a] + half_shared[a] + individual[a],
                                              half_shared[b] + individual[b])
            onload = np.minimum(option_a, option_b)
        out = layer.output
        offload = zero
        for lv in range(self.levels[out] - 1):
            offload = offload + np.maximum(load((out, lv, RD_HIGH))[0],
                                           load((out, lv + 1, WR_LOW))[0])
        return onload, offload
