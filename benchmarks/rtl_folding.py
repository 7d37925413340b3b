"""The int8 convnet folded to ECP5 devices, against the best uniform parallelism that fits.

    .venv/bin/python benchmarks/rtl_folding.py [--devices ecp5-85k,ecp5-25k] [--vectors 100]
        [--clock 50] [--seeds 1] [--skip-pnr]

For each device: ``kiln.rtl.folding.fold`` chooses P_in x P_out per layer (the fastest
folding whose estimate fits) and, to compare, the best single P for every stream
(``uniform=True``). Each design is emitted, simulated on Verilator with --vectors
Fashion-MNIST test images (every layer bit-exact against the engine; the measured cycles per
inference are what inferences/s use), then placed and routed with nextpnr. Prints the
per-layer folding with predicted resources, predicted vs actual totals, Fmax, inferences/s
and the speed-up over uniform, and writes benchmarks/results/rtl_folding.json.

``--seeds N`` places and routes every design with nextpnr seeds 1..N and keeps the fastest
(a seed sweep, as vendor tools offer): the same for the folded and the uniform design, every
seed's Fmax recorded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def convnet_program():
    from kiln.data import load_dataset
    from kiln.integer import lower
    from kiln.models import resolve_model
    from kiln.quant import calibrate, quantize, uniform_config

    graph, _ = resolve_model("convnet", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)),
                              load_dataset("fashion-mnist")))
    program.metadata["dataset"] = "fashion-mnist"
    return program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="ecp5-85k,ecp5-25k")
    parser.add_argument("--vectors", type=int, default=100)
    parser.add_argument("--clock", type=float, default=50.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--skip-pnr", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/rtl_folding.json")
    args = parser.parse_args()

    from kiln.errors import KilnError
    from kiln.rtl import emit, simulate
    from kiln.rtl.folding import Budget, fold
    from kiln.rtl.fpga import place_and_route

    program = convnet_program()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.devices.split(","):
            budget = Budget.of_device(name)
            for kind in ("folded", "uniform"):
                folding = fold(program, budget=budget, uniform=kind == "uniform")
                key = f"{name}_{kind}"
                design = emit(program, folding.parallelism(), Path(folder) / key)
                entry: dict = {"device": name, "kind": kind, "folding": folding.as_dict()}
                print(f"\n{key}: " + ", ".join(f"{layer.name} {layer.p_in}x{layer.p_out} "
                                               f"{layer.cycles:,} cycles"
                                               for layer in folding.layers), flush=True)
                print(f"  predicted: { {k: round(v) for k, v in folding.estimate.items()} }",
                      flush=True)
                sim = simulate(design, simulator="verilator", vectors=args.vectors, jobs=2)
                entry["simulation"] = {"passed": sim.passed, "vectors": sim.vectors,
                                       "cycles_per_inference": sim.cycles_per_inference,
                                       "ideal_cycles": sim.ideal_cycles}
                print(f"  Verilator: {sim.vectors} images bit-exact={sim.passed}, "
                      f"{sim.cycles_per_inference} cycles per inference", flush=True)
                if not args.skip_pnr:
                    started = time.perf_counter()
                    try:
                        runs = []
                        for seed in range(1, args.seeds + 1):
                            pnr = place_and_route(design, name, clock_mhz=args.clock,
                                                  seed=seed)
                            runs.append(pnr)
                            print(f"  {name} seed {seed}: used {pnr.used}, Fmax "
                                  f"{pnr.fmax_mhz:.2f} MHz, {pnr.inferences_per_second:,.0f} "
                                  f"inferences/s, P&R {pnr.pnr_seconds:.0f} s", flush=True)
                        pnr = max(runs, key=lambda run: run.fmax_mhz)
                        entry["pnr"] = pnr.as_dict()
                        entry["pnr"]["seeds"] = {str(seed): run.fmax_mhz
                                                 for seed, run in enumerate(runs, start=1)}
                    except KilnError as exc:
                        entry["pnr_error"] = str(exc)
                        print(f"  {name}: {exc}", flush=True)
                    entry["seconds"] = round(time.perf_counter() - started, 1)
                results[key] = entry
                out.write_text(json.dumps(results, indent=1, default=str))
            folded, uniform = results.get(f"{name}_folded", {}), results.get(f"{name}_uniform", {})
            if "pnr" in folded and "pnr" in uniform:
                ratio = (folded["pnr"]["inferences_per_second"]
                         / uniform["pnr"]["inferences_per_second"])
                results[f"{name}_speedup"] = round(ratio, 2)
                print(f"  {name}: folded / uniform inferences/s = {ratio:.2f}x", flush=True)
                out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
