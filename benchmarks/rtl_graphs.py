"""Networks people use, as generated hardware: residual, depthwise-separable, pooled.

    .venv/bin/python benchmarks/rtl_graphs.py [--only resnet8,mobilenet-tiny,qonnx-residual,
        resnet18-cifar,units] [--vectors 100] [--icarus-vectors 10] [--device ecp5-85k] [--seeds 1]
        [--seed-timeout 1800]
        [--no-pnr] [--jobs 2]

For the zoo's resnet8 and mobilenet-tiny (shipped Fashion-MNIST checkpoints): float and int8
(nearest rounding) test accuracy on the whole test split, the program folded to --device
(kiln.rtl.folding.fold), --vectors test images through it on Verilator and
--icarus-vectors on Icarus (every beat of every layer against the engine), and placed and
routed on the device (Fmax, resources, inferences/s, P&R time). Then qonnx's
residual_block_clean.onnx (random calibration, 4x4) and the zoo's resnet18-cifar (random
weights, 32x32, 16x16) emitted and simulated on Verilator (2 random inputs; 1 for
resnet18-cifar), with what resnet18-cifar would need on an FPGA (kiln's resource model);
and per unit of a small graph, Yosys's ECP5 cells with hierarchy kept (``units``).
Writes benchmarks/results/rtl_graphs.json (a row per network, updated in place).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "rtl_graphs.json"
QONNX_RESIDUAL = "qonnx/data/onnx/residual_block_clean.onnx"


def _save(results: dict, key: str, row: dict) -> None:
    results[key] = row
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(key, json.dumps(row), flush=True)


def zoo_row(name: str, args: argparse.Namespace, folder: Path) -> dict:
    from kiln.data import load_dataset
    from kiln.integer import lower, run
    from kiln.models import resolve_model
    from kiln.quant import calibrate, quantize, uniform_config
    from kiln.rtl import emit, simulate
    from kiln.rtl.folding import Budget, fold
    from kiln.rtl.fpga import place_and_route

    dataset = load_dataset("fashion-mnist")
    graph, info = resolve_model(name, pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset),
                    rounding="nearest")
    program.metadata["dataset"] = "fashion-mnist"
    x_int = program.input_quant.quantize(dataset.x_test)
    logits = run(program, x_int)
    int8_accuracy = float(np.mean(logits.argmax(1) == dataset.y_test))
    folding = fold(program, budget=Budget.of_device(args.device))
    design = emit(program, folding.parallelism(), folder / name,
                  rom_layout=folding.rom_layout)
    row = {"float_accuracy": info.metrics.get("test_accuracy"),
           "int8_accuracy": int8_accuracy, "device": args.device,
           "parallelism": {k: f"{a}x{b}" for k, (a, b) in folding.parallelism().items()},
           "planned_cycles": folding.cycles, "estimate": folding.estimate}
    verilator = simulate(design, simulator="verilator", vectors=args.vectors, jobs=args.jobs)
    row["verilator"] = {"vectors": verilator.vectors, "bit_exact": verilator.passed,
                        "cycles_per_inference": verilator.cycles_per_inference,
                        "run_seconds": verilator.run_seconds}
    if args.icarus_vectors:
        icarus = simulate(design, simulator="icarus", vectors=args.icarus_vectors,
                          jobs=args.jobs)
        row["icarus"] = {"vectors": icarus.vectors, "bit_exact": icarus.passed,
                         "run_seconds": icarus.run_seconds}
    if args.pnr:
        started = time.perf_counter()
        placed = place_and_route(design, args.device, seeds=args.seeds,
                                 seed_timeout=args.seed_timeout)
        row["pnr"] = {"fmax_mhz": placed.fmax_mhz, "used": placed.used,
                      "inferences_per_second": placed.inferences_per_second,
                      "seeds": placed.extra.get("seeds"),
                      "critical_path": placed.extra.get("critical_path"),
                      "synth_seconds": placed.synth_seconds, "pnr_seconds": placed.pnr_seconds,
                      "seconds": time.perf_counter() - started}
    return row


def qonnx_row(folder: Path) -> dict:
    import importlib.util

    import torch

    from kiln.graph import from_onnx
    from kiln.integer import lower
    from kiln.quant import calibrate, quantize, uniform_config
    from kiln.rtl import emit, simulate

    spec = importlib.util.find_spec("qonnx")
    path = Path(spec.origin).parent.parent / QONNX_RESIDUAL
    graph = from_onnx(path)
    shape = graph.input_shape[1:]
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(0))
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), x), rounding="nearest")
    design = emit(program, (4, 4), folder / "qonnx-residual")
    result = simulate(design, simulator="verilator",
                      inputs=program.input_quant.quantize(x[:2].numpy()))
    return {"ops": [op.kind for op in program.ops], "parallelism": "4x4",
            "vectors": result.vectors, "bit_exact": result.passed,
            "cycles_per_inference": result.cycles_per_inference,
            "skip_depths": {layer.name: layer.skip_depths for layer in design.layers
                            if any(layer.skip_depths)}}


def resnet18_row(folder: Path) -> dict:
    import torch

    from kiln.errors import KilnError
    from kiln.integer import lower
    from kiln.models import build_graph
    from kiln.quant import calibrate, quantize, uniform_config
    from kiln.rtl import emit, simulate
    from kiln.rtl.folding import Budget, fold

    graph = build_graph("resnet18-cifar", (3, 32, 32), 10)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), x), rounding="nearest")
    started = time.perf_counter()
    design = emit(program, (16, 16), folder / "resnet18")
    emit_seconds = time.perf_counter() - started
    result = simulate(design, simulator="verilator",
                      inputs=program.input_quant.quantize(x[:1].numpy()))
    row = {"parallelism": "16x16", "emit_seconds": emit_seconds, "vectors": result.vectors,
           "bit_exact": result.passed, "cycles_per_inference": result.cycles_per_inference,
           "build_seconds": result.build_seconds, "run_seconds": result.run_seconds}
    try:
        fold(program, budget=Budget.of_device("ecp5-85k"))
        row["ecp5_85k"] = "fits"
    except KilnError as exc:
        row["ecp5_85k"] = str(exc)
    return row


def units_row(folder: Path) -> dict:
    """Per unit of a small graph (a residual block, a depthwise-separable block, a global
    pool; tests/rtl/test_rtl_graphs.py's, 4x4): Yosys's ECP5 cells with hierarchy kept
    (rtl_resource_model.synthesize_layers), the skip FIFOs too."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rtl_resource_model import _module_totals, resources, synthesize_layers

    from kiln.integer import lower
    from kiln.quant import calibrate, quantize, uniform_config
    from kiln.rtl import emit
    from tests.rtl.test_rtl_graphs import ResidualSeparable

    torch.manual_seed(0)
    from kiln.graph import from_torch

    graph = from_torch(ResidualSeparable().eval(), torch.zeros(1, 1, 6, 6), name="separable")
    x = torch.rand(64, 1, 6, 6)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), x), rounding="nearest")
    design = emit(program, (4, 4), folder / "units")
    per_layer, whole, seconds = synthesize_layers(design, "ecp5")
    netlist = json.loads((design.directory / "hier.json").read_text())
    totals = _module_totals(netlist)
    top = netlist["modules"]["kiln_top"]["cells"]
    skips = {name: resources(totals[cell["type"]]) for name, cell in top.items()
             if name.startswith("skip_")}
    rows = [{"layer": row["layer"]["name"], "kind": row["layer"]["kind"],
             "cycles": row["layer"]["cycles_per_input"], "used": row["used"]}
            for row in per_layer]
    return {"units": rows, "skip_fifos": skips, "whole": whole, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="resnet8,mobilenet-tiny,qonnx-residual,"
                                           "resnet18-cifar,units")
    parser.add_argument("--vectors", type=int, default=100)
    parser.add_argument("--icarus-vectors", type=int, default=10)
    parser.add_argument("--device", default="ecp5-85k")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed-timeout", type=float, default=1800,
                        help="stop a placement seed after this many seconds")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-pnr", dest="pnr", action="store_false")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in args.only.split(","):
            if name in ("resnet8", "mobilenet-tiny"):
                _save(results, name, zoo_row(name, args, folder))
            elif name == "qonnx-residual":
                _save(results, name, qonnx_row(folder))
            elif name == "resnet18-cifar":
                _save(results, name, resnet18_row(folder))
            elif name == "units":
                _save(results, name, units_row(folder))
            else:
                raise SystemExit(f"unknown network '{name}'")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
