"""Random networks through every stage: the large differential run behind the README.

    .venv/bin/python benchmarks/fuzz_networks.py [--count 1000] [--rtl-count 100]

Two runs of ``kiln.fuzz.fuzz``: ``--count`` networks from the full generator through
lower, engine (against the reference interpreter and the fake-quant graph) and ONNX
Runtime (both export forms, every output integer, no layer left in float), then
``--rtl-count`` networks from the RTL emitter's shapes through those stages and RTL
simulation on Verilator, every ``--icarus-every``-th also on Icarus. Failures are shrunk
and saved under benchmarks/results/fuzz/cases/. Prints the counts per stage and writes
benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import onnxruntime
import torch

from kiln.fuzz import fuzz

RESULTS = Path(__file__).parent / "results"


def _run(label: str, **options) -> dict:
    done = [0]

    def tick(index: int, result) -> None:
        done[0] += 1
        if result.failure is not None or done[0] % 50 == 0:
            status = "FAIL " + result.failure.message[:100] if result.failure else "ok"
            print(f"  {label} {done[0]}/{options['count']} seed {result.spec.seed}: {status}",
                  flush=True)

    report = fuzz(on_network=tick, out=RESULTS / "fuzz", **options)
    print(f"{label}: seeds {options['seed']}..{options['seed'] + options['count'] - 1}, "
          f"{report.seconds:.0f} s")
    for stage in report.stages:
        print(f"  {stage:7s} passed {report.passed[stage]:5d}  failed "
              f"{report.failed.get(stage, 0):3d}  skipped {report.skipped[stage]:4d}")
    if report.icarus_checked:
        print(f"  also simulated on Icarus: {report.icarus_checked}")
    for failure in report.failures:
        print(f"  seed {failure['seed']}: {failure['stage']}: {failure['message'][:160]}\n"
              f"    shrunk to {failure['shrunk']}")
    return report.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtl-count", type=int, default=100)
    parser.add_argument("--rtl-seed", type=int, default=100_000)
    parser.add_argument("--icarus-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="networks checked at once")
    args = parser.parse_args()
    results = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__,
                           "processor": platform.processor() or platform.machine()}}
    if args.count:
        results["engine_onnx"] = _run("lower/engine/onnx", count=args.count, seed=args.seed,
                                      stages=("lower", "engine", "onnx"), workers=args.workers)
    if args.rtl_count:
        results["rtl"] = _run("lower/engine/onnx/rtl", count=args.rtl_count,
                              seed=args.rtl_seed, stages=("lower", "engine", "onnx", "rtl"),
                              icarus_every=args.icarus_every, workers=args.workers)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'fuzz.json'}")


if __name__ == "__main__":
    main()
