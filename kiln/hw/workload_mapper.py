"""Mapping a whole workload: each distinct layer once, optionally on several processes and
with an on-disk cache, so identical layers anywhere (in one network, across networks and
across runs) are searched once.

Example:
    >>> from kiln.hw import load_accelerator, load_workload
    >>> hw = load_accelerator("examples/hardware/tpu_like.yaml")   # doctest: +SKIP
    >>> result = map_workload(load_workload("resnet18"), hw, workers=2,
    ...                       cache_dir="~/.cache/kiln/mappings")   # doctest: +SKIP
    >>> result.latency_cycles                                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from kiln.errors import ConfigError
from kiln.hw.accelerator import Accelerator
from kiln.hw.cost import MappingError
from kiln.hw.mapper import MappingResult, map_layer
from kiln.hw.mapping import MappingConstraints, constraints_for
from kiln.hw.workload import Layer, Workload

# Part of every cache key: bump it whenever the cost model or the search changes what a
# layer's best mapping is, so that no stale result is ever read back.
CACHE_VERSION = "mapper-3"


@dataclass
class WorkloadResult:
    """Best mappings of every layer of a workload, and the totals."""

    workload: str
    accelerator: str
    objective: str
    layers: list[MappingResult]
    not_costed: list[tuple[str, str]]
    cached: int = 0  # layers whose mapping came from the on-disk cache

    @property
    def energy_pj(self) -> float:
        return sum(r.cost.energy_pj for r in self.layers)

    @property
    def latency_cycles(self) -> float:
        return sum(r.cost.latency_cycles for r in self.layers)

    def as_dict(self) -> dict:
        return {
            "workload": self.workload,
            "accelerator": self.accelerator,
            "objective": self.objective,
            "energy_pj": self.energy_pj,
            "latency_cycles": self.latency_cycles,
            "layers": [
                {**r.cost.as_dict(), "evaluated": r.evaluated, "orderings": r.orderings}
                for r in self.layers
            ],
            "not_costed": [{"name": n, "op": op} for n, op in self.not_costed],
            "layers_from_cache": self.cached,
        }


def layer_signature(layer: Layer, constraints: MappingConstraints) -> tuple:
    """What a layer's best mapping depends on, apart from the accelerator and options."""
    spatial = constraints.spatial.key() if constraints.spatial else None
    return (
        tuple(layer.sizes.items()),
        tuple((k, tuple(v)) for k, v in layer.operand_dims.items()),
        tuple(sorted(layer.precision.items())),
        tuple(sorted(layer.relations.items())),
        tuple(sorted(layer.pr_sizes.items())),
        tuple(sorted(layer.links.items())),
        spatial,
        tuple(constraints.ordering),
    )


@dataclass
class _Task:
    """One distinct layer to map, with everything the search needs (sent to a worker)."""

    layer: Layer
    constraints: MappingConstraints
    options: tuple  # objective, lpf_limit, spatial_keep, mixed, exhaustive, refine


def _solve(hw: Accelerator, task: _Task) -> MappingResult:
    objective, lpf_limit, spatial_keep, mixed, exhaustive, refine = task.options
    try:
        return map_layer(task.layer, hw, objective, task.constraints, lpf_limit, spatial_keep,
                         mixed, exhaustive, refine)
    except (MappingError, ConfigError) as error:
        source, name = task.constraints.source, task.layer.name
        if not source or source in error.message:
            raise
        # Say which layer and which mapping entry: the user's file is what to fix.
        message = error.message.removeprefix(f"layer '{name}' ")
        raise type(error)(f"layer '{name}', mapping {source}: {message}",
                          hint=error.hint) from None


def _cache_key(hw: Accelerator, task: _Task) -> str:
    text = repr((CACHE_VERSION, repr(hw), layer_signature(task.layer, task.constraints),
                 task.options))
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_read(folder: Path, key: str) -> MappingResult | None:
    path = folder / key[:2] / f"{key}.pkl"
    try:
        result = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return None  # absent or unreadable: search again
    return result if isinstance(result, MappingResult) else None


