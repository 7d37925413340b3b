"""How many model evaluations each search strategy needs, over many seeds, before and after
deduplication, on spaces small enough for brute force to give the truth.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 10] [--rebuild]

1. Truth: every point of three spaces evaluated once with kiln's own Evaluator (cached in
   benchmarks/results/search_truth/): the convnet mixed-precision space of
   examples/search/convnet_mixed.toml (weights {2, 4, 8} per layer, 81 points), a jsc
   channel-multiplier NAS space (x0.5, x1, x2, x4 per hidden layer, 16 points, each
   candidate trained), and a larger convnet space (weights {2, 3, 4, 6, 8}: 625 points).
   Each record holds the full metrics and the accuracy on the first 1000 validation
   samples (for the multi-fidelity runs).
2. Runs: kiln's real search (Optuna samplers, storage, deduplication, pruning) with an
   evaluator that reads the table, for grid, random, TPE and NSGA-II, ``--seeds`` seeds
   each, in four modes: ``before`` (deduplicate = false: every trial evaluated, as kiln
   did), ``after`` (repeats reused), ``after+uniform`` (uniform widths first) and
   ``after+lowfi`` (multi-fidelity on 1000 samples; constrained spaces).
3. For each: the evaluations (not trials) until the optimum was first found, median and
   worst over the seeds, and the best objective found after 10%, 20% and 50% of the
   space's size in evaluations, beside the brute-force optimum; and how many evaluations
   repeated a configuration already evaluated in the same study.

Prints the tables and writes benchmarks/results/search_efficiency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from kiln.search import load_config, parse_config, run_search
from kiln.search.reuse import params_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TRUTH = RESULTS / "search_truth"
LOW_SAMPLES = 1000


def _spaces() -> dict[str, dict[str, Any]]:
    mixed = load_config(ROOT / "examples/search/convnet_mixed.toml").model_dump(mode="json")
    nas = load_config(ROOT / "examples/search/jsc_channels.toml").model_dump(mode="json")
    nas["space"]["multipliers"] = [0.5, 1.0, 2.0, 4.0]
    large = json.loads(json.dumps(mixed))
    large["space"]["weight_bits"] = [2, 3, 4, 6, 8]
    large["study"]["name"] = "convnet-mixed-625"
    nas["study"]["name"] = "jsc-channels-16"
    return {"convnet-mixed-81": mixed, "jsc-nas-16": nas, "convnet-mixed-625": large}


def build_truth(name: str, data: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    """Every point of the space, evaluated once (the brute force), cached on disk."""
    import itertools

    from kiln.search import Evaluator

    path = TRUTH / f"{name}.json"
    if path.is_file() and not rebuild:
        return json.loads(path.read_text())
    config = parse_config({**data, "evaluation": {**data["evaluation"],
                                                  "low_fidelity_samples": None}})
    evaluator = Evaluator(config)
    choices = evaluator.space.choices()
    names = list(choices)
    points, started = {}, time.perf_counter()
    low_config = parse_config({**data, "evaluation": {**data["evaluation"],
                                                      "low_fidelity_samples": LOW_SAMPLES}})
    low_evaluator = Evaluator(low_config)
    for index, values in enumerate(itertools.product(*choices.values())):
        params = dict(zip(names, values, strict=True))
        low = low_evaluator.measure_low(params)
        metrics = low_evaluator.measure(params)  # the same build: the rest of the samples
        points[params_key(params)] = {"metrics": metrics, "low": low}
        if (index + 1) % 25 == 0:
            print(f"  {name}: {index + 1} points, {time.perf_counter() - started:.0f} s",
                  flush=True)
    truth = {"choices": choices, "baseline": evaluator.baseline,
             "validation": len(evaluator.validation.x_test), "points": points,
             "config": data, "seconds": time.perf_counter() - started}
    TRUTH.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(truth) + "\n")
    return truth


class _Space:
    def __init__(self, choices: dict[str, list[Any]]) -> None:
        self._choices = choices

    def choices(self) -> dict[str, list[Any]]:
        return self._choices


class TableEvaluator:
    """The Evaluator interface over a brute-force table: no model is run."""

    def __init__(self, truth: dict[str, Any], config) -> None:
        from kiln.search.objectives import Evaluator

        self.truth, self.config = truth, config
        self.space = _Space(truth["choices"])
        self.baseline = truth["baseline"]
        low = config.evaluation.low_fidelity_samples
        self.low_samples = min(low, truth["validation"]) if low else None
        self.validation_size = truth["validation"]
        self._violations = Evaluator.violations.__get__(self)
        self._prune_limit = Evaluator.prune_limit.__get__(self)

    @property
    def low_fraction(self) -> float:
        return (self.low_samples or 0) / self.validation_size

    def prune_limit(self):
        return self._prune_limit()

    def measure_low(self, params):
        return self.truth["points"][params_key(params)]["low"]

    def measure(self, params, graph=None):
        return self.truth["points"][params_key(params)]["metrics"]

    def violations(self, metrics):
        return self._violations(metrics)

    def holdout_accuracy(self, params):
        return None

    def write_config(self, params, out):
        return []


def optimum(truth: dict[str, Any], config) -> float:
    evaluator = TableEvaluator(truth, config)
    objective = config.objectives[0]
    sign = 1 if config.directions[0] == "minimize" else -1
    feasible = [record["metrics"][objective] for record in truth["points"].values()
                if all(v <= 0 for v in evaluator.violations(record["metrics"]))]
    return min(feasible, key=lambda v: sign * v)


def one_run(truth, data, strategy, seed, mode, budget, run_id) -> dict[str, Any]:
    study = {**data["study"], "name": f"{data['study']['name']}-{run_id}", "strategy": strategy,
             "seed": seed, "trials": budget, "storage": f"memory://{run_id}",
             "deduplicate": mode != "before", "seed_uniform": mode == "after+uniform"}
    evaluation = {**data["evaluation"],
                  "low_fidelity_samples": LOW_SAMPLES if mode == "after+lowfi" else None}
    config = parse_config({**data, "study": study, "evaluation": evaluation})
    best_value = optimum(truth, config)
    result = run_search(config, evaluator=TableEvaluator(truth, config))
    objective, sign = config.objectives[0], (1 if config.directions[0] == "minimize" else -1)
    spent, best, found_at, curve, seen, repeated = 0.0, None, None, [], set(), 0
    for trial in result.trials:
        spent += trial["cost"]
        if trial["cost"] and trial["key"] in seen:
            repeated += 1
        seen.add(trial["key"])
        if trial["state"] == "COMPLETE" and trial["feasible"]:
            value = trial["metrics"][objective]
            if best is None or sign * value < sign * best:
                best = value
            if found_at is None and value == best_value:
                found_at = spent
        curve.append((spent, best))
    size = len(truth["points"])

    def best_at(fraction: float):
        allowed = fraction * size
        values = [b for s, b in curve if s <= allowed + 1e-9 and b is not None]
        return values[-1] if values else None

    return {"found_at": found_at, "evaluations": result.evaluations, "trials": len(result.trials),
            "repeated_evaluations": repeated, "optimum": best_value,
            "best_at": {f: best_at(f) for f in (0.1, 0.2, 0.5)}}


def summarize(runs: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    found = [r["found_at"] for r in runs]
    hits = sorted(f for f in found if f is not None)
    median = statistics.median([f if f is not None else float("inf") for f in found])
    return {"median_to_optimum": median, "worst_to_optimum":
            max(f if f is not None else float("inf") for f in found),
            "found": f"{len(hits)}/{len(runs)}", "budget": budget,
            "repeated_evaluations": sum(r["repeated_evaluations"] for r in runs),
            "best_at": {str(f): [r["best_at"][f] for r in runs] for f in (0.1, 0.2, 0.5)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true", help="re-evaluate the truth tables")
    parser.add_argument("--spaces", default="convnet-mixed-81,jsc-nas-16,convnet-mixed-625")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    spaces = _spaces()
    run_id = 0
    for name in args.spaces.split(","):
        data = spaces[name]
        truth = build_truth(name, data, args.rebuild)
        size = len(truth["points"])
        budget = size if size <= 100 else size // 2
        constrained = bool(data.get("constraints")) and any(
            v is not None for v in data["constraints"].values())
        modes = ["before", "after", "after+uniform"] + (["after+lowfi"] if constrained else [])
        config = parse_config({**data, "study": {**data["study"], "trials": 1}})
        report[name] = {"size": size, "optimum": optimum(truth, config), "budget": budget,
                        "objective": config.objectives[0], "truth_seconds": truth["seconds"],
                        "strategies": {}}
        print(f"\n{name}: {size} points, optimum {config.objectives[0]} "
              f"{report[name]['optimum']:.6g}, budget {budget} evaluations")
        print(f"  {'strategy':9s} {'mode':14s} {'median':>8s} {'worst':>8s} {'found':>6s} "
              f"{'10%':>10s} {'20%':>10s} {'50%':>10s}  repeats")
        for strategy in ("grid", "random", "tpe", "nsga2"):
            for mode in modes:
                if strategy == "grid" and mode == "after+uniform":
                    continue
                started = time.perf_counter()
                runs = []
                for seed in range(args.seeds if strategy != "grid" else 1):
                    run_id += 1
                    runs.append(one_run(truth, data, strategy, seed, mode, budget, run_id))
                summary = summarize(runs, budget)
                summary["seconds"] = time.perf_counter() - started
                report[name]["strategies"][f"{strategy}/{mode}"] = summary

                def median_of(values):
                    known = [v for v in values if v is not None]
                    return f"{statistics.median(known):.5g}" if known else "-"

                print(f"  {strategy:9s} {mode:14s} {summary['median_to_optimum']:8.4g} "
                      f"{summary['worst_to_optimum']:8.4g} {summary['found']:>6s} "
                      + " ".join(f"{median_of(summary['best_at'][str(f)]):>10s}"
                                 for f in (0.1, 0.2, 0.5))
                      + f"  {summary['repeated_evaluations']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_efficiency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'search_efficiency.json'}")


if __name__ == "__main__":
    main()
