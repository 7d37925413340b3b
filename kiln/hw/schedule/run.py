"""``kiln schedule`` as a function: read the inputs, choose the allocation and tiling, build
the schedule, validate it.

    >>> result = schedule("resnet18-conv1x4",
    ...                   "examples/hardware/multicore/quad_core_heterogeneous.yaml",
    ...                   allocate="exhaustive", granularity="rows=8")   # doctest: +SKIP
    >>> result.schedule.latency, result.figures["lower_bound"]        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import ConfigError
from kiln.hw.schedule.allocate import (
    OBJECTIVES,
    default_plan,
    exhaustive,
    greedy,
    nsga2,
    score,
    search_tiling,
)
from kiln.hw.schedule.costs import TileCoster
from kiln.hw.schedule.figures import schedule_figures
from kiln.hw.schedule.graph import Graph
from kiln.hw.schedule.inputs import load_schedule_workload, plan_from_stream_mapping
from kiln.hw.schedule.scheduler import Schedule, schedule_tiles
from kiln.hw.schedule.system import System, load_system
from kiln.hw.schedule.tiles import Plan
from kiln.hw.schedule.validate import validate

ALLOCATORS = ("fixed", "greedy", "exhaustive", "nsga2")


@dataclass
class ScheduleResult:
    schedule: Schedule
    figures: dict
    plan: Plan
    allocate: str
    granularity: str
    evaluated: int = 1
    notes: list[str] = field(default_factory=list)
    front: list[dict] = field(default_factory=list)


def parse_granularity(text: str) -> int | None | str:
    """``layer`` → None (whole layers), ``rows=N`` → N, ``rows=all`` → 1 (row by row),
    ``auto`` → searched."""
    if text == "layer":
        return None
    if text == "auto":
        return "auto"
    if text.startswith("rows="):
        value = text.removeprefix("rows=")
        if value == "all":
            return 1
        if value.isdigit() and int(value) >= 1:
            return int(value)
    raise ConfigError(f"--granularity {text}: choose layer, rows=N (N >= 1), rows=all or auto")


def _tiled(plan: Plan, graph: Graph, rows: int | None) -> Plan:
    plan = plan.copy()
    names = [node.name for node in graph.nodes]
    if rows is None:
        plan.rows, plan.groups = {}, []
    else:
        plan.rows = {name: rows for name in names}
        if not plan.groups:
            plan.groups = [names]  # every layer in one fused group
    return plan


def schedule(workload: str | Graph, system: str | Path | System, *,
             mapping: str | Path | None = None, granularity: str = "layer",
             allocate: str = "greedy", objective: str = "latency", trials: int = 60,
             seed: int = 0, storage: str | None = None, precision: str = "fixed",
             cache_dir: str | Path | None = None, effort: str = "fast",
             single_route: bool = False,
             progress: Callable[[str, int, int], None] | None = None) -> ScheduleResult:
    """Schedule a workload on a multi-core system (``kiln schedule``); ``single_route``:
    every transfer on one route, as Stream moves data (by default a long core-to-core
    transfer may be split over routes that share no link)."""
    if allocate not in ALLOCATORS:
        raise ConfigError(f"--allocate {allocate}: choose {', '.join(ALLOCATORS)}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective}: choose {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be >= 1")
    rows = parse_granularity(granularity)
    system = system if isinstance(system, System) else load_system(system)
    graph = workload if isinstance(workload, Graph) else load_schedule_workload(
        str(workload), precision=precision)
    coster = TileCoster(system, objective if objective != "edp" else "latency", cache_dir,
                        effort)
    notes: list[str] = []
    base = default_plan(graph, system)
    if mapping is not None:
        base, notes = plan_from_stream_mapping(mapping, graph, system, base)
    elif allocate == "fixed":
        notes.append("no --mapping: fixed allocation = MAC layers split over every compute "
                     "core (output channels), other layers on the first core that runs them")

    base.multipath = not single_route

    def report(stage: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)

    if mapping is not None and granularity == "layer" and base.rows:
        rows = "mapping"  # the mapping's own tiling
    tiled = base if rows == "mapping" else _tiled(base, graph, None if rows == "auto" else rows)
    evaluated, front = 1, []
    if allocate == "greedy":
        tiled = _keep_tiling(greedy(graph, system, base, coster, objective), tiled)
    elif allocate == "exhaustive":
        found = exhaustive(graph, system, tiled, coster, objective, report("allocation"))
        tiled, evaluated = found.plan, found.evaluated
    elif allocate == "nsga2":
        seeds = [tiled, _keep_tiling(greedy(graph, system, base, coster, objective), tiled)]
        found = nsga2(graph, system, tiled, coster, objective, trials, seed, storage,
                      progress=report("allocation"), seed_plans=seeds)
        tiled, evaluated, front = found.plan, found.evaluated, found.front
    if rows == "auto":
        # Also with the layers whose feature maps outweigh their weights split by rows,
        # when the allocation was not given.
        alternatives = () if mapping is not None or allocate != "fixed" else (
            default_plan(graph, system, split="auto"),)
        found = search_tiling(graph, system, tiled, coster, objective,
                              alternatives=alternatives, progress=report("tiling"))
        tiled, evaluated = found.plan, evaluated + found.evaluated
        result_schedule = found.schedule
    else:
        result_schedule = schedule_tiles(graph, system, tiled, coster)
    validate(result_schedule)
    figures = schedule_figures(result_schedule)
    figures["objective"] = {"name": objective, "value": score(result_schedule, objective)}
    return ScheduleResult(result_schedule, figures, result_schedule.plan, allocate, granularity,
                          evaluated, notes, front)


def _keep_tiling(allocated: Plan, tiled: Plan) -> Plan:
    """The allocation of one plan with the rows, groups and chunks of another."""
    plan = tiled.copy()
    plan.allocation = dict(allocated.allocation)
    plan.split = dict(allocated.split)
    return plan
