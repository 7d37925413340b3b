"""``fuzz``: many random networks through the chosen stages, failures shrunk and saved.

Each network is checked in a worker process (``workers`` at a time), so that a crash in
a native library (a segfault in PyTorch's convolution was one) is that network's failure,
not the end of the run. A failing network is shrunk (:mod:`kiln.fuzz.shrink`) and
written as a case file, ``cases/seed-<S>.json``, holding the network, the failure and the
command that replays it: ``kiln fuzz --replay cases/seed-<S>.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.fuzz.differential import STAGES, CaseResult, StageFailure, check_network
from kiln.fuzz.networks import NetworkSpec, random_network
from kiln.fuzz.shrink import shrink
from kiln.report.markdown import write_text


@dataclass
class FuzzReport:
    """Counts per stage over the networks tried, and every failure."""

    seed: int
    count: int
    stages: tuple[str, ...]
    passed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)  # seed, stage, reason each
    icarus_checked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def signatures(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure["signature"]] = counts.get(failure["signature"], 0) + 1
        return counts

    def skip_reasons(self) -> dict[str, int]:
        """How many networks each stage skipped, per reason."""
        counts: dict[str, int] = {}
        for skip in self.skips:
            key = f"{skip['stage']}: {skip['reason']}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "count": self.count, "stages": list(self.stages),
                "passed": self.passed, "skipped": self.skipped, "failed": self.failed,
                "skips": self.skips, "skip_reasons": self.skip_reasons(),
                "failures": self.failures, "distinct_bugs": self.signatures(),
                "icarus_checked": self.icarus_checked, "seconds": round(self.seconds, 1)}


def _check_stages(stages: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise KilnError(f"unknown fuzz stage(s) {', '.join(unknown) or '(none)'}: use a "
                        f"comma-separated list of {', '.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in stages)


def save_case(folder: Path, spec: NetworkSpec, result: CaseResult, stages: tuple[str, ...],
              original: NetworkSpec, tried: int) -> Path:
    """Write a failing network as a reproducible case file."""
    assert result.failure is not None
    path = folder / f"seed-{original.seed}.json"
    case = {"network": json.loads(spec.to_json()), "description": spec.describe(),
            "stage": result.failure.stage, "message": result.failure.message,
            "signature": result.failure.signature, "stages": list(stages),
            "details": {k: v for k, v in result.details.items() if k != "stage"},
            "original": json.loads(original.to_json()), "shrink_tries": tried,
            "command": f"kiln fuzz --replay {path}"}
    write_text(path, json.dumps(case, indent=2, default=str) + "\n")
    return path


def _check_in_worker(spec: NetworkSpec, stages: tuple[str, ...], options: dict[str, Any]
                     ) -> CaseResult:
    return check_network(spec, stages, **options)


class _Workers:
    """check_network in spawned worker processes; a worker that dies is a crash."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Any = None

    def _executor(self, workers: int) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def check(self, specs: list[NetworkSpec], stages: tuple[str, ...],
              options: dict[str, Any]) -> list[CaseResult]:
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool = self._executor(self.workers)
        try:
            futures = [self.pool.submit(_check_in_worker, spec, stages, options)
                       for spec in specs]
            return [future.result() for future in futures]
        except BrokenProcessPool:
            self.close()
        results = []  # find which network(s) crashed: one at a time, each in a new process
        for spec in specs:
            with self._executor(1) as single:
                try:
                    results.append(single.submit(_check_in_worker, spec, stages,
                                                 options).result())
                except BrokenProcessPool:
                    crashed = CaseResult(spec)
                    crashed.failure = StageFailure("crash", "the process died (a crash in a "
                                                   "native library, e.g. a segfault)")
                    results.append(crashed)
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def fuzz(*, count: int = 100, seed: int = 0, stages: tuple[str, ...] = STAGES,
         simulator: str = "verilator", icarus_every: int = 0, vectors: int = 3,
         shrink_failures: bool = True, out: Path | None = None, workers: int = 1,
         on_network: Callable[[int, CaseResult], None] | None = None) -> FuzzReport:
    """Check ``count`` random networks (seeds ``seed`` .. ``seed + count - 1``).

    With ``rtl`` among the stages the networks are drawn from what the RTL emitter takes,
    and every ``icarus_every``-th one is also simulated on Icarus. Failures are shrunk and,
    with ``out``, saved as case files under ``out/cases/``.
    """
    stages = _check_stages(stages)
    if count < 1:
        raise KilnError(f"count must be at least 1, got {count}")
    if workers < 1:
        raise KilnError(f"workers must be at least 1, got {workers}")
    report = FuzzReport(seed, count, stages, {s: 0 for s in stages}, {s: 0 for s in stages},
                        {s: 0 for s in stages})
    started = time.perf_counter()
    options = {"vectors": vectors, "simulator": simulator}
    pool = _Workers(workers)
    try:
        for start in range(0, count, workers):
            specs = [random_network(seed + index, rtl="rtl" in stages)
                     for index in range(start, min(count, start + workers))]
            for offset, result in enumerate(pool.check(specs, stages, options)):
                index = start + offset
                if result.ok and "rtl" in result.passed and icarus_every and \
                        index % icarus_every == 0:
                    (result,) = pool.check([result.spec], stages,
                                           {**options, "simulator": "icarus"})
                    report.icarus_checked += 1
                _count(report, result, stages)
                if result.failure is not None:
                    report.failures.append(_failure_entry(
                        result, stages, pool, options, shrink_failures, out))
                if on_network is not None:
                    on_network(index, result)
    finally:
        pool.close()
    report.seconds = time.perf_counter() - started
    if out is not None:
        write_text(Path(out) / "fuzz.json", json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def _count(report: FuzzReport, result: CaseResult, stages: tuple[str, ...]) -> None:
    for stage in stages:
        if result.passed.get(stage):
            report.passed[stage] += 1
        elif stage in result.skipped:
            report.skipped[stage] += 1
            report.skips.append({"seed": result.spec.seed, "stage": stage,
                                 "reason": result.skipped[stage],
                                 "network": result.spec.describe()})
    if result.failure is not None:
        report.failed[result.failure.stage] = report.failed.get(result.failure.stage, 0) + 1


def _failure_entry(result: CaseResult, stages: tuple[str, ...], pool: _Workers,
                   options: dict[str, Any], shrink_failures: bool, out: Path | None
                   ) -> dict[str, Any]:
    assert result.failure is not None
    spec = result.spec
    small, small_result, tried = spec, result, 0
    if shrink_failures:
        small, small_result, tried = shrink(
            spec, result, stages=stages,
            check=lambda candidate: pool.check([candidate], stages, options)[0])
    entry = {"seed": spec.seed, "stage": result.failure.stage,
             "signature": result.failure.signature,
             "message": small_result.failure.message if small_result.failure else "",
             "network": spec.describe(), "shrunk": small.describe()}
    if out is not None:
        entry["case"] = str(save_case(Path(out) / "cases", small, small_result, stages, spec,
                                      tried))
    return entry


def replay(case_path: str | Path, *, simulator: str = "verilator") -> CaseResult:
    """Run a saved case (or a bare network JSON) again through its stages."""
    path = Path(case_path)
    if not path.is_file():
        raise KilnError(f"{path}: no such fuzz case file")
    try:
        data = json.loads(path.read_text())
        network = data.get("network", data)
        spec = NetworkSpec.from_json(json.dumps(network))
    except (ValueError, TypeError) as exc:
        raise KilnError(f"{path}: not a fuzz case ({exc})") from None
    stages = _check_stages(tuple(data.get("stages", STAGES)))
    return check_network(spec, stages, simulator=simulator)
