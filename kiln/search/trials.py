"""One trial of a study and the callback after each: what a trial evaluates (or reuses, or
declines when the budget is spent), when the study stops, what a grid enqueues next, and
the loop a process runs (:func:`optimize`). :mod:`kiln.search.study` creates the study and
starts the processes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from kiln.errors import KilnError
from kiln.search.claims import decide, retried_numbers, spent
from kiln.search.config import SearchConfig
from kiln.search.results import select_best, trial_params, trial_row
from kiln.search.reuse import (
    MAX_CONSECUTIVE_REPEATS,
    EvaluationCache,
    Outcome,
    params_key,
    unevaluated_point,
)

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


def free_retries(trials, cache: EvaluationCache | None) -> list:
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
        paid = spent(trials)
        if on_progress:
            on_progress(paid, budget, best_text(study, config))
        known = _known_keys(trials, cache) if dedupe else set()
        if dedupe and len(known) >= size:
            study.set_user_attr("exhausted", True)  # every point known (here or cached)
        if _failing(trials):
            study.stop()
            return
        if paid >= budget - 1e-9 or (dedupe and len(known) >= size):
            if not free_retries(trials, cache):  # those cost nothing: run them first
                study.stop()
            return
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting:
            return
        if config.study.strategy == "grid":
            queued = {params_key(trial_params(t)) for t in trials}
            for point in grid_points(choices):
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


def grid_points(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(choices)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())
    ]


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def optimize(study, evaluator, config: SearchConfig, cache: EvaluationCache | None,
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


def best_text(study, config: SearchConfig) -> str:
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    best, _ = select_best(rows, config.objectives, config.directions)
    if not best:
        return "no feasible trial yet"
    first = best[0]
    return ", ".join(f"{name} {first['metrics'][name]:.4g}" for name in config.objectives)
