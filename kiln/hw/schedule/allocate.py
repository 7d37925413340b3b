"""Which core runs which layer: a default, an earliest-finish-time greedy, exhaustive search
when the space is small, and NSGA-II over latency and energy through Optuna (so a study can
live in kiln's SQLite or PostgreSQL storage like ``kiln search``). Also the tiling search:
rows per tile and fused or layer-by-layer.

A layer's *options* are: each single core that can run it, and for MAC layers all compute
cores that can run it with the output channels split across them ("K") or with row tiles
dealt to them in turn ("OY").

    >>> result = search_allocation(graph, system, base_plan, method="exhaustive")  # doctest: +SKIP
    >>> result.plan.allocation, result.schedule.latency                             # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.errors import ConfigError, KilnError
from kiln.hw.schedule.costs import TileCoster
from kiln.hw.schedule.graph import Graph
from kiln.hw.schedule.scheduler import Schedule, schedule_tiles
from kiln.hw.schedule.system import System
from kiln.hw.schedule.tiles import Plan, Tile, fit_rows
from kiln.study_storage import open_storage

OBJECTIVES = ("latency", "energy", "edp")
EXHAUSTIVE_LIMIT = 20_000


@dataclass(frozen=True)
class Option:
    """One way to place a layer: its cores and how it is split across them."""

    cores: tuple[int, ...]
    split: str = "K"

    @property
    def label(self) -> str:
        if len(self.cores) == 1:
            return f"core {self.cores[0]}"
        return f"cores {','.join(map(str, self.cores))} ({self.split})"


@dataclass
class SearchResult:
    plan: Plan
    schedule: Schedule
    evaluated: int
    method: str
    front: list[dict] = field(default_factory=list)  # NSGA-II: the Pareto front found


def score(schedule: Schedule, objective: str) -> float:
    if objective == "latency":
        return schedule.latency
    if objective == "energy":
        return schedule.energy_pj
    if objective == "edp":
        return schedule.latency * schedule.energy_pj
    raise ConfigError(f"unknown objective '{objective}' (choose {', '.join(OBJECTIVES)})")


def _key(schedule: Schedule, objective: str) -> tuple:
    # Ties (within 1e-9) go to the other figure, then to the first found: deterministic.
    other = schedule.energy_pj if objective == "latency" else schedule.latency
    return (round(score(schedule, objective), 6), round(other, 6))


def layer_options(graph: Graph, system: System,
                  split_options: bool = True) -> dict[str, list[Option]]:
    """Every way each layer can be placed on this system."""
    result: dict[str, list[Option]] = {}
    for node in graph.nodes:
        able = [core.id for core in system.cores_for(node.op_type)]
        if not able:
            raise ConfigError(f"layer '{node.name}' ({node.op_type}): no core of "
                              f"{system.source} can run it")
        options = [Option((core,)) for core in able]
        if split_options and node.is_mac and len(able) > 1:
            options.append(Option(tuple(able), "K"))
            if node.out_rows > 1 and not node.needs_all_rows:
                options.append(Option(tuple(able), "OY"))
        result[node.name] = options
    return result


def default_plan(graph: Graph, system: System, split: str = "K") -> Plan:
    """MAC layers on every compute core, split by output channels (``split="K"``: each core
    loads only its share of the weights, as Stream does), or (``"auto"``) by output rows
    where the feature maps outweigh the weights (each core then reads only its rows); other
    layers on the first core that runs them."""
    options = layer_options(graph, system)
    plan = Plan({})
    for node in graph.nodes:
        choices = options[node.name]
        maps = node.output_bits + node.in_channels * node.in_rows * node.in_cols * node.act_bits
        by_rows = split == "auto" and maps > node.weight_count * node.weight_bits
        wanted = "OY" if by_rows else "K"
        spread = [o for o in choices if len(o.cores) > 1 and o.split == wanted] or [
            o for o in choices if len(o.cores) > 1]
        _apply(plan, node.name, spread[0] if spread else choices[0])
    return plan


def _apply(plan: Plan, name: str, option: Option) -> None:
    plan.allocation[name] = option.cores
    if option.split == "OY":
        plan.split[name] = "OY"
    else:
        plan.split.pop(name, None)


def _with(base: Plan, choices: dict[str, Option]) -> Plan:
    plan = base.copy()
    for name, option in choices.items():
        _apply(plan, name, option)
    return plan


def greedy(graph: Graph, system: System, base: Plan, coster: TileCoster,
           objective: str = "latency") -> Plan:
    """Earliest finish time, layer by layer in topological order: each layer takes the option
    that finishes it first given where its inputs are, its weights' load from DRAM, the
    transfers over the narrowest link, and what the cores already have to do
    (energy/edp: the option adding the least energy, or energy × finish)."""
    options = layer_options(graph, system)
    ready = {core.id: 0.0 for core in system.compute_cores}
    finish: dict[str, float] = {}
    where: dict[str, tuple[int, ...]] = {}
    dram = system.offchip
    plan = base.copy()
    for node in graph.nodes:
        best = None
        for option in options[node.name]:
            parts = len(option.cores) if option.split == "K" else 1
            try:
                cycles, energy = _layer_cost(graph, system, node, option, coster)
            except KilnError:
                continue  # does not map there
            # Each core loads its share of the weights (a row split multicasts them once).
            weights = node.weight_count * node.weight_bits / parts
            load = weights / dram.bandwidth
            arrive = 0.0
            for producer in node.inputs:
                done = finish[producer]
                if set(where[producer]) != set(option.cores):
                    widths = [link.bandwidth for core in option.cores
                              for link in system.route(where[producer][0], core)]
                    done += graph.node(producer).output_bits / min(widths, default=math.inf)
                arrive = max(arrive, done)
            if not node.inputs:
                arrive = node.in_channels * node.in_rows * node.in_cols * node.act_bits / \
                    dram.bandwidth
            start = max([arrive, load] + [ready[c] for c in option.cores])
            end = start + cycles
            added = energy + weights * dram.read_pj_per_bit
            figure = {"latency": (end, added), "energy": (added, end),
                      "edp": (added * end, end)}[objective]
            if best is None or figure < best[0]:
                best = (figure, option, end)
        if best is None:
            raise ConfigError(f"layer '{node.name}' maps on none of the cores that run it")
        _, option, end = best
        _apply(plan, node.name, option)
        for core in option.cores:
            ready[core] = end
        finish[node.name] = end
        where[node.name] = option.cores
    return plan


def _layer_cost(graph: Graph, system: System, node, option: Option,
                coster: TileCoster) -> tuple[float, float]:
    """(cycles on the slowest core, energy on all) of a layer placed by an option, with the
    row tiles and input-channel chunks the scheduler would use."""
    trial = Plan({node.name: option.cores}, split={node.name: option.split})
    fit_rows(graph, trial, system)
    rows = trial.rows.get(node.name) or node.out_rows
    chunks = trial.chunks.get(node.name, 1)
    parts = len(option.cores) if option.split == "K" else 1
    channels = math.ceil(node.out_channels / parts)
    in_channels = (0, math.ceil(node.in_channels / chunks)) if chunks > 1 else None
    tile = Tile(-1, node.name, 0, option.cores[0], (0, rows), (0, channels), [], [], 0, 0, 0, 0,
                in_channels=in_channels, chunks=chunks)
    cycles, energy = coster.cost(node, tile, option.cores[0])
    count = math.ceil(node.out_rows / rows) * chunks
    if option.split == "OY":
        count = math.ceil(count / len(option.cores))
    return cycles * count, energy * count * (parts if option.split == "K" else 1)


def exhaustive(graph: Graph, system: System, base: Plan, coster: TileCoster,
               objective: str = "latency", progress: Callable[[int, int], None] | None = None,
               split_options: bool = True) -> SearchResult:
    """Every combination of layer options (refused above EXHAUSTIVE_LIMIT schedules)."""
    options = layer_options(graph, system, split_options)
    names = [node.name for node in graph.nodes]
    total = math.prod(len(options[n]) for n in names)
    if total > EXHAUSTIVE_LIMIT:
        raise ConfigError(f"exhaustive allocation would evaluate {total:,} schedules (limit "
                          f"{EXHAUSTIVE_LIMIT:,})", hint="use --allocate greedy or nsga2")
    best = None
    evaluated = 0
    for combination in itertools.product(*(options[n] for n in names)):
        plan = _with(base, dict(zip(names, combination, strict=True)))
        try:
            schedule = schedule_tiles(graph, system, plan, coster)
        except KilnError:
            continue  # this allocation does not fit; others may
        evaluated += 1
        if progress:
            progress(evaluated, total)
        if best is None or _key(schedule, objective) < _key(best[1], objective):
            best = (plan, schedule)
    if best is None:
        raise ConfigError("no allocation of this workload fits the system")
    return SearchResult(best[0], best[1], evaluated, "exhaustive")


def nsga2(graph: Graph, system: System, base: Plan, coster: TileCoster,
          objective: str = "latency", trials: int = 60, seed: int = 0,
          storage: str | None = None, study_name: str = "kiln-schedule",
          progress: Callable[[int, int], None] | None = None,
          seed_plans: list[Plan] | None = None) -> SearchResult:
    """NSGA-II over (latency, energy) with Optuna; the objective picks from the front. Seeded
    with the greedy and default plans so it never returns worse than them."""
    import optuna

    options = layer_options(graph, system)
    names = [node.name for node in graph.nodes]
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, trials // 4)))
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage or f"memory://{study_name}-{seed}",
                                                    heartbeat=False),
        directions=["minimize", "minimize"], sampler=sampler, load_if_exists=True)
    for plan in seed_plans or []:
        params = {}
        for name in names:
            chosen = Option(plan.allocation[name], plan.split.get(name, "K"))
            if chosen in options[name]:
                params[name] = options[name].index(chosen)
        if len(params) == len(names):
            study.enqueue_trial(params)
    found: dict[int, tuple[Plan, Schedule]] = {}

    def run(trial: optuna.Trial) -> tuple[float, float]:
        choices = {name: options[name][trial.suggest_categorical(
            name, list(range(len(options[name]))))] for name in names}
        plan = _with(base, choices)
        try:
            schedule = schedule_tiles(graph, system, plan, coster)
        except KilnError as error:
            raise optuna.TrialPruned(str(error)) from None
        found[trial.number] = (plan, schedule)
        if progress:
            progress(len(found), trials)
        return schedule.latency, schedule.energy_pj

    study.optimize(run, n_trials=trials, catch=())
    if not found:
        raise ConfigError("no allocation NSGA-II tried fits the system")
    best = min(found.values(), key=lambda pair: _key(pair[1], objective))
    front = [{"trial": t.number, "latency_cycles": t.values[0], "energy_pj": t.values[1]}
             for t in study.best_trials]
    return SearchResult(best[0], best[1], len(found), "nsga2", front)


def cut_candidates(graph: Graph, limit: int = 3) -> list[int]:
    """Where a fused group may be cut: before a layer whose feature map is smaller than its
    producer's (a resolution change), at most ``limit`` of them, evenly spread."""
    positions = [i for i, node in enumerate(graph.nodes) if i and node.inputs and
                 node.out_rows < graph.node(node.inputs[0]).out_rows]
    if len(positions) > limit:
        step = len(positions) / limit
        positions = [positions[int(k * step)] for k in range(limit)]
    return positions


