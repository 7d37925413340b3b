"""Many `kiln search` processes on one PostgreSQL study: crashes, duplicates, budget, scale.

    .venv/bin/python benchmarks/search_distributed.py [--repetitions 20] [--scale 1,2,4]

Needs the local PostgreSQL server of scripts/postgres.sh (the test command starts it).

1. Repetitions of the staggered test: three `kiln search CONFIG --json` processes started
   2 s apart on a fresh database, the first one frozen in the middle of an evaluation of
   its own and killed with SIGKILL, then started again with the same command. Per run:
   exit codes, evaluations against the budget, configurations evaluated twice, and
   whether the best equals the exhaustive optimum (the space is small enough: 64 points,
   budget 64, evaluated once by a grid run first).
2. Scale: the same study (random sampler, budget 64) with 1, 2 and 4 processes started
   together: wall time, evaluations per minute, and PostgreSQL transactions per trial
   (``pg_stat_database.xact_commit``: each storage call Optuna makes is one).

Prints tables and writes benchmarks/results/search_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("KILN_TEST_POSTGRES", "postgresql://kiln:kiln@localhost:5432")
SPACE = {"kind": "mixed-precision", "weight_bits": [2, 3, 4, 8]}  # 3 layers: 64 points
EVALUATION = {"samples": 2000, "calibration_batches": 1}


def write_config(folder: Path, name: str, storage: str, strategy: str, trials: int) -> Path:
    lines = ['objectives = ["size"]', "[study]", f'name = "{name}"',
             f'strategy = "{strategy}"', f"trials = {trials}", f'out = "{folder / "out"}"',
             f'storage = "{storage}"', "[model]", 'name = "jsc-three-linear"',
             'dataset = "letter"', "[space]", 'kind = "mixed-precision"',
             f"weight_bits = {json.dumps(SPACE['weight_bits'])}", "[evaluation]",
             f"samples = {EVALUATION['samples']}",
             f"calibration_batches = {EVALUATION['calibration_batches']}", "[constraints]",
             "max_accuracy_drop = 1.0"]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Database:
    """A fresh database on the local server, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"kiln_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {self.name}")
        self.url = f"{POSTGRES}/{self.name}"

    def commits(self) -> int:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute("SELECT pg_stat_clear_snapshot()")
            row = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE "
                                     "datname = %s", (self.name,)).fetchone()
        return int(row[0])

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kiln", "search", str(config), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)


def kill_while_evaluating(process: subprocess.Popen, storage: str, name: str,
                          after: int = 5) -> int | None:
    """Freeze ``process`` when it has evaluated ``after`` configurations and is evaluating
    another; kill it (SIGKILL). Returns the trial it was evaluating (None: never caught)."""
    import optuna

    from kiln.study_storage import open_storage

    suffix = f":{process.pid}"
    study = None
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
        if study is None:
            try:
                study = optuna.load_study(study_name=name, storage=open_storage(
                    storage, heartbeat=False))
            except KeyError:
                continue
        mine = [t for t in study.get_trials(deepcopy=False)
                if (t.user_attrs.get("decision") or {}).get("process", "").endswith(suffix)
                and t.user_attrs["decision"]["trial"] == t.number]
        if sum(t.state.name == "COMPLETE" and not t.user_attrs.get("reused")
               for t in mine) < after:
            continue
        process.send_signal(signal.SIGSTOP)
        running = [t.number for t in study.get_trials(deepcopy=False) if t.number in
                   {m.number for m in mine} and t.state.name == "RUNNING"
                   and t.user_attrs["decision"]["kind"] == "evaluate"]
        if running:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return running[0]
        process.send_signal(signal.SIGCONT)
    return None


