"""kiln's compression against the tools users already like, side by side in one run:

    .venv/bin/python benchmarks/compression_vs_peers.py [--seeds 0,1] [--skip-peers]

On the shipped convnet (Fashion-MNIST), every tool gets the same network, the same 2,048
calibration images (kiln's: 8 batches of 256 training images, seed 0), the same
quantization points and widths (every layer input at A bits, weights per output channel
at W bits, logits at 8 bits, BatchNorm folded) and, for QAT, the same training recipe
(2 epochs, Adam 5e-4 with a cosine schedule, batch 128, the shuffle seeded per seed).

* kiln (this environment): ``kiln quantize`` / ``kiln qat`` with their defaults, each
  activation range method, AdaRound;
* ONNX Runtime ``quantize_static``, NNCF and Brevitas (``benchmarks/compression_peer.py``)
  in their own virtual environment, made on first use in ~/.cache/kiln/compression-peers
  with the locked torch and the peers' pinned versions.

Prints a table and writes benchmarks/results/compression_vs_peers.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import kiln
from kiln.data import load_dataset
from kiln.models import evaluate, resolve_model
from kiln.quant import calibrate, qat, quantize, uniform_config
from kiln.quant.ptq import refine_weights
from kiln.quant.quantize import calibration_batches

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compression_vs_peers.json"
PEERS_ENV = Path.home() / ".cache" / "kiln" / "compression-peers"
PEER_VERSIONS = {"nncf": "3.4.0", "brevitas": "0.13.4"}
RANGES = ("minmax", "percentile", "mse", "entropy")


def locked(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise SystemExit(f"{package} is not in requirements.lock")


def peers_python() -> Path:
    """The peers' interpreter, installing them on first use (torch and onnxruntime at
    kiln's locked versions, NNCF and Brevitas pinned)."""
    python = PEERS_ENV / "bin" / "python"
    wanted = {"torch": locked("torch"), "onnxruntime": locked("onnxruntime"), **PEER_VERSIONS}
    check = [str(python), "-c", "import importlib.metadata as m, json; print(json.dumps({p: "
             f"m.version(p) for p in {sorted(wanted)!r}}}))"]
    if python.is_file():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and json.loads(found.stdout) == wanted:
            return python
    print(f"installing the compression peers into {PEERS_ENV} ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(PEERS_ENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q",
                    *(f"{p}=={v}" for p, v in wanted.items()), f"onnx=={locked('onnx')}"],
                   check=True)
    return python


def write_work_dir(work: Path, dataset, graph) -> None:
    """What the peers read: the data as uint8 pixels and the weights as a state dict."""
    def pixels(x: np.ndarray) -> np.ndarray:
        values = np.rint(x * 255.0)
        assert np.array_equal(values / 255.0, x.astype(np.float64)) or np.allclose(
            (values / 255.0).astype(np.float32), x), "the dataset is not 8-bit pixels"
        return values.astype(np.uint8)

    calibration = torch.cat(calibration_batches(dataset)).numpy()
    np.savez(work / "data.npz", x_train=pixels(dataset.x_train), y_train=dataset.y_train,
             x_test=pixels(dataset.x_test), y_test=dataset.y_test,
             calibration=pixels(calibration))
    torch.save({k: v.detach().clone() for k, v in graph.module.state_dict().items()},
               work / "convnet.pt")


def kiln_rows(graph, dataset, seeds: list[int]) -> list[dict]:
    rows = []

    def add(kind: str, bits: str, method: str, seed: int, run) -> None:
        started = time.perf_counter()
        accuracy = evaluate(run(), dataset)
        rows.append({"tool": "kiln", "kind": kind, "bits": bits, "method": method,
                     "seed": seed, "accuracy": accuracy, "error": None,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)

    for w, a in ((8, 8), (4, 4)):
        bits = f"W{w}A{a}"
        add("PTQ", bits, "defaults", 0,
            lambda w=w, a=a: kiln.quantize(graph, uniform_config(w, a), data=dataset))
        for method in RANGES:
            add("PTQ", bits, f"{method} ranges", 0, lambda w=w, a=a, method=method: calibrate(
                quantize(graph, uniform_config(w, a, activation={"range": method})), dataset))
        add("PTQ", bits, "adaround", 0, lambda w=w, a=a: kiln.quantize(
            graph, uniform_config(w, a), data=dataset, adaround=True))
    for w, a in ((4, 4), (2, 2)):
        for seed in seeds:  # what `kiln qat --weight-bits W --activation-bits A` runs
            add("QAT", f"W{w}A{a}", "defaults", seed, lambda w=w, a=a, seed=seed: qat(
                refine_weights(calibrate(quantize(graph, uniform_config(w, a)), dataset),
                               dataset)[0], dataset, seed=seed)[0])
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| kind | bits | tool | method | seeds | accuracy | seconds |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["bits"], row["tool"], row["method"]), []).append(row)
    for (kind, bits, tool, method), members in sorted(groups.items()):
        accuracies = [r["accuracy"] for r in members]
        text = " / ".join("n/a" if math.isnan(x) else f"{x:.2%}" for x in accuracies)
        if any(r["error"] for r in members):
            text += f" ({members[0]['error'][:60]})"
        seeds = ",".join(str(r["seed"]) for r in members)
        seconds = sum(r["seconds"] for r in members) / len(members)
        lines.append(f"| {kind} | {bits} | {tool} | {method} | {seeds} | {text} | "
                     f"{seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--only-peers", action="store_true",
                        help="run the peers and keep kiln's rows from the last results file")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(2)
    graph = resolve_model("convnet", pretrained=True)[0]
    dataset = load_dataset("fashion-mnist")
    result: dict = {"seeds": seeds, "float": evaluate(graph, dataset),
                    "load_average": os.getloadavg(), "rows": []}
    print(f"convnet float: {result['float']:.2%}")
    if args.only_peers and RESULTS.is_file():
        result["rows"] = [r for r in json.loads(RESULTS.read_text())["rows"]
                          if r["tool"] == "kiln"]
    else:
        result["rows"] += kiln_rows(graph, dataset, seeds)
    if not args.skip_peers:
        python = peers_python()
        with tempfile.TemporaryDirectory(prefix="kiln-peers-") as folder:
            work = Path(folder)
            write_work_dir(work, dataset, graph)
            subprocess.run([str(python), str(ROOT / "benchmarks" / "compression_peer.py"),
                            str(work), str(work / "peers.json"), "--seeds", args.seeds],
                           check=True)
            peers = json.loads((work / "peers.json").read_text())
        result["peer_versions"] = peers["versions"]
        result["rows"] += peers["rows"]
    result["kiln_versions"] = {"torch": torch.__version__}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["rows"]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
