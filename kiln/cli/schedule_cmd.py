"""``kiln schedule``: a network on a multi-core system, layer by layer or layer-fused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, human, print_json, progress, table
from kiln.report.markdown import format_size


def schedule(
    workload: Annotated[str, typer.Argument(help=(
        "An .onnx file (every operator: convolutions, matrix products, pooling, element-wise),"
        " a built-in workload (resnet18-conv1x4, resnet18-conv1x4-independent: the lab-4 "
        "layers), or anything 'kiln map' reads (its MAC layers)."))],
    system: Annotated[Path, typer.Option(
        "--system", help="Stream's system YAML: cores (ZigZag core files), offchip_core_id, "
        "core_connectivity links and buses in bits/cycle (see examples/hardware/multicore/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for schedule.json, timeline.png, "
                                      "memory.png (and trace.json with --trace).")],
    mapping: Annotated[Path | None, typer.Option(
        "--mapping", help="Stream's mapping YAML: core_allocation and inter_core_tiling per "
        "layer, fused_groups with intra_core_tiling (used with --allocate fixed; other "
        "allocators start from it).")] = None,
    granularity: Annotated[str, typer.Option(
        "--granularity", help="layer (whole layers, one after another), rows=N (N output "
        "rows per tile, all layers fused), rows=all (row by row), or auto (searched).")
    ] = "layer",
    allocate: Annotated[str, typer.Option(
        "--allocate", help="fixed (the mapping's, or MAC layers split over all compute "
        "cores), greedy (earliest finish time), exhaustive (every combination, small "
        "cases), nsga2 (Optuna, latency and energy).")] = "greedy",
    objective: Annotated[str, typer.Option(
        "--objective", help="latency, energy or edp: what the allocation search minimises.")
    ] = "latency",
    trials: Annotated[int, typer.Option("--trials", help="NSGA-II trials.")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="NSGA-II seed (same seed, same "
                                      "result).")] = 0,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna storage for NSGA-II (sqlite:///f.db or postgresql://...; "
        "default: in memory).")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fixed (8-bit activations and weights) or onnx (data moves with "
        "its ONNX element type, as Stream does).")] = "fixed",
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Folder of priced tile shapes, reused across runs.")] = None,
    single_route: Annotated[bool, typer.Option(
        "--single-route", help="Move every transfer over one route, as Stream does (by "
        "default a long core-to-core transfer is split over routes that share no link, one "
        "hop longer at most, when that delivers it sooner).")] = False,
    trace: Annotated[bool, typer.Option("--trace", help="Also write trace.json (Perfetto, "
                                        "chrome://tracing).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Schedule a network's tiles on a multi-core system: which core runs which layer, tiles
    with exact row dependencies, transfers over links and the DRAM bus, memory per core.
    Prints latency, energy, peak memory and the gap to a lower bound; every schedule passes an
    independent validator.

    Example: kiln schedule resnet18-conv1x4 --system
    examples/hardware/multicore/quad_core_heterogeneous.yaml --allocate exhaustive
    --granularity rows=8 --out out/lab4
    """
    from kiln.atomic import atomic_folder
    from kiln.hw.schedule.figures import layer_table
    from kiln.hw.schedule.run import schedule as run_schedule
    from kiln.hw.schedule.views import write_views

    check_out_folder(out)
    with progress(quiet=as_json, transient=True) as bar:
        task = bar.add_task("scheduling", total=None, status="")

        def advance(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total, status="")

        result = run_schedule(str(workload), system, mapping=mapping, granularity=granularity,
                              allocate=allocate, objective=objective, trials=trials, seed=seed,
                              storage=storage, precision=precision, cache_dir=cache,
                              single_route=single_route, progress=advance)
    extra = {"allocate": allocate, "granularity": granularity, "objective": objective,
             "evaluated_schedules": result.evaluated, "notes": result.notes,
             "pareto_front": result.front, "validated": True}
    with atomic_folder(out, marker="schedule.json") as folder:
        files = write_views(result.schedule, folder, trace=trace, extra=extra)
    files = {k: str(out / Path(v).name) for k, v in files.items()}
    figures = result.figures
    if as_json:
        print_json({**extra, "figures": figures, "plan": result.plan.describe(),
                    "files": files})
        return
    rows = [[r["layer"], r["op"], ",".join(map(str, r["cores"])), r["tiles"], human(r["start"]),
             human(r["end"]), human(r["energy_pj"])] for r in layer_table(result.schedule)]
    console.print(table(f"{result.schedule.graph.name} on {result.schedule.system.name}",
                        ["layer", "op", "cores", "tiles", "start (cyc)", "end (cyc)",
                         "energy (pJ)"], rows,
                        right_align={"tiles", "start (cyc)", "end (cyc)", "energy (pJ)"}))
    bound = figures["lower_bound"]
    peak = figures["peak_memory_bits"]
    console.print(
        f"latency {figures['latency_cycles']:,.0f} cycles · energy "
        f"{human(figures['energy_pj'])}pJ (DRAM {human(figures['energy_breakdown_pj']['dram'])}"
        f"pJ) · DRAM traffic {format_size(figures['dram_traffic_bits'] / 8)} · peak memory "
        + ", ".join(f"core {k} {format_size(v / 8)}" for k, v in peak.items()))
    console.print(
        f"lower bound {bound['cycles']:,.0f} cycles ({bound['bound_by'].replace('_', ' ')}); "
        f"gap {figures['gap_to_lower_bound']:.1%} · {result.evaluated} schedule(s) evaluated "
        f"· validated")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {', '.join(files.values())}")


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule)
