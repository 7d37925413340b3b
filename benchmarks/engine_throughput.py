"""Integer engine throughput against ONNX Runtime and float PyTorch, in one run.

    .venv/bin/python benchmarks/engine_throughput.py [--model convnet] [--batch 256]

Lowers the shipped model (int8 weights per channel, uint8 activations, float32 rounding
so that ONNX Runtime can run the same bits), exports it as QOperator ONNX, and times
each runtime over the whole test set in batches, best of --repeats rounds (the runtimes
take turns within a round). Checks that
the engine and ONNX Runtime agree on every output integer. Prints a table and writes
benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def best_of_interleaved(repeats: int, functions: dict) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, the functions taking turns in
    every round, so that a slow spell of the machine hits all of them alike."""
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import onnxruntime as ort

    from kiln.data import load_dataset
    from kiln.integer import export_onnx, lower, run
    from kiln.models import resolve_model
    from kiln.quant import calibrate, quantize, uniform_config

    torch.set_num_threads(args.threads)
    graph, info = resolve_model(args.model, pretrained=True)
    dataset = load_dataset(info.dataset)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset), rounding="float32")
    x = dataset.x_test
    x_q = program.input_quant.quantize(x)
    batches = [slice(i, i + args.batch) for i in range(0, len(x), args.batch)]

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(program, Path(folder) / "model.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def engine() -> list[np.ndarray]:
        return [run(program, x_q[b], batch_size=args.batch) for b in batches]

    def engine_whole() -> np.ndarray:
        # One call over the test set: the engine runs one batch of --batch per core.
        return run(program, x_q, batch_size=args.batch)

    def onnxruntime() -> list[np.ndarray]:
        return [session.run(["output_q"], {"input": x[b]})[0] for b in batches]

    module = graph.module.eval()
    tensor = torch.from_numpy(x)

    def pytorch() -> None:
        with torch.no_grad():
            for b in batches:
                module(tensor[b])

    exact = all(
        np.array_equal(a, o.astype(np.int64)) for a, o in zip(engine(), onnxruntime(), strict=True)
    )
    seconds = best_of_interleaved(args.repeats, {
        "kiln engine (int8, bit-exact)": engine,
        "kiln engine, one call (batch per core)": engine_whole,
        "ONNX Runtime (QOperator int8)": onnxruntime,
        "PyTorch (float32)": pytorch,
    })
    throughput = {name: len(x) / s for name, s in seconds.items()}
    engine_rate = throughput["kiln engine (int8, bit-exact)"]
    print(
        f"{args.model} on {info.dataset}: {len(x)} images, batch {args.batch}, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print(f"{'runtime':34} {'images/s':>10} {'engine / this':>14}")
    for name, rate in throughput.items():
        print(f"{name:34} {rate:10.0f} {engine_rate / rate:14.2f}")
    print(f"engine and ONNX Runtime agree on every output integer: {exact}")
    result = {
        "model": args.model,
        "dataset": info.dataset,
        "images": len(x),
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "images_per_second": throughput,
        "bit_exact_with_onnxruntime": exact,
        "engine_over_onnxruntime": engine_rate / throughput["ONNX Runtime (QOperator int8)"],
        "engine_over_pytorch": engine_rate / throughput["PyTorch (float32)"],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
    }
    out = Path(__file__).parent / "results" / "engine_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
