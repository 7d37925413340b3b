"""The int8 convnet (shipped checkpoint) as generated hardware, on both simulators.

    .venv/bin/python benchmarks/rtl_convnet.py [--vectors 100] [--parallelism 16x16]
        [--simulators verilator,icarus]

Lowers the shipped convnet (int8, nearest rounding), emits it, streams --vectors Fashion-MNIST
test images through it on each simulator (every layer's outputs checked bit-exactly against
the engine) and writes benchmarks/results/rtl_convnet.json. Icarus runs at roughly a
millisecond per cycle under cocotb: 100 images at 16x16 take about 20 minutes.
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
    parser.add_argument("--simulators", default="verilator,icarus")
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
        design = emit(program, args.parallelism, Path(folder) / "convnet")
        for simulator in args.simulators.split(","):
            result = simulate(design, simulator=simulator, vectors=args.vectors)
            results[f"{simulator}_{args.parallelism}"] = {
                "bit_exact_vectors": result.vectors, "passed": result.passed,
                "cycles_per_inference": result.cycles_per_inference,
                "ideal_cycles": result.ideal_cycles, "utilization": result.utilization,
                "latency_cycles": result.latency_cycles, "build_seconds": result.build_seconds,
                "run_seconds": result.run_seconds}
            print(simulator, json.dumps(results[f"{simulator}_{args.parallelism}"]), flush=True)
            out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