def search_cuts(graph: Graph, system: System, plan: Plan, schedule: Schedule,
                coster: TileCoster, objective: str = "latency") -> SearchResult:
    """Fusion cut points, greedily: cut the fused group before a resolution change where that
    makes the schedule better, keep the cut, try the next."""
    names = [node.name for node in graph.nodes]
    best = (plan, schedule)
    evaluated = 0
    cuts: list[int] = []
    for position in cut_candidates(graph):
        trial = sorted(cuts + [position])
        candidate = best[0].copy()
        bounds = [0, *trial, len(names)]
        candidate.groups = [names[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        try:
            result = schedule_tiles(graph, system, candidate, coster)
        except KilnError:
            continue
        evaluated += 1
        if _key(result, objective) < _key(best[1], objective):
            best, cuts = (candidate, result), trial
    return SearchResult(best[0], best[1], evaluated, "cuts")


def search_tiling(graph: Graph, system: System, plan: Plan, coster: TileCoster,
                  objective: str = "latency",
                  rows_options: tuple[int | None, ...] = (None, 16, 8, 4),
                  alternatives: tuple[Plan, ...] = (),
                  progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Rows per tile and fusion: layer by layer, then every layer in one fused group at
    fewer and fewer rows per tile (stopping once finer tiles stop helping) for the plan's
    allocation; each alternative allocation from the rows found best on (refined only while
    it is the best so far); then fusion cut points for the best; then the best with
    core-to-core data routed the other way. The best schedule by the objective."""
    best = None
    evaluated = 0
    names = [node.name for node in graph.nodes]
    for number, allocation in enumerate((plan, *alternatives)):
        previous = None
        options = rows_options
        if number and best is not None:
            found = next(iter(best[0].rows.values()), None) if best[0].groups else None
            options = rows_options[rows_options.index(found):] if found in rows_options \
                else rows_options
        for rows in options:
            candidate = plan.copy()
            candidate.allocation = dict(allocation.allocation)
            candidate.split = dict(allocation.split)
            candidate.rows = {} if rows is None else {name: rows for name in names}
            candidate.groups = [] if rows is None else [names]
            try:
                schedule = schedule_tiles(graph, system, candidate, coster)
            except KilnError:
                continue
            evaluated += 1
            if progress:
                progress(evaluated, len(rows_options) * (1 + len(alternatives)))
            if best is None or _key(schedule, objective) < _key(best[1], objective):
                best = (candidate, schedule)
            if rows is not None and previous is not None and \
                    _key(schedule, objective) > previous:
                break  # finer tiles stopped helping
            if number and best[1] is not schedule:
                break  # an alternative that loses at the best rows is not refined further
            previous = _key(schedule, objective)
    if best is None:
        raise ConfigError("no tiling of this workload fits the system")
    if best[0].groups:
        found = search_cuts(graph, system, best[0], best[1], coster, objective)
        evaluated += found.evaluated
        best = (found.plan, found.schedule)
    other = best[0].copy()  # the best tiling with core-to-core data routed the other way
    other.routes = "links" if other.routes == "share" else "share"
    try:
        schedule = schedule_tiles(graph, system, other, coster)
        evaluated += 1
        if _key(schedule, objective) < _key(best[1], objective):
            best = (other, schedule)
    except KilnError:
        pass
    return SearchResult(best[0], best[1], evaluated, "tiling")
