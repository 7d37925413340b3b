"""kiln's mapper against zigzag-dse 3.9.1, side by side in one run, on every ONNX network the
zigzag-dse wheel bundles and its five bundled accelerators with their bundled mappings.

For each (network, accelerator, objective) this runs, each in its own process so that the
CPU time is its own and counted the same way for both (after the imports: ZigZag's API
imports onnx, so kiln's run imports it before its clock starts too):

1. zigzag-dse (``benchmarks/zigzag_peer.py``, LOMA with lpf limit 6),
2. kiln over the same space (refine 0): the same loop orders and allocation rule,
3. kiln refined (refine 4, ``kiln map``'s default): the 4 best orders of each layer also
   get every memory allocation.

It also checks kiln's cost model on ZigZag's chosen mapping of every layer, and profiles
one kiln run (where its CPU time goes).

    python benchmarks/hw_vs_zigzag.py                       # everything, ~25 minutes
    python benchmarks/hw_vs_zigzag.py --networks resnet18 --accelerators tpu_like

Writes benchmarks/results/hw_vs_zigzag.json and prints a table.
"""

from __future__ import annotations

import argparse
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
NETWORKS = ["resnet18", "alexnet", "mobilenetv2"]
# The other objectives, on one accelerator and network (ZigZag spells EDP in capitals).
OBJECTIVE_RUNS = [("resnet18", "tpu_like", "energy"), ("resnet18", "tpu_like", "edp")]


def zigzag_inputs() -> Path:
    import zigzag

    return Path(os.path.dirname(zigzag.__file__)) / "inputs"


def run_kiln(network: str, hw_name: str, objective: str, refine: int, out: str) -> None:
    """One kiln run (called in a child process)."""
    import onnx  # noqa: F401  (imported before the clock, as ZigZag's API imports it)

    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.hw.workload_mapper import map_workload

    base = zigzag_inputs()
    start = time.process_time()
    hw = load_accelerator(base / "hardware" / f"{hw_name}.yaml", duplicate_keys="last")
    workload = load_workload(str(base / "workload" / f"{network}.onnx"))
    mapping = load_zigzag_mapping(base / "mapping" / f"{PAIRS[hw_name]}.yaml")
    result = map_workload(workload, hw, objective, mapping, lpf_limit=6, refine=refine)
    cpu = time.process_time() - start
    data = result.as_dict()
    data["cpu_s"] = cpu
    data["evaluated"] = sum(r.evaluated for r in result.layers)
    Path(out).write_text(json.dumps(data, indent=1))


def profile_kiln(network: str, hw_name: str) -> dict:
    """Where kiln's CPU time goes on one run (cProfile, grouped by what the code does)."""
    import cProfile
    import pstats

    import onnx  # noqa: F401

    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.hw.workload_mapper import map_workload

    base = zigzag_inputs()
    hw = load_accelerator(base / "hardware" / f"{hw_name}.yaml", duplicate_keys="last")
    workload = load_workload(str(base / "workload" / f"{network}.onnx"))
    mapping = load_zigzag_mapping(base / "mapping" / f"{PAIRS[hw_name]}.yaml")
    profiler = cProfile.Profile()
    profiler.enable()
    map_workload(workload, hw, "latency", mapping, lpf_limit=6)
    profiler.disable()
    stats = pstats.Stats(profiler)
    # Grouped by the module the time is spent in (own time, not cumulative).
    modules = {
        "kiln/hw/allocation_batch.py": "memory allocation (LOMA, numpy over orders)",
        "kiln/hw/allocation.py": "every allocation of the refined orders",
        "kiln/hw/mapping_keys.py": "deduplication keys (numpy over orders)",
        "kiln/hw/cost_batch.py": "coupled cost terms (numpy over mappings)",
        "kiln/hw/analysis.py": "operand analyses (cost model, once per operand key)",
        "kiln/hw/cost.py": "the winner's full evaluation (cost model)",
        "kiln/hw/orders.py": "order enumeration",
        "kiln/hw/mapper.py": "search bookkeeping (kiln/hw/mapper.py)",
        "kiln/hw/spatial.py": "spatial candidates",
    }
    other = "other (Python built-ins, other kiln modules)"
    numpy_group = "numpy internals (array operations)"
    total = stats.total_tt
    own: dict[str, float] = dict.fromkeys([*modules.values(), numpy_group, other], 0.0)
    top = []
    for (filename, _, name), (_, _, tottime, cumtime, _) in stats.stats.items():
        group = next((g for path, g in modules.items() if filename.endswith(path)), None)
        if group is None:
            group = numpy_group if "numpy" in filename or "numpy" in name else other
        own[group] += tottime
        if "kiln" in filename:
            top.append((tottime, cumtime, name))
    top.sort(reverse=True)
    return {
        "run": f"{network} on {hw_name}, objective latency, same space",
        "profiled_s": total,
        "share": {group: seconds / total for group, seconds in own.items()},
        "top_functions": [{"function": n, "own_s": t, "cumulative_s": c} for t, c, n in top[:12]],
    }


