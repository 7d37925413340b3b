"""Studies: Optuna samplers over a search space, stored in SQLite or PostgreSQL.

* ``grid`` (brute force) enqueues every point of the space once, as waiting trials that
  workers take one at a time: no point is run twice, none is lost.
* ``random``, ``tpe`` and ``nsga2`` are Optuna's samplers, seeded; TPE and NSGA-II see the
  constraints (``Trial.set_constraint``), so a configuration that breaks one is never "best",
  however good its objective.
* Every finished trial is committed to the storage. A search killed at any moment is
  continued with ``resume=True``: finished trials are kept, the trial that was running is
  run again, and the study stops at the configured number of finished trials.
* ``workers > 1`` runs that many processes on the same study (use PostgreSQL for several
  machines: each runs ``kiln search CONFIG --storage postgresql://...``).

    >>> result = run_search(load_config("examples/search/convnet_mixed.toml"))   # doctest: +SKIP
    >>> result.best[0]["params"], result.best[0]["metrics"]["size"]              # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import ConfigError, KilnError
from kiln.search.config import SearchConfig, parse_config
from kiln.search.storage import open_storage, redact


@dataclass
class SearchResult:
    """Every trial of a study and the best feasible configuration(s)."""

    study: str
    storage: str
    objectives: list[str]
    directions: list[str]
    baseline_accuracy: float
    trials: list[dict[str, Any]]
    best: list[dict[str, Any]]
    best_infeasible: dict[str, Any] | None = None
    holdout_accuracy: float | None = None
    files: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return bool(self.best)

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "objectives": self.objectives,
            "directions": self.directions,
            "baseline_accuracy": self.baseline_accuracy,
            "finished_trials": sum(t["state"] == "COMPLETE" for t in self.trials),
            "feasible": self.feasible,
            "best": self.best,
            "best_infeasible": self.best_infeasible,
            "holdout_accuracy": self.holdout_accuracy,
            "trials": self.trials,
            "files": self.files,
        }


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


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _objective_function(evaluator, config: SearchConfig) -> Callable:
    choices = evaluator.space.choices()

    def objective(trial) -> list[float] | float:
        params = {
            name: trial.suggest_categorical(name, options) for name, options in choices.items()
        }
        metrics = evaluator.measure(params)
        trial.set_user_attr("metrics", metrics)
        violations = evaluator.violations(metrics)
        trial.set_user_attr("constraints", violations)
        # TPE and NSGA-II read these: an infeasible trial never guides them as a good one.
        for index, value in enumerate(violations):
            trial.set_constraint(f"c{index}", value)
        values = [metrics[name] for name in config.objectives]
        return values if len(values) > 1 else values[0]

    return objective


def _worker(config_data: dict[str, Any], storage_url: str, n_trials: int, worker: int) -> None:
    """One worker process: its own model, data and sampler on the shared study."""
    import optuna
    import torch

    from kiln.search.objectives import Evaluator

    torch.set_num_threads(1)
    config = parse_config(config_data, config_data.get("source", "<config>"))
    evaluator = Evaluator(config)
    study = optuna.load_study(
        study_name=config.study.name,
        storage=open_storage(storage_url),
        sampler=make_sampler(config, worker),
    )
    study.optimize(_objective_function(evaluator, config), n_trials=n_trials, catch=(KilnError,))


def _grid_points(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(choices)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())
    ]


def _trial_params(trial) -> dict[str, Any]:
    fixed = trial.system_attrs.get("fixed_params")
    return dict(fixed) if fixed else dict(trial.params)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def prepare_study(
    config: SearchConfig,
    storage_url: str,
    resume: bool,
    choices: dict[str, list[Any]],
    baseline: float,
):
    """Create (or reopen) the study; enqueue grid points; requeue a killed run's trial.
    Returns (study, trials still to run)."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    study = optuna.create_study(
        study_name=config.study.name,
        storage=storage,
        load_if_exists=True,
        directions=config.directions,
        sampler=make_sampler(config),
    )
    trials = study.get_trials(deepcopy=False)
    if trials and not resume:
        raise KilnError(
            f"study '{config.study.name}' already has {len(trials)} trials in "
            f"{redact(storage_url)}",
            hint="add --resume to continue it, or change [study].name",
        )
    stored = study.user_attrs.get("config")
    if stored is not None and stored.get("objectives") != config.objectives:
        raise ConfigError(
            f"study '{config.study.name}' was created with objectives {stored['objectives']}, "
            f"not {config.objectives}"
        )
    if stored is None:
        study.set_user_attr("config", json.loads(config.model_dump_json()))
        study.set_user_attr("baseline_accuracy", baseline)
    if resume:
        # The run was killed: its running trial never finished. Fail it and run it again.
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                params = _trial_params(trial)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                if len(params) == len(choices):
                    study.enqueue_trial(params, skip_if_exists=False)
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    if config.study.strategy == "grid":
        points = _grid_points(choices)
        target = min(config.study.trials, len(points))
        taken = {
            _key(_trial_params(t))
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
        }
        fresh = [p for p in points if _key(p) not in taken]
        for params in fresh[: max(0, target - complete - waiting)]:
            study.enqueue_trial(params, skip_if_exists=False)
        waiting = sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        return study, waiting
    return study, max(0, config.study.trials - complete)


