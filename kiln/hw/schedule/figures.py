"""The figures of a schedule: latency, energy by kind, DRAM traffic, memory per core, link
use, and a lower bound on the latency with the gap to it.

The lower bound is the slowest of: the DRAM traffic that cannot be avoided (weights once,
the network input, the final outputs) over the DRAM bandwidth; the busiest core's compute
(tile cycles under this allocation); and the critical path through the tiles'
dependencies (compute only).

    >>> figures = schedule_figures(schedule)     # doctest: +SKIP
    >>> figures["latency_cycles"], figures["lower_bound"]["cycles"]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict


def hardware(resources: tuple[str, ...]) -> list[str]:
    """The links, buses and DRAM port of a transfer (not the scheduler's own budgets)."""
    return [r for r in resources if not r.startswith("share ")]


def memory_profile(schedule, core_id: int) -> list[tuple[float, int]]:
    """(cycle, bits held from then on) for one core, at every change."""
    events = []
    for buffer in schedule.buffers:
        if buffer.core == core_id:
            events.append((buffer.start, buffer.bits))
            end = schedule.latency if buffer.end is None else buffer.end
            events.append((end, -buffer.bits))
    level, profile = 0, []
    for time, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        if profile and profile[-1][0] == time:
            profile[-1] = (time, level)
        else:
            profile.append((time, level))
    return profile


def lower_bound(schedule) -> dict:
    system, graph = schedule.system, schedule.graph
    dram = system.offchip
    consumers = graph.consumers()
    essential = 0
    # The network input: only the rows some layer reads (a strided 1x1 convolution skips
    # rows, and no schedule needs to fetch them). Readers of inputs of one shape count as
    # readers of one tensor: that can only undercount, and a bound may.
    input_rows: dict[tuple[int, int, int, int], set[int]] = defaultdict(set)
    for node in graph.nodes:
        essential += node.weight_count * node.weight_bits
        if not node.inputs:
            shape = (node.in_channels, node.in_rows, node.in_cols, node.act_bits)
            input_rows[shape].update(node.rows_read(0, node.out_rows))
        if not consumers[node.name]:
            essential += node.output_bits
    for (channels, _, columns, bits), rows in input_rows.items():
        essential += channels * len(rows) * columns * bits
    # The narrowest way into DRAM: its port or the widest route of any core to it.
    widest_route = max(min([link.bandwidth for link in system.route(c.id, dram.id)] or
                           [math.inf]) for c in system.compute_cores)
    dram_width = min(dram.bandwidth, widest_route)
    dram_cycles = essential / dram_width
    busy: dict[int, float] = defaultdict(float)
    for entry in schedule.tiles:
        busy[entry.tile.core] += entry.end - entry.start
    busiest = max(busy.values()) if busy else 0.0
    finish: dict[int, float] = {}
    for entry in sorted(schedule.tiles, key=lambda e: e.tile.order):
        ready = max((finish[d] for d in entry.tile.deps), default=0.0)
        finish[entry.tile.id] = ready + (entry.end - entry.start)
    critical = max(finish.values()) if finish else 0.0
    parts = {"dram_traffic": dram_cycles, "busiest_core": busiest, "critical_path": critical}
    bound_by = max(parts, key=parts.get)
    return {"cycles": parts[bound_by], "bound_by": bound_by, "terms": parts,
            "essential_dram_bits": essential, "dram_bits_per_cycle": dram_width}


def schedule_figures(schedule) -> dict:
    """Everything a report prints about one schedule, JSON-ready."""
    latency = schedule.latency
    system = schedule.system
    dram_id = system.offchip_core_id
    compute = sum(e.energy_pj for e in schedule.tiles)
    dram_energy = link_energy = 0.0
    dram_bits = 0
    by_reason: dict[str, int] = defaultdict(int)
    link_by_name = system.channels()
    for transfer in schedule.transfers:
        links = sum(link_by_name[r].pj_per_bit * transfer.bits
                    for r in transfer.resources if r in link_by_name) * (
            1 + len(transfer.also_to))  # a bus transfer's energy counts each receiver
        link_energy += links
        dram_energy += transfer.energy_pj - links
        if dram_id in (transfer.source, transfer.target):
            dram_bits += transfer.bits
            by_reason[transfer.reason] += transfer.bits
    peaks = {}
    for core in system.compute_cores:
        profile = memory_profile(schedule, core.id)
        peaks[core.id] = max((level for _, level in profile), default=0)
    busy: dict[str, float] = defaultdict(float)
    capacity = {name: link.bandwidth for name, link in link_by_name.items()}
    capacity["dram"] = system.offchip.bandwidth
    for transfer in schedule.transfers:
        for resource in hardware(transfer.resources):  # bandwidth-cycles used over those it has
            busy[resource] += (transfer.end - transfer.start) * transfer.rate / capacity[
                resource]
    labels = system.channel_labels()
    labels["dram"] = "DRAM port"
    core_busy: dict[int, float] = defaultdict(float)
    for entry in schedule.tiles:
        core_busy[entry.tile.core] += entry.end - entry.start
    bound = lower_bound(schedule)
    return {
        "latency_cycles": latency,
        "energy_pj": compute + dram_energy + link_energy,
        "energy_breakdown_pj": {"compute_and_core_memories": compute, "dram": dram_energy,
                                "links": link_energy},
        "dram_traffic_bits": dram_bits,
        "dram_traffic_by_reason_bits": dict(by_reason),
        "spills": schedule.spills,
        "tiles": len(schedule.tiles),
        "transfers": len(schedule.transfers),
        "peak_memory_bits": {str(k): v for k, v in peaks.items()},
        "peak_memory_bits_max": max(peaks.values(), default=0),
        "core_utilization": {str(k): (v / latency if latency else 0.0)
                             for k, v in sorted(core_busy.items())},
        "link_utilization": {labels.get(k, k): (v / latency if latency else 0.0)
                             for k, v in sorted(busy.items())},
        "lower_bound": bound,
        "gap_to_lower_bound": (latency / bound["cycles"] - 1.0) if bound["cycles"] else 0.0,
        "priced_shapes": schedule.priced_shapes,
    }


def layer_table(schedule) -> list[dict]:
    """One row per layer: cores, tiles, first start, last end, energy."""
    rows: dict[str, dict] = {}
    for entry in schedule.tiles:
        tile = entry.tile
        row = rows.setdefault(tile.node, {"layer": tile.node, "op": schedule.graph.node(
            tile.node).op_type, "cores": set(), "tiles": 0, "start": math.inf, "end": 0.0,
            "energy_pj": 0.0})
        row["cores"].add(tile.core)
        row["tiles"] += 1
        row["start"] = min(row["start"], entry.start)
        row["end"] = max(row["end"], entry.end)
        row["energy_pj"] += entry.energy_pj
    result = []
    for node in schedule.graph.nodes:
        row = rows[node.name]
        row["cores"] = sorted(row["cores"])
        result.append(row)
    return result
