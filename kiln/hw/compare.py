"""Architecture comparison: one workload on several accelerators, or on a parameter sweep.

A sweep names one parameter and its values::

    array.D1=8,16,32            # size of array dimension D1
    memory.sram_2MB.size=...    # a memory's size in bits
    memory.dram.bandwidth=0.5,1,2  # scale every port of a memory

    >>> from kiln.hw.compare import sweep_accelerators                 # doctest: +SKIP
    >>> variants = sweep_accelerators(hw, "array.D1=8,16,32")          # doctest: +SKIP
    >>> results = compare(workload, variants, objective="latency")     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kiln.errors import ConfigError
from kiln.hw.accelerator import Accelerator
from kiln.hw.mapping import MappingConstraints
from kiln.hw.workload import Workload
from kiln.hw.workload_mapper import WorkloadResult, map_workload
from kiln.report.plots import save_figure


def sweep_accelerators(hw: Accelerator, spec: str) -> list[Accelerator]:
    """Variants of ``hw`` along one parameter (see the module docstring for the syntax)."""
    if "=" not in spec:
        raise ConfigError(f"sweep '{spec}': expected PARAMETER=V1,V2,... such as array.D1=8,16,32")
    name, values_text = spec.split("=", 1)
    try:
        values = [float(v) for v in values_text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"sweep '{spec}': values must be numbers") from None
    if not values:
        raise ConfigError(f"sweep '{spec}': no values")
    parts = name.strip().split(".")
    variants = []
    for value in values:
        label = f"{hw.name}[{name}={value:g}]"
        if parts[0] == "array" and len(parts) == 2:
            if parts[1] not in hw.array_sizes:
                raise ConfigError(f"sweep '{spec}': {hw.name} has no array dimension '{parts[1]}'")
            if value < 1 or not value.is_integer():
                raise ConfigError(f"sweep '{spec}': an array size must be a whole number >= 1")
            variants.append(hw.with_changes(array_sizes={parts[1]: int(value)}, name=label))
        elif parts[0] == "memory" and len(parts) == 3 and parts[2] in ("size", "bandwidth"):
            if parts[1] not in {m.name for m in hw.memories}:
                raise ConfigError(f"sweep '{spec}': {hw.name} has no memory '{parts[1]}'")
            if value <= 0:
                raise ConfigError(f"sweep '{spec}': values must be > 0")
            if parts[2] == "size":
                variants.append(hw.with_changes(memory_sizes={parts[1]: int(value)}, name=label))
            else:
                variants.append(hw.with_changes(bandwidth_scale={parts[1]: value}, name=label))
        else:
            raise ConfigError(
                f"sweep '{spec}': parameter must be array.DIM, memory.NAME.size or "
                f"memory.NAME.bandwidth"
            )
    return variants


def compare(
    workload: Workload,
    accelerators: list[Accelerator],
    objective: str = "latency",
    mapping: dict[str, MappingConstraints] | None = None,
    lpf_limit: int | None = 6,
    refine: int = 0,
    on_accelerator: Callable[[int, Accelerator], None] | None = None,
) -> list[WorkloadResult]:
    """Map the workload on every accelerator with the same search settings."""
    results = []
    for index, hw in enumerate(accelerators):
        if on_accelerator:
            on_accelerator(index, hw)
        results.append(
            map_workload(_fresh(workload), hw, objective, mapping, lpf_limit, refine=refine)
        )
    return results


def _fresh(workload: Workload) -> Workload:
    from dataclasses import replace

    return replace(workload, layers=[layer.with_precision() for layer in workload.layers])


def comparison_rows(results: list[WorkloadResult]) -> list[dict]:
    """One summary row per accelerator: totals and the average utilization."""
    rows = []
    for result in results:
        ideal = sum(r.cost.ideal_cycles for r in result.layers)
        rows.append(
            {
                "accelerator": result.accelerator,
                "latency_cycles": result.latency_cycles,
                "energy_pj": result.energy_pj,
                "edp": result.latency_cycles * result.energy_pj,
                "utilization": ideal / result.latency_cycles if result.latency_cycles else 0.0,
            }
        )
    return rows


def plot_comparison(results: list[WorkloadResult], out_dir: Path) -> list[Path]:
    """PNG plots: latency and energy per layer, energy by memory and operand, utilization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    layers = [r.layer for r in results[0].layers]
    names = [_label(name) for name in layers]
    x = np.arange(len(layers))
    width = 0.8 / len(results)
    longest = max((len(name) for name in names), default=0)
    for metric, label, file in (
        ("latency_cycles", "latency (cycles)", "latency_per_layer.png"),
        ("energy_pj", "energy (µJ)", "energy_per_layer.png"),
        ("utilization", "MAC utilization", "utilization_per_layer.png"),
    ):
        # Room below the axis for the full layer names, rotated.
        figure, axes = plt.subplots(figsize=(max(6.4, 0.32 * len(layers) + 2),
                                             3.6 + 0.075 * longest), dpi=110)
        for index, result in enumerate(results):
            values = [getattr(r.cost, metric) for r in result.layers]
            if metric == "energy_pj":
                values = [v / 1e6 for v in values]
            axes.bar(x + index * width, values, width, label=result.accelerator)
        axes.set_xticks(x + 0.4 - width / 2, names, rotation=90, fontsize=7)
        axes.set_xlim(-0.6, len(layers) - 0.2)
        axes.set_ylabel(label)
        axes.set_title(f"{label} per layer")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        paths.append(_save(figure, out_dir / file))
        plt.close(figure)
    paths.append(_energy_breakdown(results, out_dir / "energy_breakdown.png"))
    return paths