def optimum(folder: Path) -> dict:
    """The exhaustive optimum: a one-process grid over all 64 points (SQLite)."""
    config = write_config(folder, "grid", f"sqlite:///{folder / 'grid.db'}", "grid", 64)
    done = subprocess.run([sys.executable, "-m", "kiln", "search", str(config), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout)["best"][0]["params"]


def repetition(folder: Path, index: int, best: dict) -> dict:
    database = Database()
    try:
        config = write_config(folder, f"many{index}", database.url, "random", 64)
        started = time.perf_counter()
        processes = []
        for _ in range(3):
            processes.append(start(config))
            time.sleep(2)
        killed_trial = kill_while_evaluating(processes[0], database.url, f"many{index}")
        if processes[0].poll() is not None and killed_trial is not None:
            processes[0] = start(config)
        outputs = [p.communicate(timeout=900) for p in processes]
        codes = [p.returncode for p in processes]
        result = json.loads(outputs[-1][0]) if codes[-1] == 0 else {"trials": []}
        evaluated = [t["key"] for t in result["trials"]
                     if t["state"] == "COMPLETE" and not t["reused"]]
        crashes = sum(code != 0 for code in codes)
        return {"run": index, "exit_codes": codes, "crashes": crashes,
                "killed_trial": killed_trial,
                "evaluations": result.get("evaluations"), "budget": 64,
                "duplicates": len(evaluated) - len(set(evaluated)),
                "best_equals_optimum": bool(result.get("best"))
                and result["best"][0]["params"] == best,
                "seconds": round(time.perf_counter() - started, 1),
                "stderr_tail": [o[1][-500:] for o, c in zip(outputs, codes, strict=True)
                                if c != 0]}
    finally:
        database.drop()


def scale(folder: Path, processes: int) -> dict:
    database = Database()
    try:
        name = f"scale{processes}"
        config = write_config(folder, name, database.url, "random", 64)
        before = database.commits()
        started = time.perf_counter()
        running = [start(config) for _ in range(processes)]
        outputs = [p.communicate(timeout=900) for p in running]
        seconds = time.perf_counter() - started
        commits = database.commits() - before
        codes = [p.returncode for p in running]
        result = json.loads(outputs[0][0])
        trials = len(result["trials"])
        busy = _trial_seconds(database.url, name)
        return {"processes": processes, "exit_codes": codes, "seconds": round(seconds, 1),
                "evaluations": result["evaluations"], "trials": trials,
                "evaluations_per_minute": round(60 * result["evaluations"] / seconds, 1),
                "transactions": commits,
                "transactions_per_trial": round(commits / max(trials, 1), 1), **busy}
    finally:
        database.drop()


def _trial_seconds(storage: str, name: str) -> dict:
    """Where the processes' time went: summed durations of the trials that evaluated and
    of those that reused a result (deciding, sampling and storage calls)."""
    import optuna

    from kiln.study_storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False))
    evaluated = reused = 0.0
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_complete is None or trial.user_attrs.get("declined"):
            continue
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.user_attrs.get("reused"):
            reused += seconds
        else:
            evaluated += seconds
    return {"evaluating_trial_seconds": round(evaluated, 1),
            "reusing_trial_seconds": round(reused, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--scale", default="1,2,4")
    parser.add_argument("--out", default="benchmarks/results/search_distributed.json")
    args = parser.parse_args()
    folder = Path(f"/tmp/kiln-search-distributed-{uuid.uuid4().hex[:6]}")
    folder.mkdir(parents=True)
    best = optimum(folder)
    print(f"exhaustive optimum (grid, one process): {best}")
    runs = []
    print(f"{'run':>3} {'exit codes':>12} {'killed trial':>12} {'evaluations':>11} "
          f"{'duplicates':>10} {'best = optimum':>14} {'s':>6}")
    for index in range(args.repetitions):
        row = repetition(folder, index, best)
        runs.append(row)
        print(f"{index:3} {str(row['exit_codes']):>12} {str(row['killed_trial']):>12} "
              f"{str(row['evaluations']):>11} {row['duplicates']:10} "
              f"{str(row['best_equals_optimum']):>14} {row['seconds']:6}")
    summary = {"runs": len(runs), "crashes": sum(r["crashes"] for r in runs),
               "duplicates": sum(r["duplicates"] for r in runs),
               "killed_mid_evaluation": sum(r["killed_trial"] is not None for r in runs),
               "budget_exact": sum(r["evaluations"] == r["budget"] for r in runs),
               "best_equals_optimum": sum(r["best_equals_optimum"] for r in runs)}
    print(f"summary: {summary}")
    scaling = []
    print(f"\n{'processes':>9} {'seconds':>8} {'evaluations':>11} {'eval/min':>8} "
          f"{'trials':>6} {'transactions/trial':>18} {'evaluating s':>12} {'reusing s':>9}")
    for count in (int(v) for v in args.scale.split(",")):
        row = scale(folder, count)
        scaling.append(row)
        print(f"{count:9} {row['seconds']:8} {row['evaluations']:11} "
              f"{row['evaluations_per_minute']:8} {row['trials']:6} "
              f"{row['transactions_per_trial']:18} {row['evaluating_trial_seconds']:12} "
              f"{row['reusing_trial_seconds']:9}")
    Path(args.out).write_text(json.dumps({"optimum": best, "summary": summary, "runs": runs,
                                          "scale": scaling}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
