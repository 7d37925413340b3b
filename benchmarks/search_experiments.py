"""The search experiments the search issue asks for, from the configs in examples/search/.

1. Mixed precision on the Fashion-MNIST convnet (drop <= 1 point, smallest size): brute
   force over all 81 points against TPE with 50 trials.
2. Channel-multiplier NAS on jsc-three-linear (letter): brute force (9) against TPE (6).
3. Joint pruning + quantization on the convnet: smallest size at 80 / 85 / 90 % accuracy.
4. Hardware-aware mixed precision on the edge NPU: Pareto fronts of accuracy against
   latency and energy, with the uniform int8 (W8A8) and int4 (W4A4) points.

    python benchmarks/search_experiments.py            # all (about 20 minutes on 2 cores)
    python benchmarks/search_experiments.py mixed nas  # some

Studies are stored in SQLite under benchmarks/results/search/; rerunning continues them.
Writes benchmarks/results/search/search_experiments.json and prints a summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from kiln.search import load_config, run_search
from kiln.search.objectives import Evaluator
from kiln.search.report import write_report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "search"


def _config(name: str, study: str, strategy: str, trials: int):
    config = load_config(ROOT / "examples" / "search" / f"{name}.toml")
    config.study.name, config.study.strategy, config.study.trials = study, strategy, trials
    config.study.out = str(OUT / study)
    config.study.storage = f"sqlite:///{OUT / (study + '.db')}"
    return config  # (load_config resolves the accelerator relative to the config file)


def _run(config):
    start = time.perf_counter()
    result = run_search(config, resume=True)
    seconds = time.perf_counter() - start
    write_report(result, config.out_dir)
    return result, seconds


def _first_reaching(
    trials: list[dict], key: str, target: float, minimize: bool = True
) -> int | None:
    """1-based count of finished trials after which a feasible trial reached ``target``."""
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    for index, trial in enumerate(finished, start=1):
        value = trial["metrics"][key]
        if trial["feasible"] and (value <= target + 1e-9 if minimize else value >= target - 1e-9):
            return index
    return None


def mixed() -> dict:
    grid, grid_s = _run(_config("convnet_mixed", "convnet-mixed-grid", "grid", 81))
    tpe, tpe_s = _run(_config("convnet_mixed", "convnet-mixed-tpe", "tpe", 50))
    optimum = grid.best[0]["metrics"]["size"]
    found = tpe.best[0]["metrics"]["size"] if tpe.best else None
    return {
        "brute_force": {
            "trials": 81,
            "seconds": grid_s,
            "best_size_bytes": optimum,
            "best_params": grid.best[0]["params"],
            "best_accuracy": grid.best[0]["metrics"]["accuracy"],
            "holdout_accuracy": grid.holdout_accuracy,
        },
        "tpe": {
            "trials": 50,
            "seconds": tpe_s,
            "best_size_bytes": found,
            "best_params": tpe.best[0]["params"] if tpe.best else None,
            "gap_to_optimum": None if found is None else found / optimum - 1,
            "trials_to_reach_optimum": _first_reaching(tpe.trials, "size", optimum),
        },
        "baseline_accuracy": grid.baseline_accuracy,
    }


def nas() -> dict:
    grid, grid_s = _run(_config("jsc_channels", "jsc-channels-grid", "grid", 9))
    tpe, tpe_s = _run(_config("jsc_channels", "jsc-channels-tpe", "tpe", 6))
    best = grid.best[0]
    return {
        "brute_force": {
            "trials": 9,
            "seconds": grid_s,
            "best_accuracy": best["metrics"]["accuracy"],
            "best_params": best["params"],
            "params": best["metrics"]["params"],
            "size_bytes": best["metrics"]["size"],
            "all": [
                {
                    "params": t["params"],
                    "accuracy": t["metrics"]["accuracy"],
                    "params_count": t["metrics"]["params"],
                }
                for t in grid.trials
                if t["state"] == "COMPLETE"
            ],
        },
        "tpe": {
            "trials": 6,
            "seconds": tpe_s,
            "best_accuracy": tpe.best[0]["metrics"]["accuracy"],
            "best_params": tpe.best[0]["params"],
            "trials_to_reach_optimum": _first_reaching(
                tpe.trials, "accuracy", best["metrics"]["accuracy"], minimize=False
            ),
        },
    }


def prune_quant() -> dict:
    result, seconds = _run(_config("convnet_prune_quant", "convnet-prune-quant", "nsga2", 48))
    finished = [t for t in result.trials if t["state"] == "COMPLETE"]
    targets = {}
    for target in (0.80, 0.85, 0.90):
        meeting = [t for t in finished if t["metrics"]["accuracy"] >= target]
        best = min(meeting, key=lambda t: t["metrics"]["size"], default=None)
        targets[f"{target:.2f}"] = (
            None
            if best is None
            else {
                "size_bytes": best["metrics"]["size"],
                "accuracy": best["metrics"]["accuracy"],
                "params": best["params"],
                "trial": best["number"],
            }
        )
    float_size = 105_744 * 4 + 0.0
    return {
        "trials": len(finished),
        "seconds": seconds,
        "float_size_bytes": float_size,
        "smallest_at_target": targets,
    }


def hardware() -> dict:
    config = _config("convnet_hardware", "convnet-hardware", "nsga2", 40)
    result, seconds = _run(config)
    evaluator = Evaluator(config)
    uniform = {}
    for label, (w, a) in (("uniform int8 (W8A8)", (8, 8)), ("uniform int4 (W4A4)", (4, 4))):
        params = {}
        for name in evaluator.space.choices():
            params[name] = w if name.endswith(".w") else a
        uniform[label] = evaluator.measure(params)
    write_report(result, config.out_dir, extra_points=uniform)
    front = [
        {
            "params": t["params"],
            **{k: t["metrics"][k] for k in ("accuracy", "latency", "energy", "size")},
        }
        for t in result.best
    ]
    return {
        "trials": sum(t["state"] == "COMPLETE" for t in result.trials),
        "seconds": seconds,
        "pareto_front": front,
        "uniform": uniform,
    }


EXPERIMENTS = {"mixed": mixed, "nas": nas, "prune_quant": prune_quant, "hardware": hardware}


def main() -> None:
    chosen = sys.argv[1:] or list(EXPERIMENTS)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "search_experiments.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in chosen:
        print(f"[{name}] running", flush=True)
        results[name] = EXPERIMENTS[name]()
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps(results[name], indent=1)[:3000], flush=True)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
