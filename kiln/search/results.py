"""Reading a study back: its trials as rows, the best configuration(s), the totals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.search.config import SearchConfig, parse_config
from kiln.study_storage import open_storage, redact


@dataclass
class SearchResult:
    """Every trial of a study and the best feasible configuration(s).

    ``evaluations`` is what the study paid, in full evaluations (a reused configuration
    costs 0, a low-fidelity pass its share of the samples); ``trials`` holds every trial,
    reused ones included (``reused`` in each row)."""

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
    space_size: int | None = None
    exhausted: bool = False  # every point of the space is known (evaluated here or cached)
    baseline: str = "float model"  # what baseline_accuracy is the accuracy of

    @property
    def feasible(self) -> bool:
        return bool(self.best)

    @property
    def evaluations(self) -> float:
        return sum(row["cost"] for row in self.trials)

    @property
    def distinct_evaluated(self) -> int:
        return len({row["key"] for row in self.trials
                    if row["state"] in ("COMPLETE", "PRUNED") and row["key"]})

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "objectives": self.objectives,
            "directions": self.directions,
            "baseline_accuracy": self.baseline_accuracy,
            "baseline": self.baseline,
            "finished_trials": sum(t["state"] == "COMPLETE" for t in self.trials),
            "pruned_trials": sum(t["state"] == "PRUNED" for t in self.trials),
            "reused_trials": sum(bool(t["reused"]) for t in self.trials),
            "evaluations": round(self.evaluations, 3),
            "space_size": self.space_size,
            "space_exhausted": self.exhausted,
            "feasible": self.feasible,
            "best": self.best,
            "best_infeasible": self.best_infeasible,
            "holdout_accuracy": self.holdout_accuracy,
            "trials": self.trials,
            "files": self.files,
        }


def trial_params(trial) -> dict[str, Any]:
    fixed = trial.system_attrs.get("fixed_params")
    return dict(fixed) if fixed else dict(trial.params)


def trial_cost(trial) -> float:
    """Evaluations a trial paid for: its recorded cost; without one (an older study, or a
    trial whose process died), one if it finished or had stored its result, else none."""
    if trial.state.name not in ("COMPLETE", "PRUNED", "FAIL"):
        return 0.0  # not run yet (a queued retry carries its original's attributes)
    cost = trial.user_attrs.get("cost")
    if cost is not None:
        return float(cost)
    evaluated = trial.state.name == "COMPLETE" or (
        trial.state.name == "FAIL" and trial.user_attrs.get("metrics") is not None)
    return 1.0 if evaluated else 0.0


def trial_row(trial) -> dict[str, Any]:
    constraints = trial.user_attrs.get("constraints")
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial_params(trial),
        "key": trial.user_attrs.get("key"),
        "metrics": trial.user_attrs.get("metrics"),
        "low_fidelity": trial.user_attrs.get("low_fidelity"),
        "constraints": constraints,
        "feasible": constraints is not None and all(v <= 0 for v in constraints),
        "cost": trial_cost(trial),
        "reused": bool(trial.user_attrs.get("reused", False)),
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
    # Trials declined because the budget was spent evaluated nothing: not part of the result.
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("declined")]
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
        space_size=study.user_attrs.get("space_size"),
        exhausted=bool(study.user_attrs.get("exhausted", False)),
        baseline=study.user_attrs.get("baseline", "float model"),
    )
    if evaluator is not None and best:
        result.holdout_accuracy = evaluator.holdout_accuracy(best[0]["params"])
        result.files = [str(p) for p in evaluator.write_config(best[0]["params"], config.out_dir)]
    return result


def load_study_config(study_name: str, storage_url: str) -> SearchConfig:
    """The config a stored study was created with (for ``kiln search show``). Reads only:
    a SQLite file that does not exist is an error, not a new empty database."""
    import optuna

    if storage_url.startswith("sqlite:///"):
        path = Path(storage_url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise KilnError(f"no study storage at {path}",
                            hint="give the --storage URL the search wrote to")

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
