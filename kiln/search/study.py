"""Studies: Optuna samplers over a search space, stored in SQLite or PostgreSQL.

* ``grid`` (brute force) enqueues the points of the space in order, as waiting trials that
  workers take one at a time: no point is run twice, none is lost.
* ``random``, ``tpe`` and ``nsga2`` are Optuna's samplers, seeded; TPE and NSGA-II see the
  constraints (``Trial.set_constraint``), so a configuration that breaks one is never "best",
  however good its objective.
* ``[study].trials`` is a budget of *evaluations*: a configuration evaluated before (in
  this study, or in another with the same evaluation on the same storage) is reused, not
  evaluated again, and costs nothing (:mod:`kiln.search.reuse` says why that keeps the
  samplers sound). The study stops when the budget is spent or every point is known.
* Multi-fidelity (``[evaluation].low_fidelity_samples``): each candidate is first scored on
  that many samples; Optuna's ThresholdPruner stops the ones clearly over the accuracy
  constraint (its MedianPruner, the clearly worse ones for an accuracy objective), and only
  survivors are scored on the rest.
* Every finished trial is committed to the storage. A search killed at any moment is
  continued by running it again (``resume=True`` also takes over a dead run's trial at
  once, instead of after the heartbeat's grace period): finished trials are kept, the
  trial that was running is run again (its result is reused if it was stored).
* Any number of processes share one study: ``workers > 1`` on this machine, and on other
  machines the same command with ``--storage postgresql://...``. The first creates the
  study, later ones join it (the same config; a different one is refused, naming what
  differs). Each trial decides under the study's lock whether it may evaluate
  (:mod:`kiln.search.claims`), so the budget is exact and no configuration is evaluated
  twice, whatever the number of processes, and a process that dies leaves nothing that
  blocks the others.

    >>> result = run_search(load_config("examples/search/convnet_mixed.toml"))   # doctest: +SKIP
    >>> result.best[0]["params"], result.evaluations                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from kiln.errors import ConfigError, KilnError
from kiln.search.claims import (
    spent,
    study_lock,
    wait_until_settled,
)
from kiln.search.config import SearchConfig, parse_config
from kiln.search.objectives import Evaluator
from kiln.search.results import SearchResult, collect, trial_params
from kiln.search.reuse import (
    EvaluationCache,
    params_key,
    uniform_points,
)
from kiln.search.trials import best_text, free_retries, grid_points, optimize
from kiln.study_storage import HEARTBEAT_SECONDS, open_storage, redact

__all__ = ["SearchResult", "collect", "make_sampler", "run_search"]


def make_sampler(config: SearchConfig, worker: int = 0):
    import optuna

    seed = config.study.seed + 1000 * worker
    strategy = config.study.strategy
    if strategy in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            n_startup_trials=min(10, max(2, config.study.trials // 5)),
        )
    return optuna.samplers.NSGAIISampler(
        seed=seed,
        population_size=min(20, max(4, config.study.trials // 4)),
    )


def make_pruner(config: SearchConfig, evaluator):
    """Optuna's pruner for the low-fidelity pass (None without one)."""
    import optuna

    if evaluator.low_samples is None:
        return None
    limit = evaluator.prune_limit()
    if limit is not None:  # the reported value is the accuracy drop in points
        return optuna.pruners.ThresholdPruner(upper=limit)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def _watch_parent() -> None:
    """End this worker when the process that started it is gone (SIGKILL of ``kiln
    search`` leaves no orphan evaluating on its own); its running trial is then retried."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kiln-parent-watch").start()


def _worker(config_data: dict[str, Any], storage_url: str) -> None:
    """One worker process: its own model, data and sampler on the shared study."""
    import torch

    _watch_parent()
    torch.set_num_threads(1)
    config = parse_config(config_data, config_data.get("source", "<config>"))
    try:
        _work(config, storage_url, Evaluator)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent reports it
        raise SystemExit(130) from None


def _work(config: SearchConfig, storage_url: str, evaluator_type) -> None:
    import optuna

    evaluator = evaluator_type(config)
    storage = open_storage(storage_url)
    study = optuna.load_study(
        study_name=config.study.name,
        storage=storage,
        pruner=make_pruner(config, evaluator),
    )
    with study_lock(storage, config.study.name):
        study.sampler = make_sampler(config, _join_index(study))
    cache = EvaluationCache(storage, config) if config.study.deduplicate else None
    optimize(study, evaluator, config, cache, None)


def _join_index(study) -> int:
    """This process's number among all that have worked on the study (call under the
    study's lock): its sampler's seed is offset by it, so that processes joining one study
    propose different configurations rather than the same sequence."""
    index = int(study.user_attrs.get("processes", 0))
    study.set_user_attr("processes", index + 1)
    return index


#: Fields a process joining a study may set differently from the one that created it.
JOIN_MAY_DIFFER = ("study.out", "study.storage", "source")


def config_differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = ""
                       ) -> list[str]:
    """Dotted names whose values differ between two configs (as JSON dicts), with both."""
    differences = []
    for name in sorted(set(stored) | set(current)):
        dotted = f"{prefix}{name}"
        if dotted in JOIN_MAY_DIFFER:
            continue
        old, new = stored.get(name), current.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, dotted + ".")
        elif old != new:
            differences.append(f"{dotted}: the study has {json.dumps(old)}, this config "
                               f"{json.dumps(new)}")
    return differences


def prepare_study(config: SearchConfig, storage_url: str, resume: bool, evaluator):
    """Create the study, or join it (any number of processes, on any machines, run the same
    config on one study); seed a new one. Returns (study, storage).

    A config that differs from the study's stored one is refused, naming each difference;
    with ``resume`` the budget (``study.trials``) may differ (a stopped study continued
    with more). ``resume`` also fails at once the running trials of a dead run (their
    heartbeat stopped), instead of after the grace period, and queues them again."""
    import optuna

    choices = evaluator.space.choices()
    storage = open_storage(storage_url)
    study = optuna.create_study(
        study_name=config.study.name,
        storage=storage,
        load_if_exists=True,
        directions=config.directions,
        sampler=make_sampler(config),
        pruner=make_pruner(config, evaluator),
    )
    current = json.loads(config.model_dump_json())
    with study_lock(storage, config.study.name):  # one creator, however many start at once
        stored = study.user_attrs.get("config")
        if stored is not None:
            differences = config_differences(stored, current)
            if resume:
                differences = [d for d in differences if not d.startswith("study.trials:")]
            if differences:
                raise ConfigError(
                    f"study '{config.study.name}' in {redact(storage_url)} was created with "
                    f"another config: {'; '.join(differences)}",
                    hint="use the study's config to join it, or change [study].name")
            if resume:
                _take_over_dead_trials(study, storage, storage_url, len(choices))
            study.sampler = make_sampler(config, _join_index(study))
            return study, storage
        _join_index(study)  # the creator is process 0
        study.set_user_attr("config", current)
        study.set_user_attr("baseline_accuracy", evaluator.baseline)
        study.set_user_attr("baseline", evaluator.baseline_description)
        study.set_user_attr("space_size", math.prod(len(o) for o in choices.values()))
        if not study.get_trials(deepcopy=False):
            first: list[dict[str, Any]] = []
            if config.study.seed_uniform:
                first += uniform_points(choices)
            if config.study.strategy == "grid":
                first += grid_points(choices)[:max(1, config.study.trials)]
            seen: set[str] = set()
            for point in first:
                if params_key(point) not in seen:
                    seen.add(params_key(point))
                    study.enqueue_trial(point, skip_if_exists=False)
    return study, storage


#: A running trial whose heartbeat is older than this belongs to a dead process (a live
#: one beats every HEARTBEAT_SECONDS): ``--resume`` takes it over at once.
DEAD_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS


def _take_over_dead_trials(study, storage, storage_url: str, dimensions: int) -> None:
    """Fail the running trials of dead processes and queue their configurations again
    (a live process's trials are left alone)."""
    from optuna.trial import TrialState

    quick = open_storage(storage_url, grace_seconds=DEAD_AFTER_SECONDS)
    stale = set(quick._get_stale_trial_ids(study._study_id))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial._trial_id not in stale:
            continue
        params = trial_params(trial)
        storage.set_trial_user_attr(trial._trial_id, "killed", True)
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # another process failed it first (its heartbeat went stale)
            continue
        if len(params) == dimensions:
            study.enqueue_trial(params, skip_if_exists=False)


def run_search(
    config: SearchConfig,
    *,
    storage: str | None = None,
    workers: int = 1,
    resume: bool = False,
    on_progress: Callable[[float, int, str], None] | None = None,
    evaluator=None,
) -> SearchResult:
    """Run (or continue) a study until ``[study].trials`` evaluations are spent or every
    point of the space is known. ``evaluator`` replaces the model evaluation (benchmarks
    use a table of precomputed results)."""
    storage_url = storage or config.storage_url
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and evaluator is not None:
        raise ConfigError("a custom evaluator runs in one process only")
    evaluator = evaluator or Evaluator(config)
    study, opened = prepare_study(config, storage_url, resume, evaluator)
    cache = EvaluationCache(opened, config) if config.study.deduplicate else None
    if spent(study.get_trials(deepcopy=False)) < config.study.trials:
        if workers == 1:
            optimize(study, evaluator, config, cache, on_progress)
        else:
            _run_workers(config, storage_url, workers, study, on_progress)
    wait_until_settled(study)  # other processes' last evaluations belong to the result
    if free_retries(study.get_trials(deepcopy=False), cache):
        # a dead process's trial failed while this one settled: its retry only reuses
        optimize(study, evaluator, config, cache, on_progress)
    _refuse_if_every_trial_failed(study)
    return collect(config, storage_url, evaluator)


def _refuse_if_every_trial_failed(study) -> None:
    """A study none of whose trials finished is an error, with the first trial's reason."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state.name in ("COMPLETE", "PRUNED") for t in trials):
        return
    failed = [t for t in trials if t.state.name == "FAIL"]
    if failed:
        reason = failed[0].user_attrs.get("error", "an error outside kiln (see the log)")
        raise KilnError(f"every trial of study '{study.study_name}' failed ({len(failed)}); "
                        f"the first: {str(reason)[:300]}")


def _run_workers(config: SearchConfig, storage_url: str, workers: int, study,
                 on_progress: Callable | None) -> None:
    context = multiprocessing.get_context("spawn")
    data = json.loads(config.model_dump_json())
    processes = [context.Process(target=_worker, args=(data, storage_url))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            if on_progress:
                on_progress(spent(study.get_trials(deepcopy=False)), config.study.trials,
                            best_text(study, config))
    except BaseException:  # Ctrl-C or SIGTERM of this process alone: stop the workers too
        _stop_workers(processes)
        raise
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise KilnError(
            f"{len(failed)} of {len(processes)} search workers failed (exit codes {failed})",
            hint="run again with --resume to finish the study",
        )


def _stop_workers(processes: list, grace_seconds: float = 10.0) -> None:
    """Interrupt every live worker (its running trial fails and is retried on --resume),
    and kill those that do not exit within the grace period."""
    import os
    import signal

    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
