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

import itertools
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from kiln.errors import ConfigError, KilnError
from kiln.search.claims import (
    decide,
    retried_numbers,
    spent,
    study_lock,
    wait_until_settled,
)
from kiln.search.config import SearchConfig, parse_config
from kiln.search.results import SearchResult, collect, select_best, trial_params, trial_row
from kiln.search.reuse import (
    MAX_CONSECUTIVE_REPEATS,
    EvaluationCache,
    Outcome,
    params_key,
    unevaluated_point,
    uniform_points,
)
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
# One trial
# ---------------------------------------------------------------------------------------


def _objective_function(evaluator, config: SearchConfig, cache: EvaluationCache | None,
                        storage) -> Callable:
    import optuna

    choices = evaluator.space.choices()
    low_fidelity = evaluator.low_samples is not None
    prune_on_drop = low_fidelity and evaluator.prune_limit() is not None
    dedupe = cache is not None

    def stored(key: str, study) -> Outcome:
        """What is stored of a configuration: in the cache, or on a trial whose process
        died after evaluating it (the result goes on the trial first)."""
        if not dedupe:
            return Outcome()
        outcome = cache.lookup(key)
        if outcome.metrics is None:
            for other in study.get_trials(deepcopy=False):
                if (other.user_attrs.get("key") == key
                        and other.user_attrs.get("metrics") is not None):
                    return Outcome(other.user_attrs["metrics"],
                                   other.user_attrs.get("low_fidelity") or outcome.low)
        return outcome

    def objective(trial) -> list[float] | float:
        try:
            return evaluate_trial(trial)
        except KilnError as error:  # Optuna fails the trial; the study keeps the reason
            trial.set_user_attr("error", error.message)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as error:  # a failure of its own, not a dead process (claims.py)
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:300])
            raise

    def evaluate_trial(trial) -> list[float] | float:
        params = {
            name: trial.suggest_categorical(name, options) for name, options in choices.items()
        }
        if "key" in trial.user_attrs:  # a retry of a dead trial: start from a clean slate
            for name in ("key", "metrics", "cost", "reused", "low_fidelity", "constraints"):
                trial.set_user_attr(name, None)
        key = params_key(params)
        # Without deduplication every trial is its own configuration (a unique key).
        claim_key = key if dedupe else f"{key}#{trial.number}"
        kind = decide(storage, trial.study, trial, claim_key, config.study.trials,
                      lambda k: stored(k, trial.study).metrics is not None)
        if kind == "decline":  # the budget is spent: end without evaluating
            trial.set_user_attr("declined", True)
            _account(trial, 0.0)
            trial.study.stop()
            raise optuna.TrialPruned("the budget is spent")
        trial.set_user_attr("key", key)
        known_outcome = stored(key, trial.study)
        cost = 0.0
        low = known_outcome.low
        if low_fidelity and known_outcome.metrics is None:
            if low is None:
                low = evaluator.measure_low(params)
                cost = evaluator.low_fraction
                if dedupe:
                    cache.store(key, Outcome(None, low))
            trial.set_user_attr("low_fidelity", low)
            trial.report(low["accuracy_drop"] if prune_on_drop else low[config.objectives[0]],
                         step=0)
            if trial.should_prune():
                _account(trial, cost)
                raise optuna.TrialPruned(f"low-fidelity {low}")
        metrics = known_outcome.metrics
        if metrics is None:
            metrics = evaluator.measure(params)
            cost = 1.0  # a low-fidelity pass of this trial is part of it
            # The result first, on the trial: a retry after a kill reuses it, and the
            # budget counts it (kiln.search.claims.spent), then the cost, then the cache.
            trial.set_user_attr("metrics", metrics)
            _account(trial, cost)
            if dedupe:
                cache.store(key, Outcome(metrics, low))
        else:  # reused: each storage write is a round trip, so write each attribute once
            trial.set_user_attr("metrics", metrics)
            _account(trial, cost)
        violations = evaluator.violations(metrics)
        trial.set_user_attr("constraints", violations)
        # TPE and NSGA-II read these: an infeasible trial never guides them as a good one.
        for index, value in enumerate(violations):
            trial.set_constraint(f"c{index}", value)
        values = [metrics[name] for name in config.objectives]
        return values if len(values) > 1 else values[0]

    return objective


def _account(trial, cost: float) -> None:
    trial.set_user_attr("cost", cost)
    trial.set_user_attr("reused", cost == 0 and not trial.user_attrs.get("declined"))


# ---------------------------------------------------------------------------------------
# The budget: when to stop, what to enqueue
# ---------------------------------------------------------------------------------------


#: Stop a study after this many failed trials in a row (a broken evaluation, not a bad
#: configuration); run_search then reports the first failure.
MAX_CONSECUTIVE_FAILURES = 5


def _spent(trials) -> float:
    """Evaluations paid for (:func:`kiln.search.claims.spent`)."""
    return spent(trials)


