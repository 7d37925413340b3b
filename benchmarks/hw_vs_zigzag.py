"""kiln's mapper against zigzag-dse 3.9.1 on ZigZag's bundled ResNet-18, side by side.

For each bundled accelerator (with its bundled mapping: fixed spatial unrolling, temporal
order searched, objective latency) this runs, each in its own process so CPU time is its own:

1. zigzag-dse (``benchmarks/zigzag_peer.py``, LOMA with lpf limit 6),
2. kiln over the same space (refine 0): same loop orders, same allocation rule,
3. kiln refined (refine 4): the 4 best orders of each layer also get every memory allocation.

and checks kiln's cost model on ZigZag's chosen mapping of every layer (fixed-mapping agreement).

    python benchmarks/hw_vs_zigzag.py            # all five accelerators, ~6 minutes
    python benchmarks/hw_vs_zigzag.py tpu_like   # one

Writes benchmarks/results/hw_vs_zigzag.json and prints a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAIRS = {
    "tpu_like": "tpu_like",
    "edge_tpu_like": "edge_tpu_like",
    "ascend_like": "ascend_like",
    "meta_prototype": "meta_prototype_like",
    "tesla_npu_like": "tesla_npu_like",
}


def zigzag_inputs() -> Path:
    import zigzag

    return Path(os.path.dirname(zigzag.__file__)) / "inputs"


def run_kiln(hw_name: str, map_name: str, refine: int, out: str) -> None:
    """One kiln run (called in a child process)."""
    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.hw.workload_mapper import map_workload

    base = zigzag_inputs()
    start = time.process_time()
    hw = load_accelerator(base / "hardware" / f"{hw_name}.yaml", duplicate_keys="last")
    workload = load_workload(str(base / "workload" / "resnet18.onnx"))
    mapping = load_zigzag_mapping(base / "mapping" / f"{map_name}.yaml")
    result = map_workload(workload, hw, "latency", mapping, lpf_limit=6, refine=refine)
    cpu = time.process_time() - start
    data = result.as_dict()
    data["cpu_s"] = cpu
    data["evaluated"] = sum(r.evaluated for r in result.layers)
    Path(out).write_text(json.dumps(data, indent=1))


def fixed_mapping_check(peer: dict, hw_name: str) -> dict:
    """kiln's cost of ZigZag's own chosen mapping of each layer, relative to ZigZag's."""
    from kiln.hw import evaluate, fit_spatial, load_accelerator, load_workload
    from kiln.hw.mapping import SpatialMapping, TemporalMapping

    base = zigzag_inputs()
    hw = load_accelerator(base / "hardware" / f"{hw_name}.yaml", duplicate_keys="last")
    layers = {
        layer.name: layer
        for layer in load_workload(str(base / "workload" / "resnet18.onnx")).layers
    }
    worst_energy = worst_latency = 0.0
    for ref in peer["layers"]:
        layer = layers[ref["name"]]
        spatial = SpatialMapping({oa: dict(m) for oa, m in ref["spatial_mapping"].items()})
        temporal = TemporalMapping(
            {
                op: tuple(tuple((d, s) for d, s in lv) for lv in levels)
                for op, levels in ref["temporal_mapping"].items()
            }
        )
        fractional, integer, limited = fit_spatial(layer, hw, spatial)
        cost = evaluate(layer, hw, fractional, temporal, integer, limited)
        worst_energy = max(worst_energy, abs(cost.energy_pj / ref["energy_pj"] - 1))
        worst_latency = max(worst_latency, abs(cost.latency_cycles / ref["latency_cycles"] - 1))
    return {
        "layers": len(peer["layers"]),
        "worst_energy_rel_error": worst_energy,
        "worst_latency_rel_error": worst_latency,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--kiln-one":
        run_kiln(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    names = sys.argv[1:] or list(PAIRS)
    base = zigzag_inputs()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "hw_runs"
    tmp.mkdir(exist_ok=True)
    report = {
        "workload": "zigzag/inputs/workload/resnet18.onnx (21 Conv/Gemm layers)",
        "objective": "latency",
        "machine": f"{os.cpu_count()} cores",
        "accelerators": {},
    }
    python = sys.executable
    for name in names:
        mapping = PAIRS[name]
        peer_out = tmp / f"zigzag_{name}.json"
        subprocess.run(
            [
                python,
                str(ROOT / "benchmarks" / "zigzag_peer.py"),
                str(base / "workload" / "resnet18.onnx"),
                str(base / "hardware" / f"{name}.yaml"),
                str(base / "mapping" / f"{mapping}.yaml"),
                str(peer_out),
            ],
            check=True,
        )
        peer = json.loads(peer_out.read_text())
        runs = {}
        for label, refine in (("kiln", 0), ("kiln_refined", 4)):
            out = tmp / f"{label}_{name}.json"
            subprocess.run(
                [python, __file__, "--kiln-one", name, mapping, str(refine), str(out)], check=True
            )
            runs[label] = json.loads(out.read_text())
        peer_layers = {layer["name"]: layer for layer in peer["layers"]}
        entry = {
            "zigzag": {
                "cpu_s": peer["cpu_s"],
                "energy_pj": peer["energy_pj"],
                "latency_cycles": peer["latency_cycles"],
            },
            "fixed_mapping_check": fixed_mapping_check(peer, name),
            "layers": [],
        }
        for label, run in runs.items():
            worse = [
                r["layer"]
                for r in run["layers"]
                if r["latency_cycles"] > peer_layers[r["layer"]]["latency_cycles"] * 1.01
            ]
            better = [
                r["layer"]
                for r in run["layers"]
                if r["latency_cycles"] < peer_layers[r["layer"]]["latency_cycles"] * (1 - 1e-9)
            ]
            entry[label] = {
                "cpu_s": run["cpu_s"],
                "cpu_ratio": peer["cpu_s"] / run["cpu_s"],
                "energy_pj": run["energy_pj"],
                "latency_cycles": run["latency_cycles"],
                "evaluated": run["evaluated"],
                "layers_worse": worse,
                "layers_better": better,
            }
        for r0, r1 in zip(runs["kiln"]["layers"], runs["kiln_refined"]["layers"], strict=False):
            z = peer_layers[r0["layer"]]
            entry["layers"].append(
                {
                    "layer": r0["layer"],
                    "zigzag_latency": z["latency_cycles"],
                    "zigzag_energy_pj": z["energy_pj"],
                    "kiln_latency": r0["latency_cycles"],
                    "kiln_energy_pj": r0["energy_pj"],
                    "kiln_refined_latency": r1["latency_cycles"],
                    "kiln_refined_energy_pj": r1["energy_pj"],
                }
            )
        report["accelerators"][name] = entry
        kiln, refined = entry["kiln"], entry["kiln_refined"]
        check = entry["fixed_mapping_check"]
        print(
            f"{name:15s} zigzag {peer['cpu_s']:6.1f} s lat {peer['latency_cycles']:>11,.0f} | "
            f"kiln {kiln['cpu_s']:5.2f} s ({kiln['cpu_ratio']:.1f}x) "
            f"lat {kiln['latency_cycles']:>11,.0f} worse {len(kiln['layers_worse'])} | "
            f"refined {refined['cpu_s']:5.2f} s ({refined['cpu_ratio']:.1f}x) "
            f"lat {refined['latency_cycles']:>11,.0f} better {len(refined['layers_better'])} | "
            f"fixed-mapping err E {check['worst_energy_rel_error']:.1e} "
            f"L {check['worst_latency_rel_error']:.1e}",
            flush=True,
        )
    out = RESULTS / "hw_vs_zigzag.json"
    if out.exists() and len(names) < len(PAIRS):
        previous = json.loads(out.read_text())
        previous["accelerators"].update(report["accelerators"])
        report = previous
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
