"""Integer engine throughput against ONNX Runtime (QDQ and QOperator) and float PyTorch.

    .venv/bin/python benchmarks/engine_throughput.py
        [--models convnet,jsc-three-linear,resnet18-cifar] [--batches 1,32,256]
        [--repeats 5] [--threads N] [--load N] [--profile]

Each model is lowered at int8 (per-channel weights, uint8 activations, float32 rounding so
that ONNX Runtime runs the same bits) and exported in both ONNX forms. For every batch size
the runtimes take turns within each of --repeats rounds (a slow spell of the machine hits
all of them alike) and the best round counts; the engine is also timed as one call over
all the images (one batch per core). Every output integer of the engine is compared with
both ONNX forms. The convnet and jsc-three-linear run their test sets (shipped weights);
resnet18-cifar has random weights on random 3×32×32 inputs (512 images).

``--load N`` starts N busy processes (one per core: ``--load 2`` here) for the whole run, to
see how each runtime degrades when the machine is shared. ``--profile`` times the engine's
kernels per op (one thread, batch 256). The load average and the CPU's SIMD flags are
recorded. Prints tables and writes benchmarks/results/engine_throughput[_load].json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")


def cpu_flags() -> dict[str, object]:
    """The CPU model and which of the SIMD extensions that int8 kernels use it has."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return {"model": model, "simd": [flag for flag in SIMD_FLAGS if flag in flags]}