def _failing(trials) -> bool:
    dead = retried_numbers(trials)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")
                and t.number not in dead and not t.user_attrs.get("declined")]
    tail = finished[-MAX_CONSECUTIVE_FAILURES:]
    return len(tail) == MAX_CONSECUTIVE_FAILURES and all(t.state.name == "FAIL" for t in tail)


def _known_keys(trials, cache: EvaluationCache | None) -> set[str]:
    keys = {t.user_attrs.get("key") for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
    if cache is not None:
        keys |= set(cache.known)
    keys.discard(None)
    return keys


def _free_retries(trials, cache: EvaluationCache | None) -> list:
    """Queued trials (a dead process's, run again) whose configuration's result is stored:
    running them costs no evaluation, and each is the only finished record of its point."""
    if cache is None:
        return []
    return [t for t in trials if t.state.name == "WAITING"
            and cache.lookup(params_key(trial_params(t))).metrics is not None]


def _controller(config: SearchConfig, choices: dict[str, list[Any]],
                cache: EvaluationCache | None,
                on_progress: Callable[[float, int, str], None] | None) -> Callable:
    """The callback after every trial: stop when the budget is spent or the space is
    exhausted; keep a grid fed; steer a sampler that repeats itself to a new point."""
    budget = config.study.trials
    size = math.prod(len(options) for options in choices.values())
    dedupe = config.study.deduplicate

    def callback(study, trial) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        spent = _spent(trials)
        if on_progress:
            on_progress(spent, budget, _best_text(study, config))
        known = _known_keys(trials, cache) if dedupe else set()
        if dedupe and len(known) >= size:
            study.set_user_attr("exhausted", True)  # every point known (here or cached)
        if _failing(trials):
            study.stop()
            return
        if spent >= budget - 1e-9 or (dedupe and len(known) >= size):
            if not _free_retries(trials, cache):  # those cost nothing: run them first
                study.stop()
            return
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting:
            return
        if config.study.strategy == "grid":
            queued = {params_key(trial_params(t)) for t in trials}
            for point in _grid_points(choices):
                if params_key(point) not in queued and params_key(point) not in known:
                    study.enqueue_trial(point, skip_if_exists=False)
                    return
        if dedupe:
            finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            repeats = 0
            for finished_trial in reversed(finished):
                if not finished_trial.user_attrs.get("reused"):
                    break
                repeats += 1
            if repeats >= MAX_CONSECUTIVE_REPEATS:
                point = unevaluated_point(choices, known, config.study.seed + len(trials))
                if point is not None:
                    study.enqueue_trial(point, skip_if_exists=False)

    return callback


def _grid_points(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(choices)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())
    ]


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _optimize(study, evaluator, config: SearchConfig, cache: EvaluationCache | None,
              on_progress: Callable | None) -> None:
    import optuna

    choices = evaluator.space.choices()
    objective = _objective_function(evaluator, config, cache, study._storage)
    controller = _controller(config, choices, cache, on_progress)
    while True:
        try:
            study.optimize(objective, n_trials=None,  # the controller stops the study
                           catch=(KilnError,), callbacks=[controller])
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process failed this trial as stale (a heartbeat that came too late)
            # and queued it again; its result is stored, the retry reuses it. Go on.
            continue
        except ValueError as error:
            if "Cannot tell" not in str(error):
                raise
            continue


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

    from kiln.search.objectives import Evaluator

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
    _optimize(study, evaluator, config, cache, None)


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
                first += _grid_points(choices)[:max(1, config.study.trials)]
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
    from kiln.search.objectives import Evaluator

    storage_url = storage or config.storage_url
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and evaluator is not None:
        raise ConfigError("a custom evaluator runs in one process only")
    evaluator = evaluator or Evaluator(config)
    study, opened = prepare_study(config, storage_url, resume, evaluator)
    cache = EvaluationCache(opened, config) if config.study.deduplicate else None
    if _spent(study.get_trials(deepcopy=False)) < config.study.trials:
        if workers == 1:
            _optimize(study, evaluator, config, cache, on_progress)
        else:
            _run_workers(config, storage_url, workers, study, on_progress)
    wait_until_settled(study)  # other processes' last evaluations belong to the result
    if _free_retries(study.get_trials(deepcopy=False), cache):
        # a dead process's trial failed while this one settled: its retry only reuses
        _optimize(study, evaluator, config, cache, on_progress)
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
                on_progress(_spent(study.get_trials(deepcopy=False)), config.study.trials,
                            _best_text(study, config))
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


def _best_text(study, config: SearchConfig) -> str:
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    best, _ = select_best(rows, config.objectives, config.directions)
    if not best:
        return "no feasible trial yet"
    first = best[0]
    return ", ".join(f"{name} {first['metrics'][name]:.4g}" for name in config.objectives)
