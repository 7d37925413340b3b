"""Pictures and files of a schedule: a Gantt timeline per core and link, memory over time per
core (PNG), the schedule as JSON, and a Chrome/Perfetto trace (open it at ui.perfetto.dev
or chrome://tracing).

    >>> write_views(schedule, Path("out/schedule"), trace=True)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from kiln.hw.schedule.figures import hardware, layer_table, memory_profile, schedule_figures

_REASON_COLOURS = {"weights": "#8c564b", "input": "#1f77b4", "push": "#17becf",
                   "spill": "#d62728", "output": "#2ca02c"}


def _layer_colours(schedule) -> dict[str, str]:
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    return {node.name: matplotlib.colors.to_hex(palette(i % 20))
            for i, node in enumerate(schedule.graph.nodes)}


def plot_timeline(schedule, path: Path) -> None:
    """One row per core (tiles coloured by layer) and per link, bus and the DRAM port
    (transfers coloured by why they move)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    system = schedule.system
    rows = [f"core {c.id} ({c.name})" for c in system.compute_cores]
    resources = sorted({r for t in schedule.transfers for r in hardware(t.resources)},
                       key=lambda r: (r == "dram", r))
    labels = system.channel_labels()
    labels["dram"] = "DRAM port"
    rows += [labels.get(r, r) for r in resources]
    index = {name: i for i, name in enumerate(rows)}
    colours = _layer_colours(schedule)
    figure, axes = plt.subplots(figsize=(13, 1.2 + 0.45 * len(rows)))
    for entry in schedule.tiles:
        core = system.cores[entry.tile.core]
        axes.barh(index[f"core {core.id} ({core.name})"], entry.end - entry.start,
                  left=entry.start, height=0.8, color=colours[entry.tile.node], linewidth=0)
    capacities = {name: link.bandwidth for name, link in system.channels().items()}
    capacities["dram"] = system.offchip.bandwidth
    for transfer in schedule.transfers:
        for resource in hardware(transfer.resources):
            capacity = capacities[resource]
            share = min(1.0, transfer.rate / capacity)  # bar height: share of the bandwidth
            axes.barh(index[labels.get(resource, resource)], transfer.end - transfer.start,
                      left=transfer.start, height=0.8 * share,
                      color=_REASON_COLOURS.get(transfer.reason, "#7f7f7f"), linewidth=0)
    axes.set_yticks(range(len(rows)), rows)
    axes.invert_yaxis()
    axes.set_xlabel("cycle")
    axes.set_xlim(0, schedule.latency * 1.01 or 1)
    axes.set_title(f"{schedule.graph.name} on {system.name}: {schedule.latency:,.0f} cycles")
    layers = [Patch(color=colours[n.name], label=n.name) for n in schedule.graph.nodes][:16]
    moves = [Patch(color=c, label=f"{r} transfer") for r, c in _REASON_COLOURS.items()
             if any(t.reason == r for t in schedule.transfers)]
    axes.legend(handles=layers + moves, fontsize=7, ncol=2, loc="upper left",
                bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_memory(schedule, path: Path) -> None:
    """Bits held on each core over time, against its capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cores = schedule.system.compute_cores
    figure, axes = plt.subplots(len(cores), 1, figsize=(11, 1.6 * len(cores) + 0.6),
                                sharex=True, squeeze=False)
    for axis, core in zip(axes[:, 0], cores, strict=True):
        profile = memory_profile(schedule, core.id)
        times = [0.0] + [t for t, _ in profile]
        levels = [0] + [level / 8192 for _, level in profile]  # KiB
        axis.step(times, levels, where="post", color="#1f77b4")
        axis.fill_between(times, levels, step="post", alpha=0.3, color="#1f77b4")
        axis.axhline(core.memory_bits / 8192, color="#d62728", linestyle="--", linewidth=1)
        axis.set_ylabel("KiB")
        axis.set_title(f"core {core.id} ({core.name}): peak "
                       f"{max(levels) if levels else 0:,.0f} of {core.memory_bits / 8192:,.0f}"
                       " KiB", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("cycle")
    axes[-1, 0].set_xlim(0, schedule.latency * 1.01 or 1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def chrome_trace(schedule) -> dict:
    """The schedule as Chrome trace events (one cycle = one microsecond on the time axis)."""
    system = schedule.system
    events = []
    process = {"cores": 1, "links": 2}
    for name, pid in process.items():
        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})
    for core in system.compute_cores:
        events.append({"ph": "M", "pid": 1, "tid": core.id, "name": "thread_name",
                       "args": {"name": f"core {core.id} ({core.name})"}})
    labels = {name: (number, label) for number, (name, label) in
              enumerate(system.channel_labels().items())}
    labels["dram"] = (len(labels), "DRAM port")
    for tid, label in labels.values():
        events.append({"ph": "M", "pid": 2, "tid": tid, "name": "thread_name",
                       "args": {"name": label}})
    for entry in schedule.tiles:
        events.append({"ph": "X", "pid": 1, "tid": entry.tile.core, "name": entry.tile.node,
                       "ts": entry.start, "dur": entry.end - entry.start,
                       "args": {"tile": entry.tile.label, "energy_pj": entry.energy_pj}})
    for transfer in schedule.transfers:
        for resource in hardware(transfer.resources):
            events.append({"ph": "X", "pid": 2, "tid": labels[resource][0],
                           "name": f"{transfer.reason} {transfer.source}->{transfer.target}",
                           "ts": transfer.start, "dur": transfer.end - transfer.start,
                           "args": {"bits": transfer.bits, "item": str(transfer.item)}})
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def schedule_json(schedule, extra: dict | None = None) -> dict:
    """Figures, plan, per-layer table, and every tile and transfer."""
    per_core: dict[int, int] = defaultdict(int)
    for entry in schedule.tiles:
        per_core[entry.tile.core] += 1
    return {
        "workload": schedule.graph.name,
        "system": schedule.system.name,
        **(extra or {}),
        "figures": schedule_figures(schedule),
        "plan": schedule.plan.describe(),
        "layers": layer_table(schedule),
        "tiles": [{"tile": e.tile.label, "layer": e.tile.node, "core": e.tile.core,
                   "start": e.start, "end": e.end, "energy_pj": e.energy_pj,
                   "depends_on": len(e.tile.deps)} for e in schedule.tiles],
        "transfers": [{"item": list(map(str, t.item)), "from": t.source, "to": t.target,
                       "bits": t.bits, "start": t.start, "end": t.end, "reason": t.reason,
                       "over": list(t.resources)} for t in schedule.transfers],
    }


def write_views(schedule, out: Path, *, trace: bool = False, extra: dict | None = None,
                plots: bool = True) -> dict[str, str]:
    """Write schedule.json, timeline.png, memory.png (and trace.json) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "schedule.json")}
    (out / "schedule.json").write_text(json.dumps(schedule_json(schedule, extra), indent=1))
    if plots:
        plot_timeline(schedule, out / "timeline.png")
        plot_memory(schedule, out / "memory.png")
        files.update(timeline=str(out / "timeline.png"), memory=str(out / "memory.png"))
    if trace:
        (out / "trace.json").write_text(json.dumps(chrome_trace(schedule)))
        files["trace"] = str(out / "trace.json")
    return files
