"""A search never evaluates one configuration twice.

On a discrete space TPE and NSGA-II propose configurations they have already seen (in
the README's convnet study, 4 of 20 trials were repeats). kiln *reuses* the stored result
instead of evaluating again: the trial is recorded with the same metrics, costs no
evaluation and does not count against the budget (``[study].trials`` counts
evaluations). Reusing rather than steering the sampler away keeps its behaviour sound:
the objective is deterministic, so the sampler sees exactly what a repeated evaluation
would have shown it, and its later proposals are the ones it would have made anyway; it
only stops paying for them. Should it propose nothing new for
:data:`MAX_CONSECUTIVE_REPEATS` trials in a row, the next trial is an unevaluated point
drawn at random (seeded), and when every point has been evaluated the study stops and
says the space is exhausted.

Results are shared between studies on the same storage whose evaluation is the same
(model, dataset, space, evaluation settings, hardware: :func:`fingerprint`), through a
cache study named ``kiln-evaluations-<fingerprint>``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Any

from kiln.search.config import SearchConfig

MAX_CONSECUTIVE_REPEATS = 10
CACHE_PREFIX = "kiln-evaluations-"


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def fingerprint(config: SearchConfig) -> str:
    """What an evaluation's result depends on (not the sampler, its seed or the budget)."""
    evaluation = config.evaluation.model_dump(mode="json")
    evaluation.pop("low_fidelity_samples", None)  # the full result does not depend on it
    data = {"model": config.model.model_dump(mode="json"),
            "space": config.space.model_dump(mode="json"), "evaluation": evaluation,
            "hardware": config.hardware.model_dump(mode="json") if config.hardware else None}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """What is known of one configuration: its full metrics and/or its low-fidelity ones."""

    metrics: dict[str, float] | None = None
    low: dict[str, float] | None = None


class EvaluationCache:
    """Evaluated configurations, kept in a study of their own on the search's storage."""

    def __init__(self, storage: Any, config: SearchConfig) -> None:
        import optuna

        self.study = optuna.create_study(study_name=CACHE_PREFIX + fingerprint(config),
                                         storage=storage, load_if_exists=True)
        self.known: dict[str, Outcome] = {}
        self._seen_trials = 0

    def _refresh(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials[self._seen_trials:]:
            key, outcome = trial.user_attrs.get("key"), trial.user_attrs.get("outcome")
            if key is not None and outcome is not None:
                merged = self.known.get(key, Outcome())
                self.known[key] = Outcome(outcome.get("metrics") or merged.metrics,
                                          outcome.get("low") or merged.low)
        self._seen_trials = len(trials)

    def lookup(self, key: str) -> Outcome:
        if key not in self.known:
            self._refresh()
        return self.known.get(key, Outcome())

    def store(self, key: str, outcome: Outcome) -> None:
        import optuna

        self.known[key] = outcome
        self.study.add_trial(optuna.trial.create_trial(
            value=0.0, user_attrs={"key": key, "outcome": asdict(outcome)}))


def unevaluated_point(choices: dict[str, list[Any]], known: set[str], seed: int
                      ) -> dict[str, Any] | None:
    """A random configuration not in ``known`` (None when the space is exhausted)."""
    import itertools
    import math

    rng = random.Random(seed)
    names = list(choices)
    size = math.prod(len(options) for options in choices.values())
    if size <= 100_000:  # small spaces: pick among what is left, so this always succeeds
        left = [dict(zip(names, values, strict=True))
                for values in itertools.product(*choices.values())
                if params_key(dict(zip(names, values, strict=True))) not in known]
        return rng.choice(left) if left else None
    for _ in range(1000):
        point = {name: rng.choice(options) for name, options in choices.items()}
        if params_key(point) not in known:
            return point
    return None


def uniform_points(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The obvious configurations: every layer alike (all weights at 8 bits, all at 4, ...),
    for each kind of knob (the name's suffix after the last dot)."""
    import itertools

    groups: dict[str, list[str]] = {}
    for name in choices:
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    common = {}
    for suffix, names in groups.items():
        values = [v for v in choices[names[0]] if all(v in choices[n] for n in names)]
        if not values:
            return []
        common[suffix] = values
    points = []
    for combination in itertools.product(*common.values()):
        chosen = dict(zip(common, combination, strict=True))
        points.append({name: chosen[name.rsplit(".", 1)[-1]] for name in choices})
    return points