def fixed_mapping_check(network: str, peer: dict, hw_name: str) -> dict:
    """kiln's cost of ZigZag's own chosen mapping of each layer, relative to ZigZag's."""
    from kiln.hw import evaluate, fit_spatial, load_accelerator, load_workload
    from kiln.hw.mapping import SpatialMapping, TemporalMapping

    base = zigzag_inputs()
    hw = load_accelerator(base / "hardware" / f"{hw_name}.yaml", duplicate_keys="last")
    layers = {layer.name: layer
              for layer in load_workload(str(base / "workload" / f"{network}.onnx")).layers}
    worst_energy = worst_latency = 0.0
    for ref in peer["layers"]:
        layer = layers[ref["name"]]
        spatial = SpatialMapping({oa: dict(m) for oa, m in ref["spatial_mapping"].items()})
        temporal = TemporalMapping(
            {op: tuple(tuple((d, s) for d, s in lv) for lv in levels)
             for op, levels in ref["temporal_mapping"].items()})
        fractional, integer, limited = fit_spatial(layer, hw, spatial)
        cost = evaluate(layer, hw, fractional, temporal, integer, limited)
        worst_energy = max(worst_energy, abs(cost.energy_pj / ref["energy_pj"] - 1))
        worst_latency = max(worst_latency, abs(cost.latency_cycles / ref["latency_cycles"] - 1))
    return {"layers": len(peer["layers"]), "worst_energy_rel_error": worst_energy,
            "worst_latency_rel_error": worst_latency}


def _primary(layer: dict, objective: str) -> float:
    if objective == "energy":
        return layer["energy_pj"]
    if objective == "edp":
        return layer["energy_pj"] * layer["latency_cycles"]
    return layer["latency_cycles"]


def one_cell(network: str, hw_name: str, objective: str, tmp: Path) -> dict:
    base = zigzag_inputs()
    python = sys.executable
    tag = f"{network}_{hw_name}_{objective}"
    peer_out = tmp / f"zigzag_{tag}.json"
    subprocess.run([python, str(ROOT / "benchmarks" / "zigzag_peer.py"),
                    str(base / "workload" / f"{network}.onnx"),
                    str(base / "hardware" / f"{hw_name}.yaml"),
                    str(base / "mapping" / f"{PAIRS[hw_name]}.yaml"), str(peer_out), "6",
                    {"edp": "EDP"}.get(objective, objective)], check=True)
    peer = json.loads(peer_out.read_text())
    peer_layers = {layer["name"]: layer for layer in peer["layers"]}
    entry = {"network": network, "accelerator": hw_name, "objective": objective,
             "zigzag": {k: peer[k] for k in ("cpu_s", "energy_pj", "latency_cycles")},
             "fixed_mapping_check": fixed_mapping_check(network, peer, hw_name)}
    for label, refine in (("kiln", 0), ("kiln_refined", 4)):
        out = tmp / f"{label}_{tag}.json"
        subprocess.run([python, __file__, "--kiln-one", network, hw_name, objective,
                        str(refine), str(out)], check=True)
        run = json.loads(out.read_text())
        worse = [r["layer"] for r in run["layers"]
                 if _primary(r, objective) > _primary(peer_layers[r["layer"]], objective)
                 * (1 + 1e-9)]
        equal = [r["layer"] for r in run["layers"]
                 if abs(r["latency_cycles"] - peer_layers[r["layer"]]["latency_cycles"])
                 <= 1e-9 * peer_layers[r["layer"]]["latency_cycles"]
                 and abs(r["energy_pj"] - peer_layers[r["layer"]]["energy_pj"])
                 <= 1e-9 * peer_layers[r["layer"]]["energy_pj"]]
        entry[label] = {"cpu_s": run["cpu_s"], "cpu_ratio": peer["cpu_s"] / run["cpu_s"],
                        "energy_pj": run["energy_pj"], "latency_cycles": run["latency_cycles"],
                        "evaluated": run["evaluated"], "layers": len(run["layers"]),
                        "layers_equal": len(equal), "layers_worse": worse}
    return entry


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--kiln-one":
        run_kiln(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="*", default=NETWORKS)
    parser.add_argument("--accelerators", nargs="*", default=list(PAIRS))
    parser.add_argument("--no-objectives", action="store_true",
                        help="skip the energy and EDP runs")
    parser.add_argument("--out", default=str(RESULTS / "hw_vs_zigzag.json"),
                        help="where the JSON goes (a subset run should not replace the full)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "hw_runs"
    tmp.mkdir(exist_ok=True)
    cells = [(n, a, "latency") for n in args.networks for a in args.accelerators]
    if not args.no_objectives:
        cells += [c for c in OBJECTIVE_RUNS if c[0] in args.networks and c[1] in args.accelerators]
    report = {"tool": "zigzag-dse 3.9.1", "machine": f"{os.cpu_count()} cores",
              "profile": profile_kiln(args.networks[0], args.accelerators[0]), "runs": []}
    print(f"{'network':12s} {'accelerator':15s} {'objective':8s} {'ZigZag':>8s} "
          f"{'kiln':>7s} {'ratio':>7s} {'equal':>7s} {'worse':>5s} {'refined':>8s} "
          f"{'ratio':>7s} {'worse':>5s}")
    for network, hw_name, objective in cells:
        entry = one_cell(network, hw_name, objective, tmp)
        report["runs"].append(entry)
        same, refined = entry["kiln"], entry["kiln_refined"]
        print(f"{network:12s} {hw_name:15s} {objective:8s} {entry['zigzag']['cpu_s']:7.1f}s "
              f"{same['cpu_s']:6.2f}s {same['cpu_ratio']:6.1f}x "
              f"{same['layers_equal']:>3d}/{same['layers']:<3d} {len(same['layers_worse']):>5d} "
              f"{refined['cpu_s']:7.2f}s {refined['cpu_ratio']:6.1f}x "
              f"{len(refined['layers_worse']):>5d}", flush=True)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    share = report["profile"]["share"]
    print("profile (" + report["profile"]["run"] + "): " +
          ", ".join(f"{group} {value:.0%}" for group, value in share.items()))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
