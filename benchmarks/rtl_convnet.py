"""The int8 convnet (shipped checkpoint) as generated hardware, on both simulators.

    .venv/bin/python benchmarks/rtl_convnet.py [--vectors 100] [--parallelism 16x16]
        [--first 1x16] [--simulators verilator,icarus] [--jobs 2]

Lowers the shipped convnet (int8, nearest rounding), emits it with --parallelism on every
layer but the first conv, which gets --first (its input has one channel: P_in = 1 takes the
same cycles as 16 with a sixteenth of the multipliers), streams --vectors Fashion-MNIST test
images through it on each simulator (every layer's outputs checked bit-exactly against the
engine; --jobs simulator processes share the images) and writes
benchmarks/results/rtl_convnet.json. Icarus runs at about a millisecond per cycle on this
design (7,448 cycles per image): 100 images took 11 minutes with 2 jobs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100)
    parser.add_argument("--parallelism", default="16x16")
    parser.add_argument("--first", default="1x16")
    parser.add_argument("--simulators", default="verilator,icarus")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from kiln.data import load_dataset
    from kiln.integer import lower
    from kiln.models import resolve_model
    from kiln.quant import calibrate, quantize, uniform_config
    from kiln.rtl import emit, simulate

    dataset = load_dataset("fashion-mnist")
    graph, _ = resolve_model("convnet", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset))
    program.metadata["dataset"] = "fashion-mnist"
    out = Path(__file__).resolve().parent / "results" / "rtl_convnet.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as folder:
        parallelism = {"default": tuple(int(p) for p in args.parallelism.split("x")),
                       "features_0": tuple(int(p) for p in args.first.split("x"))}
        design = emit(program, parallelism, Path(folder) / "convnet")
        key = f"{args.parallelism}_first_{args.first}"
        for simulator in args.simulators.split(","):
            result = simulate(design, simulator=simulator, vectors=args.vectors, jobs=args.jobs)
            results[f"{simulator}_{key}"] = {"jobs": args.jobs,
                "bit_exact_vectors": result.vectors, "passed": result.passed,
                "cycles_per_inference": result.cycles_per_inference,
                "ideal_cycles": result.ideal_cycles, "utilization": result.utilization,
                "latency_cycles": result.latency_cycles, "build_seconds": result.build_seconds,
                "run_seconds": result.run_seconds}
            print(simulator, json.dumps(results[f"{simulator}_{key}"]), flush=True)
            out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