def _label(name: str) -> str:
    """A layer name short enough for an axis, cut in the middle (both ends identify it)."""
    name = name.strip("/")
    return name if len(name) <= 36 else name[:17] + "…" + name[-18:]


def breakdown_colours(keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """A colour per (memory level, operand): 20 distinct hues (tab20's strong colours, then
    its light ones), one per memory level, its operands that hue blended towards white."""
    import matplotlib.pyplot as plt
    import numpy as np

    hues = plt.get_cmap("tab20").colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    memories = sorted({memory for memory, _ in keys})
    colours = {}
    for memory_index, memory in enumerate(memories):
        operands = sorted(op for m, op in keys if m == memory)
        base = np.array(hues[order[memory_index % 20]])
        for op_index, op in enumerate(operands):
            blend = 0.55 * op_index / max(len(operands) - 1, 1)
            colours[(memory, op)] = tuple(float(v) for v in base * (1 - blend) + blend)
    return colours


def _energy_breakdown(results: list[WorkloadResult], path: Path) -> Path:
    """Stacked bars of energy by memory level and operand: one hue per memory level (a
    shade per operand), MACs in black, the legend beside the plot, in µJ."""
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted({(memory, op) for r in results for layer in r.layers
                   for memory, ops in layer.cost.energy_by_level.items() for op in ops})
    memories = sorted({memory for memory, _ in keys})
    colours = breakdown_colours(keys)
    figure, axes = plt.subplots(figsize=(6.4 + 0.5 * len(results), 4.6), dpi=110)
    bottoms = np.zeros(len(results))
    for memory in memories:
        for op in [op for m, op in keys if m == memory]:
            colour = colours[(memory, op)]
            values = np.array([sum(layer.cost.energy_by_level.get(memory, {}).get(op, 0.0)
                                   for layer in r.layers) for r in results]) / 1e6
            axes.bar(range(len(results)), values, bottom=bottoms, label=f"{memory}: {op}",
                     color=colour, edgecolor="white", linewidth=0.4)
            bottoms += values
    macs = np.array([sum(layer.cost.mac_energy_pj for layer in r.layers) for r in results]) / 1e6
    axes.bar(range(len(results)), macs, bottom=bottoms, label="MACs", color="black")
    axes.set_xticks(range(len(results)), [r.accelerator for r in results], rotation=20,
                    ha="right", fontsize=8)
    axes.set_ylabel("energy (µJ)")
    axes.set_title("energy by memory level and operand")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return path


def _save(figure, path: Path) -> Path:
    return save_figure(figure, path)
