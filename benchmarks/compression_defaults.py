"""kiln's quantization defaults, before session 16 and now, side by side in one run.

    .venv/bin/python benchmarks/compression_defaults.py [--seeds 0,1] [--models convnet,jsc]

For each model (the shipped convnet on Fashion-MNIST; jsc-three-linear on UCI letter, its
stand-in data), with the same calibration data for every row (8 batches of 256 training
images, seed 0) and weights per-channel symmetric (their range by width, MSE below 8
bits, except in "old defaults"):

* PTQ at W8A8, W4A8, W4A4, W3A8 and W2A2 with each activation range method (minmax,
  percentile, mse, entropy) and no bias correction, then ``kiln quantize --weight-bits W
  --activation-bits A`` as it is now ("defaults": MSE activation and weight ranges below
  8 bits, 8-bit logits, bias correction below 8-bit weights) and before session 16 ("old
  defaults": min-max, logits as narrow as the activations, no bias correction);
* QAT (2 epochs, Adam 5e-4, batch 128, per seed) at W4A4 and W2A2: the old defaults
  (min-max ranges, narrow logits, STE) against ``kiln qat --weight-bits W
  --activation-bits A`` now.

Prints each row as it is measured and writes benchmarks/results/compression_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import kiln
from kiln.data import load_dataset
from kiln.models import evaluate, resolve_model
from kiln.quant import calibrate, qat, quantize, uniform_config
from kiln.quant.ptq import refine_weights
from kiln.quant.qat import DEFAULT_METHOD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compression_defaults.json"
MODELS = {"convnet": ("convnet", "fashion-mnist"), "jsc": ("jsc-three-linear", "letter")}
RANGES = ("minmax", "percentile", "mse", "entropy")


def old_config(weight_bits: int, activation_bits: int):
    """What ``--weight-bits W --activation-bits A`` meant before session 16 (min-max
    activations and weights, logits as narrow as the activations)."""
    return uniform_config(weight_bits, activation_bits, activation={"range": "minmax"},
                          weight={"range": "minmax"}, logit_bits=activation_bits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--models", default="convnet,jsc")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"seeds": seeds, "models": {}}
    for key in args.models.split(","):
        model, data = MODELS[key]
        graph = resolve_model(model, pretrained=True)[0]
        dataset = load_dataset(data)
        record: dict = {"float": evaluate(graph, dataset), "ptq": [], "qat": []}
        print(f"\n{model} on {data}: float {record['float']:.2%}")
        for weight_bits, activation_bits in ((8, 8), (4, 8), (4, 4), (3, 8), (2, 2)):
            for method in (*RANGES, "defaults", "old defaults"):
                started = time.perf_counter()
                if method == "defaults":  # what kiln quantize does
                    quantized = kiln.quantize(graph, uniform_config(
                        weight_bits, activation_bits), data=dataset)
                elif method == "old defaults":
                    quantized = calibrate(quantize(graph, old_config(
                        weight_bits, activation_bits)), dataset)
                else:
                    config = uniform_config(weight_bits, activation_bits,
                                            activation={"range": method})
                    quantized = calibrate(quantize(graph, config), dataset)
                row = {"bits": f"W{weight_bits}A{activation_bits}", "range": method,
                       "accuracy": evaluate(quantized, dataset),
                       "seconds": round(time.perf_counter() - started, 1)}
                record["ptq"].append(row)
                print(f"  PTQ {row['bits']} {method:12s} {row['accuracy']:.2%}", flush=True)
        for weight_bits, activation_bits in ((4, 4), (2, 2)):
            for side, config, method in (
                    ("before", old_config(weight_bits, activation_bits), "ste"),
                    ("after", uniform_config(weight_bits, activation_bits), DEFAULT_METHOD)):
                for seed in seeds:
                    started = time.perf_counter()
                    quantized = calibrate(quantize(graph, config), dataset)
                    if side == "after":  # kiln qat corrects biases first (session 17)
                        quantized, _ = refine_weights(quantized, dataset)
                    _, training = qat(quantized, dataset, method=method, epochs=2, seed=seed)
                    row = {"bits": f"W{weight_bits}A{activation_bits}", "side": side,
                           "method": method, "seed": seed,
                           "accuracy": training.final_accuracy,
                           "seconds": round(time.perf_counter() - started, 1)}
                    record["qat"].append(row)
                    print(f"  QAT {row['bits']} {side:6s} {method} seed {seed} "
                          f"{row['accuracy']:.2%} ({row['seconds']:.0f} s)", flush=True)
        results["models"][model] = record
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
