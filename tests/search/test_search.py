"""Search spaces, constraints, strategies, resume after SIGKILL, workers on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from kiln.errors import ConfigError
from kiln.search import load_config, parse_config, run_search
from kiln.search.claims import spent
from kiln.study_storage import StorageError

POSTGRES = os.environ.get("KILN_TEST_POSTGRES", "postgresql://kiln:kiln@localhost:5432")


def jsc_config(tmp_path: Path, **overrides) -> dict:
    """A cheap study: jsc-three-linear on letter, per-layer weight widths {2, 4, 8}."""
    data = {
        "objectives": ["size"],
        "study": {"name": "jsc", "strategy": "grid", "trials": 27, "out": str(tmp_path / "out")},
        "model": {"name": "jsc-three-linear", "dataset": "letter"},
        "space": {"kind": "mixed-precision", "weight_bits": [2, 4, 8]},
        "evaluation": {"samples": 1000, "calibration_batches": 1},
        "constraints": {"max_accuracy_drop": 1.0},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return data


def write_toml(path: Path, data: dict) -> Path:
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_brute_force_finds_the_smallest_feasible_point_and_tpe_respects_the_constraint(tmp_path):
    grid = run_search(parse_config(jsc_config(tmp_path)))
    complete = [t for t in grid.trials if t["state"] == "COMPLETE"]
    assert len(complete) == 27
    assert len({json.dumps(t["params"], sort_keys=True) for t in complete}) == 27
    best = grid.best[0]
    assert best["feasible"] and best["metrics"]["accuracy_drop"] <= 1.0
    assert all(t["metrics"]["size"] >= best["metrics"]["size"] for t in complete if t["feasible"])
    # Something smaller exists but breaks the constraint: it is not chosen.
    assert any(
        t["metrics"]["size"] < best["metrics"]["size"] and not t["feasible"] for t in complete
    )
    tpe = run_search(
        parse_config(
            jsc_config(tmp_path, study={"name": "jsc-tpe", "strategy": "tpe", "trials": 12})
        )
    )
    assert tpe.evaluations == 12  # the budget counts evaluations; repeats are reused
    evaluated = [t["key"] for t in tpe.trials if t["state"] == "COMPLETE" and not t["reused"]]
    assert len(evaluated) == len(set(evaluated)) == 12
    if tpe.best:
        assert tpe.best[0]["metrics"]["accuracy_drop"] <= 1.0
        assert tpe.best[0]["metrics"]["size"] >= best["metrics"]["size"]
    written = tmp_path / "out" / "best_quantization.yaml"
    assert written.is_file()
    # the best model itself, as a model file the other commands read
    from kiln.models import resolve_model
    from kiln.quant.layers import QuantLinear

    best_model, _ = resolve_model(str(tmp_path / "out" / "best_model.pt"))
    widths = [m.weight_quantizer.spec.bits for m in best_model.module.modules()
              if isinstance(m, QuantLinear)]
    assert widths and len(widths) == 3


def test_best_config_is_accepted_by_kiln_quantize(tmp_path):
    result = run_search(
        parse_config(
            jsc_config(tmp_path, study={"trials": 9}, constraints={"max_accuracy_drop": 50.0})
        )
    )
    path = Path(result.files[0])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "quantize",
            "jsc-three-linear",
            "--data",
            "letter",
            "--config",
            str(path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    widths = {row[0]: row[2] for row in report["layers"]}
    for name, bits in (
        ("_2", result.best[0]["params"]["_2.w"]),
        ("_6", result.best[0]["params"]["_6.w"]),
    ):
        assert str(bits) in str(widths[name])


def test_same_seed_same_tpe_trials(tmp_path):
    first = run_search(
        parse_config(jsc_config(tmp_path / "a", study={"strategy": "tpe", "trials": 8}))
    )
    second = run_search(
        parse_config(jsc_config(tmp_path / "b", study={"strategy": "tpe", "trials": 8}))
    )
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]


def test_unmeetable_constraint_is_reported_with_the_closest_trial(tmp_path):
    config = jsc_config(
        tmp_path,
        study={"trials": 6, "strategy": "random"},
        constraints={"max_accuracy_drop": None, "min_accuracy": 0.99},
    )
    toml = write_toml(tmp_path / "impossible.toml", config)
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "search", str(toml)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "no configuration meets the constraints" in done.stdout
    assert "closest: trial" in done.stdout
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "No configuration meets the constraints" in summary


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="space.weight_bits is empty"):
        parse_config(jsc_config(tmp_path, space={"weight_bits": []}))
    with pytest.raises(ConfigError, match="single point"):
        run_search(parse_config(jsc_config(tmp_path, space={"weight_bits": [8]})))
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        parse_config(jsc_config(tmp_path, objectives=["speed"]))
    with pytest.raises(ConfigError, match="hardware"):
        parse_config(jsc_config(tmp_path, objectives=["latency"]))
    with pytest.raises(StorageError, match="cannot open study storage"):
        run_search(
            parse_config(
                jsc_config(tmp_path, study={"storage": "postgresql://kiln:kiln@127.0.0.1:1/x"})
            )
        )
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[study\nname=")
        load_config(tmp_path / "broken.toml")


# The study's own trials (the storage also holds kiln's evaluation-cache study).
FINISHED_VALUES = (
    "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id"
    " JOIN studies s ON s.study_id = t.study_id"
    " WHERE t.state = 'COMPLETE' AND s.study_name = 'jsc'"
)


def _completed(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id"
            " WHERE s.study_name = 'jsc' ORDER BY t.number").fetchall()


def test_search_killed_mid_trial_resumes_without_losing_or_repeating(tmp_path):
    config = jsc_config(tmp_path)
    toml = write_toml(tmp_path / "kill.toml", config)
    db = tmp_path / "out" / "jsc.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln", "search", str(toml)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            states = [state for _, state in _completed(db)] if db.exists() else []
        except sqlite3.OperationalError:  # the file exists before Optuna made its tables
            states = []
        if states.count("COMPLETE") >= 5 and "RUNNING" in states:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _completed(db)
    assert any(state == "RUNNING" for _, state in before)  # killed in the middle of a trial
    finished_before = {n for n, s in before if s == "COMPLETE"}
    assert 5 <= len(finished_before) < 27
    with sqlite3.connect(db) as connection:
        values_before = dict(connection.execute(FINISHED_VALUES).fetchall())
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "search", str(toml), "--resume", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    complete = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    # Every grid point paid for once. The killed trial pays for its point if it stored its
    # result before the kill (its retry then reuses it), else its retry pays.
    paid = [t["key"] for t in result["trials"] if t["cost"] > 0]
    assert len(paid) == len(set(paid)) == 27
    assert len({json.dumps(t["params"], sort_keys=True) for t in complete}) == 27
    # nothing evaluated twice across the restart: 27 evaluations for 27 points (the killed
    # trial's point counts once, whether its result was stored before the kill or not)
    assert result["evaluations"] == 27 and result["space_exhausted"]
    with sqlite3.connect(db) as connection:
        values_after = dict(connection.execute(FINISHED_VALUES).fetchall())
    assert all(values_after[n] == values_before[n] for n in finished_before)  # kept as they were


@pytest.fixture
def postgres_database():
    """A fresh database on the local PostgreSQL server that scripts/postgres.sh starts."""
    import psycopg

    name = f"kiln_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield f"{POSTGRES}/{name}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_workers_on_postgresql_finish_every_trial_once(tmp_path, postgres_database):
    torch.set_num_threads(1)
    grid = parse_config(jsc_config(tmp_path, study={"storage": postgres_database, "trials": 27}))
    result = run_search(grid, workers=2)
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert len({json.dumps(t["params"], sort_keys=True) for t in complete}) == 27
    # each point evaluated once; a worker that started a trial just as the other finished
    # the last point gets a repeat, which is reused, not evaluated
    assert result.evaluations == 27 and len(_evaluated(result)) == 27
    assert all(t["reused"] for t in complete if t["number"] >= 27)
    tpe = jsc_config(tmp_path, study={"name": "jsc-tpe", "storage": postgres_database,
                                      "strategy": "tpe", "trials": 10},
                     evaluation={"seed": 3})  # another evaluation: nothing to reuse
    result = run_search(parse_config(tpe), workers=2)
    evaluated = _evaluated(result)
    assert len(set(evaluated)) == len(evaluated) == result.evaluations >= 10
    # the same evaluation as the grid study: all 27 points are known on this storage
    tpe["study"]["name"], tpe["evaluation"] = "jsc-tpe-2", {"samples": 1000,
                                                           "calibration_batches": 1}
    result = run_search(parse_config(tpe), workers=2)
    assert result.evaluations == 0 and result.exhausted


def test_per_op_type_space_with_formats_and_range_methods(tmp_path):
    from kiln.models import build_graph
    from kiln.quant import QuantConfig
    from kiln.search.spaces import MixedPrecisionSpace

    space = MixedPrecisionSpace(
        build_graph("convnet"),
        weight_bits=[4, 8],
        per="op",
        weight_format=["int", "bfp"],
        weight_range=["minmax", "mse"],
    )
    choices = space.choices()
    assert set(choices) == {
        f"{op}.{what}" for op in ("conv2d", "linear") for what in ("w", "format", "range")
    }
    params = {
        "conv2d.w": 4,
        "conv2d.format": "bfp",
        "conv2d.range": "mse",
        "linear.w": 8,
        "linear.format": "int",
        "linear.range": "mse",
    }
    config = QuantConfig.parse(space.config(params))
    rules = {rule.match.name[0]: rule for rule in config.rules}
    assert rules["features_0"].weight["format"] == "bfp"
    assert rules["classifier_1"].weight["range"] == "mse"
    assert space.size() == 2**6


def _evaluated(result) -> list[str]:
    return [t["key"] for t in result.trials if t["state"] in ("COMPLETE", "PRUNED")
            and not t["reused"]]


def test_no_configuration_is_evaluated_twice_and_an_exhausted_space_stops(tmp_path):
    """TPE proposes repeats on a 27-point space; they are reused, free, and the study stops
    when all 27 are known even though the budget is larger."""
    config = jsc_config(tmp_path, study={"name": "tpe", "strategy": "tpe", "trials": 40,
                                         "storage": "memory://exhaust"})
    result = run_search(parse_config(config))
    assert len(_evaluated(result)) == len(set(_evaluated(result))) == 27
    assert result.evaluations == 27 and result.exhausted
    assert any(t["reused"] for t in result.trials)  # the sampler did repeat itself
    reused = [t for t in result.trials if t["reused"]]
    first = {t["key"]: t["metrics"] for t in result.trials if not t["reused"]}
    assert all(t["metrics"] == first[t["key"]] for t in reused)  # the stored result
    # Without deduplication the same budget evaluates repeats again (the old behaviour).
    config["study"].update(name="tpe-dup", deduplicate=False, trials=27)
    plain = run_search(parse_config(config))
    keys = [t["key"] for t in plain.trials]
    assert len(keys) == 27 and len(set(keys)) < 27


def test_a_second_study_on_the_same_storage_reuses_the_first_ones_evaluations(tmp_path):
    storage = "memory://shared"
    first = run_search(parse_config(jsc_config(tmp_path, study={
        "name": "a", "strategy": "random", "trials": 8, "storage": storage, "seed": 1})))
    second = run_search(parse_config(jsc_config(tmp_path, study={
        "name": "b", "strategy": "random", "trials": 8, "storage": storage, "seed": 1})))
    assert first.evaluations == 8
    # same sampler seed: the same first proposals, all known already
    assert [t["key"] for t in second.trials[:8]] == [t["key"] for t in first.trials[:8]]
    assert all(t["reused"] for t in second.trials[:8])
    assert len(set(_evaluated(first)) & set(_evaluated(second))) == 0
    # a different evaluation (calibration seed) is a different cache
    other = run_search(parse_config(jsc_config(tmp_path, study={
        "name": "c", "strategy": "random", "trials": 3, "storage": storage, "seed": 1},
        evaluation={"seed": 5})))
    assert not any(t["reused"] for t in other.trials)


def test_low_fidelity_prunes_the_clearly_infeasible_and_keeps_the_optimum(tmp_path):
    grid = run_search(parse_config(jsc_config(tmp_path, study={
        "name": "truth", "storage": "memory://fidelity-truth"})))
    config = jsc_config(tmp_path, study={"name": "mf", "strategy": "grid", "trials": 27,
                                         "storage": "memory://fidelity"},
                        evaluation={"low_fidelity_samples": 200})
    result = run_search(parse_config(config))
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    assert pruned and all(0 < t["cost"] < 1 for t in pruned)
    assert all(t["low_fidelity"]["accuracy_drop"] > 1.0 for t in pruned)
    assert result.evaluations < 27
    assert result.best[0]["params"] == grid.best[0]["params"]
    assert result.best[0]["metrics"] == grid.best[0]["metrics"]  # full score, same samples
    with pytest.raises(ConfigError, match="single objective"):
        parse_config(jsc_config(tmp_path, objectives=["size", "accuracy"],
                                evaluation={"low_fidelity_samples": 100}))


def test_uniform_points_come_first(tmp_path):
    config = jsc_config(tmp_path, study={"name": "u", "strategy": "tpe", "trials": 5,
                                         "seed_uniform": True, "storage": "memory://uniform"})
    result = run_search(parse_config(config))
    firsts = [t["params"] for t in result.trials[:3]]
    assert firsts == [{"_2.w": b, "_4.w": b, "_6.w": b} for b in (2, 4, 8)]


def test_config_paths_are_relative_to_the_config_file_and_checked_first(tmp_path, monkeypatch):
    """Run from another folder: the accelerator named in examples/search resolves; a
    missing one is named before any work (it was four tracebacks and exit 0)."""
    example = Path(__file__).parents[2] / "examples/search/convnet_hardware.toml"
    monkeypatch.chdir(tmp_path)
    config = load_config(example)
    assert Path(config.hardware.accelerator).is_file()
    broken = tmp_path / "broken.toml"
    broken.write_text(example.read_text().replace("../hardware/edge_npu.yaml",
                                                  "../hardware/nope.yaml"))
    with pytest.raises(ConfigError, match=r"\[hardware\].accelerator '../hardware/nope.yaml'"):
        load_config(broken)


def test_a_search_whose_every_trial_fails_is_an_error(tmp_path, monkeypatch):
    from kiln.errors import KilnError
    from kiln.search.objectives import Evaluator

    def broken(self, params, graph=None):
        raise KilnError("layer 'x': cannot quantize")

    monkeypatch.setattr(Evaluator, "measure", broken)
    with pytest.raises(KilnError, match="every trial of study 'jsc' failed.*cannot quantize"):
        run_search(parse_config(jsc_config(tmp_path, study={"trials": 3,
                                                            "storage": "memory://fails"})))


def _study_trials(storage: str, name: str) -> list:
    import optuna

    from kiln.study_storage import open_storage

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False))
    except (KeyError, StorageError):  # not created yet, or its tables are being created
        return []
    return study.get_trials(deepcopy=False)


def test_processes_started_at_different_times_share_one_study_and_survive_a_kill(
        tmp_path, postgres_database):
    """Three `kiln search` processes join one PostgreSQL study 2 s apart; one is killed
    with SIGKILL in the middle of an evaluation and started again. Every surviving process
    exits 0, the budget is spent exactly, nothing is evaluated twice, and the best equals
    a one-process run's."""
    space = {"kind": "mixed-precision", "weight_bits": [2, 3, 4, 8]}  # 64 points
    evaluation = {"samples": 2000, "calibration_batches": 1}
    config = jsc_config(tmp_path, study={"name": "jsc-many", "strategy": "random",
                                         "trials": 64, "storage": postgres_database},
                        space=space, evaluation=evaluation)
    toml = write_toml(tmp_path / "many.toml", config)
    command = [sys.executable, "-m", "kiln", "search", str(toml), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    processes = []
    for _ in range(3):
        processes.append(start())
        time.sleep(2)
    # Kill the first process in the middle of an evaluation of its own, after a fifth of
    # the budget: freeze it (SIGSTOP), look, and kill it (SIGKILL) if it is evaluating.
    import optuna

    from kiln.study_storage import open_storage

    victim = f":{processes[0].pid}"

    def its_trials(study) -> list:
        return [t for t in study.get_trials(deepcopy=False)
                if (t.user_attrs.get("decision") or {}).get("process", "").endswith(victim)
                and t.user_attrs["decision"]["trial"] == t.number]

    evaluating: list = []
    deadline = time.time() + 300
    study = None
    while time.time() < deadline and not evaluating and processes[0].poll() is None:
        time.sleep(0.01)
        if study is None:
            try:
                study = optuna.load_study(study_name="jsc-many", storage=open_storage(
                    postgres_database, heartbeat=False))
            except KeyError:
                continue
        if sum(t.state.name == "COMPLETE" and not t.user_attrs.get("reused")
               for t in its_trials(study)) < 5:
            continue
        processes[0].send_signal(signal.SIGSTOP)
        evaluating = [t for t in its_trials(study) if t.state.name == "RUNNING"
                      and t.user_attrs["decision"]["kind"] == "evaluate"]
        if not evaluating:
            processes[0].send_signal(signal.SIGCONT)
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait()
    assert evaluating, "the first process was never caught evaluating"
    processes[0] = start()  # the same command again: it joins
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    result = json.loads(outputs[-1][0])
    # Every point paid for once; the killed trial pays for its point if it stored its
    # result before the kill (its retry then reuses it), else its retry pays.
    paid = [t["key"] for t in result["trials"] if t["cost"] > 0]
    assert len(paid) == len(set(paid)) == 64 == result["evaluations"]
    killed = [t for t in result["trials"] if t["number"] == evaluating[0].number]
    assert killed[0]["state"] == "FAIL"  # failed by its heartbeat, and its point run again
    single = jsc_config(tmp_path, study={"name": "jsc-one", "strategy": "grid", "trials": 64},
                        space=space, evaluation=evaluation)
    alone = run_search(parse_config(single))
    assert result["best"][0]["params"] == alone.best[0]["params"]


def test_a_second_process_with_another_config_is_refused_naming_the_difference(tmp_path):
    config = jsc_config(tmp_path, study={"trials": 2})
    toml = write_toml(tmp_path / "a.toml", config)
    first = subprocess.run([sys.executable, "-m", "kiln", "search", str(toml), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-m", "kiln", "search", str(toml), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr  # the same config joins (nothing left to do)
    assert json.loads(again.stdout)["evaluations"] == 2
    other = jsc_config(tmp_path, study={"trials": 2}, space={"kind": "mixed-precision",
                                                              "weight_bits": [4, 8]})
    refused = subprocess.run([sys.executable, "-m", "kiln", "search",
                              str(write_toml(tmp_path / "b.toml", other))],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "space.weight_bits: the study has [2, 4, 8], this config [4, 8]" in refused.stderr


def test_resume_beside_a_running_process_takes_over_nothing_alive(tmp_path, postgres_database):
    """The issue's crash: a second process started with --resume while the first runs. The
    first process's running trials have live heartbeats: nothing of theirs is failed, both
    exit 0, and the budget is spent once."""
    config = jsc_config(tmp_path, study={"name": "jsc-resume", "storage": postgres_database})
    toml = write_toml(tmp_path / "resume.toml", config)
    first = subprocess.Popen([sys.executable, "-m", "kiln", "search", str(toml), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
            t.state.name == "COMPLETE" for t in _study_trials(postgres_database, "jsc-resume")):
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "kiln", "search", str(toml), "--resume",
                             "--json"], capture_output=True, text=True, timeout=600)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    trials = _study_trials(postgres_database, "jsc-resume")
    assert not any(t.user_attrs.get("killed") for t in trials)
    result = json.loads(second.stdout)
    evaluated = [t["key"] for t in result["trials"]
                 if t["state"] == "COMPLETE" and not t["reused"]]
    assert len(evaluated) == len(set(evaluated)) == 27 == result["evaluations"]


def test_show_does_not_create_a_missing_database(tmp_path):
    missing = tmp_path / "nowhere" / "x.db"
    shown = subprocess.run([sys.executable, "-m", "kiln", "search", "show", "jsc", "--storage",
                            f"sqlite:///{missing}"], capture_output=True, text=True)
    assert shown.returncode == 2 and "no study storage at" in shown.stderr
    assert not missing.parent.exists()


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT])
def test_workers_end_with_their_killed_search(tmp_path, signal_number):
    """SIGKILL or SIGINT (to the search alone, not its process group) of `kiln search
    --workers 2` in the middle of a long study: the search and its workers exit within
    seconds instead of finishing the study."""
    config = jsc_config(tmp_path, study={"name": "jsc-orphans", "strategy": "random",
                                         "trials": 216},
                        space={"kind": "mixed-precision", "weight_bits": [2, 3, 4, 5, 6, 8]},
                        evaluation={"samples": 2000, "calibration_batches": 1})
    toml = write_toml(tmp_path / "orphans.toml", config)
    search = subprocess.Popen([sys.executable, "-m", "kiln", "search", str(toml),
                               "--workers", "2"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = tmp_path / "out" / "jsc-orphans.db"
    workers: list[int] = []
    deadline = time.time() + 300  # a loaded machine: the baseline alone can take a minute

    def completed() -> int:
        # plain sqlite, waiting out the workers' write locks: optuna's load_study read as
        # "no trials" while two writers held the file, and under load the poll slept
        # through the whole study (620 trials complete when the signal came)
        if not db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
            try:
                return connection.execute(
                    "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            except sqlite3.OperationalError:  # the tables are not there yet
                return 0

    while time.time() < deadline:
        found = subprocess.run(["pgrep", "-P", str(search.pid)], capture_output=True,
                               text=True).stdout.split()
        workers = [int(pid) for pid in found]
        if len(workers) >= 2 and completed() >= 4:
            break
        time.sleep(0.2)
    assert len(workers) >= 2
    search.send_signal(signal_number)
    search.wait(timeout=30)
    time.sleep(5)  # the workers look for their parent every second

    def alive(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        return status.exists() and "zombie" not in status.read_text().lower()

    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their search"
    left = _study_trials(f"sqlite:///{db}", "jsc-orphans")
    assert spent(left) < 216  # stopped, not finished