def run_search(
    config: SearchConfig,
    *,
    storage: str | None = None,
    workers: int = 1,
    resume: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> SearchResult:
    """Run (or continue) a study until it has ``[study].trials`` finished trials."""
    from kiln.search.objectives import Evaluator

    storage_url = storage or config.storage_url
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    evaluator = Evaluator(config)
    choices = evaluator.space.choices()
    study, to_run = prepare_study(config, storage_url, resume, choices, evaluator.baseline)
    target = to_run + _count_complete(study)
    if to_run:
        if workers == 1:

            def callback(study_, trial) -> None:
                if on_progress:
                    on_progress(_count_complete(study_), target, _best_text(study_, config))

            study.optimize(
                _objective_function(evaluator, config),
                n_trials=to_run,
                catch=(KilnError,),
                callbacks=[callback],
            )
        else:
            _run_workers(config, storage_url, workers, to_run, study, target, on_progress)
    result = collect(config, storage_url, evaluator)
    return result


def _run_workers(
    config: SearchConfig,
    storage_url: str,
    workers: int,
    to_run: int,
    study,
    target: int,
    on_progress: Callable | None,
) -> None:
    context = multiprocessing.get_context("spawn")
    shares = [to_run // workers + (1 if i < to_run % workers else 0) for i in range(workers)]
    data = json.loads(config.model_dump_json())
    processes = [
        context.Process(target=_worker, args=(data, storage_url, share, index))
        for index, share in enumerate(shares)
        if share
    ]
    for process in processes:
        process.start()
    while any(p.is_alive() for p in processes):
        time.sleep(1.0)
        if on_progress:
            on_progress(_count_complete(study), target, _best_text(study, config))
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise KilnError(
            f"{len(failed)} of {len(processes)} search workers failed (exit codes {failed})",
            hint="run again with --resume to finish the study",
        )


def _count_complete(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def _best_text(study, config: SearchConfig) -> str:
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    best, _ = select_best(rows, config.objectives, config.directions)
    if not best:
        return "no feasible trial yet"
    first = best[0]
    return ", ".join(f"{name} {_short(first['metrics'][name])}" for name in config.objectives)


def _short(value: float) -> str:
    return f"{value:.4g}"


def _trial_row(trial) -> dict[str, Any]:
    constraints = trial.user_attrs.get("constraints")
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": _trial_params(trial),
        "metrics": trial.user_attrs.get("metrics"),
        "constraints": constraints,
        "feasible": constraints is not None and all(v <= 0 for v in constraints),
    }


def select_best(
    rows: list[dict[str, Any]], objectives: list[str], directions: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(best feasible trials: one, or the Pareto front; the least-violating infeasible trial)."""
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["metrics"] is not None]
    feasible = [r for r in complete if r["feasible"]]
    signs = [1 if d == "minimize" else -1 for d in directions]

    def values(row: dict[str, Any]) -> tuple[float, ...]:
        return tuple(s * row["metrics"][o] for s, o in zip(signs, objectives, strict=True))

    if len(objectives) == 1:
        best = sorted(feasible, key=lambda r: (values(r), r["number"]))[:1]
    else:
        best = [r for r in feasible if not any(_dominates(values(o), values(r)) for o in feasible)]
        best.sort(key=lambda r: (values(r), r["number"]))
        # identical points: keep the first trial only
        unique: dict[tuple, dict[str, Any]] = {}
        for row in best:
            unique.setdefault(values(row), row)
        best = list(unique.values())
    infeasible = [r for r in complete if not r["feasible"]]
    least = min(
        infeasible,
        key=lambda r: (
            sum(max(0.0, v) for v in r["constraints"] or [math.inf]),
            values(r),
            r["number"],
        ),
        default=None,
    )
    return best, (least if not best else None)


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def collect(config: SearchConfig, storage_url: str, evaluator=None) -> SearchResult:
    """Read a study back from its storage and pick the best configuration(s)."""
    import optuna

    study = optuna.load_study(
        study_name=config.study.name, storage=open_storage(storage_url, heartbeat=False)
    )
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    best, infeasible = select_best(rows, config.objectives, config.directions)
    baseline = float(study.user_attrs.get("baseline_accuracy", math.nan))
    result = SearchResult(
        config.study.name,
        redact(storage_url),
        config.objectives,
        config.directions,
        baseline,
        rows,
        best,
        infeasible,
    )
    if evaluator is not None and best:
        result.holdout_accuracy = evaluator.holdout_accuracy(best[0]["params"])
        result.files = [str(p) for p in evaluator.write_config(best[0]["params"], config.out_dir)]
    return result


def load_study_config(study_name: str, storage_url: str) -> SearchConfig:
    """The config a stored study was created with (for ``kiln search show``)."""
    import optuna

    try:
        study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage_url, heartbeat=False)
        )
    except KeyError:
        names = [
            s.study_name
            for s in optuna.get_all_study_summaries(open_storage(storage_url, heartbeat=False))
        ]
        raise KilnError(
            f"no study '{study_name}' in {redact(storage_url)}",
            hint=f"studies there: {', '.join(names) or 'none'}",
        ) from None
    data = study.user_attrs.get("config")
    if data is None:
        raise KilnError(f"study '{study_name}' was not created by kiln (no config stored)")
    return parse_config(data, f"study {study_name}")