def _cache_write(folder: Path, key: str, result: MappingResult) -> None:
    target = folder / key[:2] / f"{key}.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    with os.fdopen(handle, "wb") as stream:
        pickle.dump(result, stream)
    os.replace(temporary, target)  # whole or not at all, even with parallel runs


# What ``kiln map`` searches by default; the search's hardware objective uses the same, so
# a trial's latency and energy are what ``kiln map`` reports for the winner.
DEFAULT_LPF_LIMIT = 6
DEFAULT_REFINE = 4


def map_workload(
    workload: Workload,
    hw: Accelerator,
    objective: str = "latency",
    mapping: dict[str, MappingConstraints] | None = None,
    lpf_limit: int | None = 6,
    spatial_keep: int | None = 3,
    mixed: bool = False,
    refine: int = 0,
    exhaustive: bool = False,
    on_layer: Callable[[int, int, Layer], None] | None = None,
    workers: int = 1,
    cache_dir: str | Path | None = None,
) -> WorkloadResult:
    """Map every layer; layers with the same loop nest, widths and constraints are mapped once.

    ``on_layer(done, to_search, layer)`` reports progress over the distinct layers to
    search. ``workers`` > 1 maps them on that many processes (one core each), with the
    same result as one. ``cache_dir`` keeps each distinct layer's result on disk, keyed by
    the content of the layer, its constraints, the accelerator and the options.

    >>> result = map_workload(load_workload("resnet18"), hw)   # doctest: +SKIP
    >>> result.latency_cycles                                 # doctest: +SKIP
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    options = (objective, lpf_limit, spatial_keep, mixed, exhaustive, refine)
    workload_dims = {dim for layer in workload.layers for dim in layer.sizes}
    tasks: dict[tuple, _Task] = {}
    signatures: list[tuple] = []
    for layer in workload.layers:
        constraints = constraints_for(layer, mapping)
        unknown = sorted(constraints.dims() - workload_dims)
        if unknown:
            # A dimension the layer lacks is skipped, as ZigZag does (a 'default' entry
            # serves convs and GEMMs alike); one that no layer has is a typo.
            raise ConfigError(f"{constraints.source}: dimension {unknown[0]} is in no layer of "
                              f"workload '{workload.name}' (layer '{layer.name}' uses this "
                              f"entry; its dimensions: {', '.join(layer.sizes)})")
        if constraints.links:
            layer.links = {op: constraints.links.get(op, mem) for op, mem in layer.links.items()}
        signature = layer_signature(layer, constraints)
        signatures.append(signature)
        tasks.setdefault(signature, _Task(layer, constraints, options))

    solved: dict[tuple, MappingResult] = {}
    folder = Path(cache_dir).expanduser() if cache_dir is not None else None
    keys = {sig: _cache_key(hw, task) for sig, task in tasks.items()} if folder else {}
    for signature in tasks:
        found = _cache_read(folder, keys[signature]) if folder else None
        if found is not None:
            solved[signature] = found
    cached = len(solved)
    pending = [sig for sig in tasks if sig not in solved]

    done = 0

    def progress(signature: tuple) -> None:
        nonlocal done
        if on_layer:
            on_layer(done, len(pending), tasks[signature].layer)
        done += 1

    if workers == 1 or len(pending) < 2:
        for signature in pending:
            progress(signature)
            solved[signature] = _solve(hw, tasks[signature])
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a forked worker would inherit whatever threads the caller runs (torch).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context) as pool:
            futures = {pool.submit(_solve, hw, tasks[sig]): sig for sig in pending}
            for future in as_completed(futures):
                progress(futures[future])
                solved[futures[future]] = future.result()
    if folder:
        for signature in pending:
            _cache_write(folder, keys[signature], solved[signature])

    results = []
    for layer, signature in zip(workload.layers, signatures, strict=True):
        first = solved[signature]
        results.append(replace(first, layer=layer.name, cost=replace(first.cost, layer=layer.name)))
    return WorkloadResult(workload.name, hw.name, objective, results, list(workload.not_costed),
                          cached=cached)