def best_of_interleaved(repeats: int, functions: dict) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, the functions taking turns in
    every round."""
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _busy() -> None:
    while True:
        pass


def prepare(model: str):
    """(program, float module, float inputs) of one benchmark model."""
    from kiln.data import load_dataset
    from kiln.integer import lower
    from kiln.models import build_graph, resolve_model
    from kiln.quant import calibrate, quantize, uniform_config

    if model == "resnet18-cifar":
        torch.manual_seed(0)
        graph = build_graph("resnet18-cifar", (3, 32, 32), 10)
        x = torch.rand(512 + 256, 3, 32, 32).numpy()
        calibration, x = torch.from_numpy(x[:256]), x[256:]
        quantized = calibrate(quantize(graph, uniform_config(8, 8)), calibration, batches=1)
    else:
        graph, info = resolve_model(model, pretrained=True)
        dataset = load_dataset(info.dataset)
        quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset)
        x = dataset.x_test
    return lower(quantized, rounding="float32"), graph.module.eval(), x


def profile_engine(program, x_q: np.ndarray, batch: int = 256) -> dict[str, float]:
    """Seconds per op kind of the engine on one thread (the pool-first conv included in
    'conv+maxpool'), over all of ``x_q`` in batches."""
    from kiln.integer import engine

    seconds: dict[str, float] = defaultdict(float)
    originals = dict(engine._UNARY), engine._add, engine._conv_accumulators, \
        engine._requantize_conv, engine.qmaxpool2d

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            seconds[name] += time.perf_counter() - start
            return result
        return wrapper

    engine._UNARY.update({kind: timed(kind, function) for kind, function in originals[0].items()})
    engine._add = timed("add", originals[1])
    engine._conv_accumulators = timed("conv accumulate (pooled first)", originals[2])
    engine._requantize_conv = timed("conv requantize (pooled first)", originals[3])
    engine.qmaxpool2d = timed("maxpool of accumulators", originals[4])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for first in range(0, len(x_q), batch):
            engine._run_batch(program, x_q[first:first + batch], keep=False)
        total = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        engine._UNARY.update(originals[0])
        engine._add, engine._conv_accumulators, engine._requantize_conv, \
            engine.qmaxpool2d = originals[1:]
    result = dict(sorted(seconds.items(), key=lambda item: -item[1]))
    # _conv's own time includes the accumulate and requantize it calls
    result["total"] = total
    return result


def measure(model: str, batches: list[int], repeats: int, threads: int, profile: bool
            ) -> dict:
    import onnxruntime as ort

    from kiln.integer import export_onnx, run

    program, module, x = prepare(model)
    x_q = program.input_quant.quantize(x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {}
    with tempfile.TemporaryDirectory() as folder:
        for form in ("qdq", "qoperator"):
            path = export_onnx(program, Path(folder) / f"{form}.onnx", export_format=form)
            sessions[form] = ort.InferenceSession(str(path), options,
                                                  providers=["CPUExecutionProvider"])
    # every output integer of the engine against both forms, on every image
    engine_out = run(program, x_q, batch_size=256)
    bit_exact = {form: bool(np.array_equal(engine_out, np.concatenate([
        session.run(["output_q"], {"input": x[i:i + 256]})[0]
        for i in range(0, len(x), 256)]).astype(np.int64)))
        for form, session in sessions.items()}
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    rows = []
    for batch in batches:
        # batch 1 over a slice: the per-call overheads are what it measures
        count = min(len(x), 500 if batch == 1 else len(x))
        slices = [slice(i, i + batch) for i in range(0, count, batch)]

        def engine_batches(slices=slices, batch=batch):
            return [run(program, x_q[s], batch_size=batch) for s in slices]

        def engine_once(count=count, batch=batch):
            return run(program, x_q[:count], batch_size=batch)

        def ort_batches(form, slices=slices):
            return [sessions[form].run(["output_q"], {"input": x[s]}) for s in slices]

        def pytorch(slices=slices):
            with torch.no_grad():
                for s in slices:
                    module(tensor[s])

        functions = {"engine": engine_batches, "engine, one call": engine_once,
                     "ORT QDQ": lambda: ort_batches("qdq"),
                     "ORT QOperator": lambda: ort_batches("qoperator"),
                     "PyTorch float32": pytorch}
        seconds = best_of_interleaved(repeats, functions)
        rate = {name: count / s for name, s in seconds.items()}
        best_ort = max(rate["ORT QDQ"], rate["ORT QOperator"])
        rows.append({"batch": batch, "images": count, "images_per_second": rate,
                     "engine_over_best_ort": rate["engine"] / best_ort,
                     "engine_one_call_over_best_ort": rate["engine, one call"] / best_ort})
    result = {"model": model, "bit_exact": bit_exact, "rows": rows}
    if profile:
        result["profile_seconds_one_thread"] = profile_engine(program, x_q)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="convnet,jsc-three-linear,resnet18-cifar")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--load", type=int, default=0,
                        help="busy processes running beside the benchmark")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for process in busy:
        process.start()
    load_before = os.getloadavg()
    try:
        results = [measure(model, [int(b) for b in args.batches.split(",")], args.repeats,
                           args.threads, args.profile)
                   for model in args.models.split(",")]
    finally:
        for process in busy:
            process.terminate()
    load_after = os.getloadavg()
    print(f"threads {args.threads}, busy processes {args.load}, best of {args.repeats}; "
          f"load average {load_before[0]:.2f} → {load_after[0]:.2f}")
    header = f"{'model':18} {'batch':>5} " + " ".join(f"{name:>16}" for name in (
        "engine", "engine, one call", "ORT QDQ", "ORT QOperator", "PyTorch float32")) \
        + f" {'engine/ORT':>10}"
    print(header)
    for result in results:
        for row in result["rows"]:
            rates = row["images_per_second"]
            print(f"{result['model']:18} {row['batch']:5d} "
                  + " ".join(f"{rates[name]:16.0f}" for name in (
                      "engine", "engine, one call", "ORT QDQ", "ORT QOperator",
                      "PyTorch float32"))
                  + f" {row['engine_over_best_ort']:10.2f}")
        print(f"{'':18} bit-exact with ORT: {result['bit_exact']}")
        if "profile_seconds_one_thread" in result:
            profile = result["profile_seconds_one_thread"]
            print(f"{'':18} profile (1 thread, s): " + ", ".join(
                f"{name} {value:.3f}" for name, value in profile.items()))
    out = RESULTS / ("engine_throughput.json" if not args.load else
                     f"engine_throughput_load{args.load}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "threads": args.threads, "busy_processes": args.load, "repeats": args.repeats,
        "load_average": {"before": load_before, "after": load_after},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **cpu_flags(),
                    "onnxruntime": ort.__version__, "torch": torch.__version__,
                    "numpy": np.__version__},
        "models": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
