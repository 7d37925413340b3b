"""The cost of one layer on one accelerator under one mapping (ZigZag 3.9.1's model).

Written as the equations it implements, one term per function. What each operand holds
and moves per memory level comes from :mod:`kiln.hw.analysis` (its vocabulary: arch
levels, r / ir / pr loops, the four directions of data movement).

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
from dataclasses import dataclass, field

import numpy as np

from kiln.errors import KilnError
from kiln.hw.accelerator import Accelerator, Port
from kiln.hw.analysis import (
    DIRS,
    RD_HIGH,
    RD_LOW,
    WR_HIGH,
    WR_LOW,
    Analysis,
    Movement,
    OperandAnalysis,
    Relevancy,
    analyse,
    relevancy,
)
from kiln.hw.mapping import SpatialMapping, TemporalMapping
from kiln.hw.workload import Layer


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
) -> Cost:
    """Energy, latency and utilization of ``layer`` on ``hw`` under one mapping.

    ``spatial`` may hold fractional unrollings (energy uses it); ``spatial_int`` is its
    integer version (latency uses it), ``spatial_user`` the unrolling before the remainder
    split (the systolic drain uses it). Use :func:`kiln.hw.mapping.fit_spatial` to get them.
    """
    rel = rel or relevancy(layer)
    spatial_int = spatial_int or spatial
    spatial_user = spatial_user or spatial_int
    analysis = analyse(layer, hw, spatial, temporal, rel, cache)
    same = spatial_int.key() == spatial.key()
    analysis_int = analysis if same else analyse(layer, hw, spatial_int, temporal, rel, cache)

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
