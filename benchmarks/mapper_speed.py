"""kiln's mapper CPU time on ZigZag's bundled networks and accelerators, and a hash of what it
chose, to compare two checkouts (a speed-up must not change a single mapping).

Each cell runs in a fresh process ``--repeats`` times (the best CPU time is kept: this machine
is noisy); the hash covers every layer's energy, latency, spatial and temporal mapping.

    python benchmarks/mapper_speed.py                         # this checkout
    python benchmarks/mapper_speed.py --repo /tmp/old-kiln    # another checkout, same cells

Writes benchmarks/results/mapper_speed.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = {"tpu_like": "tpu_like", "edge_tpu_like": "edge_tpu_like", "ascend_like": "ascend_like",
         "meta_prototype": "meta_prototype_like", "tesla_npu_like": "tesla_npu_like"}
CELLS = ["resnet18:meta_prototype:0", "mobilenetv2:tpu_like:0", "alexnet:ascend_like:0",
         "mobilenetv2:meta_prototype:4"]


def one_run(network: str, accelerator: str, refine: int) -> None:
    """In a child process: map the network, print CPU seconds and the result's hash."""
    import onnx  # noqa: F401  (imported before the clock, as the ZigZag comparison does)
    import zigzag

    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.hw.workload_mapper import map_workload

    inputs = Path(os.path.dirname(zigzag.__file__)) / "inputs"
    start = time.process_time()
    hw = load_accelerator(inputs / "hardware" / f"{accelerator}.yaml", duplicate_keys="last")
    workload = load_workload(str(inputs / "workload" / f"{network}.onnx"))
    mapping = load_zigzag_mapping(inputs / "mapping" / f"{PAIRS[accelerator]}.yaml")
    result = map_workload(workload, hw, "latency", mapping, lpf_limit=6, refine=refine)
    cpu = time.process_time() - start
    chosen = [(r.cost.latency_cycles, r.cost.energy_pj, str(r.temporal.as_dict()),
               str(r.spatial)) for r in result.layers]
    digest = hashlib.sha1(json.dumps(chosen).encode()).hexdigest()[:12]
    print(json.dumps({"cpu_s": cpu, "hash": digest}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="*", default=CELLS, help="network:accelerator:refine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repo", default=str(ROOT), help="the checkout whose kiln is timed")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "mapper_speed.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_run(args.child[0], args.child[1], int(args.child[2]))
        return
    env = {**os.environ, "PYTHONPATH": args.repo}
    rows = []
    for cell in args.cells:
        network, accelerator, refine = cell.split(":")
        runs = []
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, __file__, "--child", network, accelerator,
                                   refine], capture_output=True, text=True, env=env, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        hashes = sorted({run["hash"] for run in runs})
        row = {"network": network, "accelerator": accelerator, "refine": int(refine),
               "best_cpu_s": min(run["cpu_s"] for run in runs),
               "cpu_s": [run["cpu_s"] for run in runs], "hashes": hashes}
        rows.append(row)
        print(f"{network:12s} {accelerator:15s} refine {refine}  best {row['best_cpu_s']:6.2f} s"
              f"  hash {' '.join(hashes)}", flush=True)
    Path(args.out).write_text(json.dumps({"repo": args.repo, "cells": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
