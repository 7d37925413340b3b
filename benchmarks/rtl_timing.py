"""Generated hardware at FPGA speed: today's RTL against an earlier revision's, side by side.

    .venv/bin/python benchmarks/rtl_timing.py [--before a8c4474] [--seeds 3] [--vectors 100]
        [--designs jsc:1x1:ecp5-25k,jsc:fold:ecp5-25k,convnet:fold:ecp5-25k,convnet:fold:ecp5-85k]
        [--before-seeds convnet:fold:ecp5-85k=1] [--seed-timeout 1800]

For every design (model : 1x1 or a folding for the device : device), both sides run the same
steps in the same run, each through its own ``kiln`` CLI (the earlier revision from a git
worktree of ``--before``): lower once (with today's code, nearest rounding: the same integer
program for both), ``emit-rtl``, ``simulate`` on Verilator (``--vectors`` test inputs, every
layer bit-exact; the measured cycles per inference are what inferences/s use), then Yosys +
nextpnr on the device with placement seeds 1..N (the earlier revision one seed per call at
its 50 MHz default, today's ``--seeds N`` at its predicted clock), keeping the best. Also
today's RTL at the earlier revision's folding, through Yosys only, for the LUT comparison at
the same folding. Records per side: Fmax of every seed, cycles, inferences/s, LUT/FF/BRAM/DSP
(nextpnr), the DSPs in requantizers and nextpnr's critical path. Prints a table and writes
benchmarks/results/rtl_timing.json. A device the earlier revision does not know (e.g.
nexus-lifcl-40) is run on today's side only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DESIGNS = ("jsc:1x1:ecp5-25k,jsc:fold:ecp5-25k,convnet:fold:ecp5-25k,"
                   "convnet:fold:ecp5-85k")
MODELS = {"jsc": "jsc-three-linear", "convnet": "convnet"}


def kiln(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m kiln ARGS`` with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    completed = subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True,
                               text=True, env=env, cwd=tree)
    if check and completed.returncode != 0:
        raise RuntimeError(f"kiln {' '.join(args)} failed:\n{completed.stderr[-2000:]}")
    return completed


def json_of(completed: subprocess.CompletedProcess) -> dict:
    text = completed.stdout
    return json.loads(text[text.index("{"):])


def requant_dsps(design: Path) -> int:
    """DSP tiles in the design's requantizers (the earlier RTL: 4 per requantizer)."""
    layers = json.loads((design / "design.json").read_text())["layers"]
    total = 0
    for layer in layers:
        if layer["kind"] == "maxpool":
            continue
        if "passes" not in layer:
            total += 4 * layer["requants"]
            continue
        if layer["passes"] > 1:
            total += layer["requants"]
        else:
            total += (layer["requants"] * -(-layer["acc_bits"] // 18)
                      * -(-(layer["m_bits"] + 1) // 18))
    return total


def run_side(tree: Path, program: Path, folder: Path, spec: str, seeds: int, vectors: int,
             today: bool, parallelism: dict | None = None, seed_timeout: float = 1800
             ) -> dict:
    from kiln.rtl.fpga import critical_path

    model, fold, device = spec.split(":")
    folder.mkdir(parents=True, exist_ok=True)
    design = folder / "design"
    emit_args = ["emit-rtl", str(program), "--out", str(design), "--json"]
    if parallelism is not None:
        config = folder / "parallelism.json"
        config.write_text(json.dumps(parallelism))
        emit_args += ["--config", str(config)]
    elif fold == "fold":
        emit_args += ["--device", device]
    else:
        emit_args += ["--parallelism", fold]
    emitted = json_of(kiln(tree, *emit_args))
    layers = emitted["layers"]
    row: dict = {"parallelism": {layer["name"]: f"{layer['p_in']}x{layer['p_out']}"
                                 for layer in layers if layer["kind"] != "maxpool"},
                 "requant_dsps": requant_dsps(design)}
    if parallelism is not None:  # Yosys only: the LUT comparison at the same folding
        synth = json_of(kiln(tree, "synth", str(design), "--target", device, "--json"))
        row["yosys_estimate"] = synth["estimate"]
        return row
    simulated = json_of(kiln(tree, "simulate", str(design), "--simulator", "verilator",
                             "--vectors", str(vectors), "--jobs", "2", "--json"))
    row.update(bit_exact_vectors=simulated["vectors"],
               cycles_per_inference=simulated["cycles_per_inference"])
    started = time.perf_counter()
    if today:
        result = json_of(kiln(tree, "synth", str(design), "--target", device, "--pnr",
                              "--seeds", str(seeds), "--seed-timeout", str(seed_timeout),
                              "--json", check=False))
        fmax_by_seed = {int(s): f for s, f in result["extra"]["seeds"].items()}
        path = result["extra"]["critical_path"]
        row["clock_constraint_mhz"] = result["clock_mhz"]
    else:
        fmax_by_seed, paths, results = {}, {}, {}
        for seed in range(1, seeds + 1):
            results[seed] = json_of(kiln(tree, "synth", str(design), "--target", device,
                                         "--pnr", "--seed", str(seed), "--seed-timeout",
                                         str(seed_timeout), "--json", check=False))
            fmax_by_seed[seed] = results[seed]["fmax_mhz"]
            paths[seed] = critical_path((design / f"pnr_{device}.log").read_text())
        best_seed = max(fmax_by_seed, key=fmax_by_seed.get)
        result, path = results[best_seed], paths[best_seed]
        row["clock_constraint_mhz"] = result["clock_mhz"]
    best = max(fmax_by_seed.values())
    row.update(fmax_by_seed=fmax_by_seed, fmax_mhz=best, used=result["used"],
               yosys_estimate=result["extra"]["estimate"],
               inferences_per_second=best * 1e6 / row["cycles_per_inference"],
               critical_path=path, pnr_seconds=round(time.perf_counter() - started, 1),
               requant_dsp_share=row["requant_dsps"] / max(result["used"]["dsp"], 1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="a8c4474", help="the earlier revision")
    parser.add_argument("--designs", default=DEFAULT_DESIGNS,
                        help="model:1x1|fold:device, comma-separated (model: jsc, convnet)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--before-seeds", default="",
                        help="design=N, comma-separated: fewer seeds for the earlier RTL "
                             "where its place and route takes very long")
    parser.add_argument("--vectors", type=int, default=100)
    parser.add_argument("--seed-timeout", type=float, default=1800,
                        help="stop a placement seed after this many seconds (one can get "
                             "stuck routing): it counts as no result")
    parser.add_argument("--out", default="benchmarks/results/rtl_timing.json")
    args = parser.parse_args()
    before_seeds = dict(item.split("=") for item in args.before_seeds.split(",") if item)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        before_tree = scratch / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            programs = {}
            for model in {spec.split(":")[0] for spec in args.designs.split(",")}:
                programs[model] = scratch / f"{model}-int8"
                kiln(ROOT, "lower", MODELS[model], "--rounding", "nearest", "--out",
                     str(programs[model]))
            for spec in args.designs.split(","):
                model = spec.split(":")[0]
                row = {"design": spec}
                work = scratch / spec.replace(":", "_")  # make refuses ':' in paths
                device = spec.split(":")[2]
                known = f'"{device}"' in (before_tree / "kiln/rtl/fpga.py").read_text()
                if known:
                    print(f"[{spec}] earlier RTL ({args.before})", flush=True)
                    row["before"] = run_side(before_tree, programs[model], work / "before",
                                             spec, int(before_seeds.get(spec, args.seeds)),
                                             args.vectors, today=False,
                                             seed_timeout=args.seed_timeout)
                print(f"[{spec}] today's RTL", flush=True)
                row["after"] = run_side(ROOT, programs[model], work / "after", spec,
                                        args.seeds, args.vectors, today=True,
                                        seed_timeout=args.seed_timeout)
                if known:
                    same = {name: [int(v) for v in p.split("x")]
                            for name, p in row["before"]["parallelism"].items()}
                    row["after_at_before_folding"] = run_side(
                        ROOT, programs[model], work / "same", spec, 1, args.vectors,
                        today=True, parallelism=same)
                    b, a = row["before"], row["after"]
                    row["speedup_inferences_per_second"] = (a["inferences_per_second"]
                                                            / b["inferences_per_second"])
                rows.append(row)
                print(json.dumps(row), flush=True)
                save(rows, args)  # every finished design, in case a later one fails
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)],
                           cwd=ROOT, capture_output=True)

    print()
    print("| design | side | Fmax per seed (MHz) | best | cycles | inferences/s | LUT | FF | "
          "BRAM | DSP (requant) | critical path |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for side in ("before", "after"):
            if side not in row:
                continue
            r = row[side]
            seeds = " / ".join(f"{f:.1f}" for f in r["fmax_by_seed"].values())
            used = r["used"]
            path = r["critical_path"]
            print(f"| {row['design']} | {side} | {seeds} | {r['fmax_mhz']:.1f} | "
                  f"{r['cycles_per_inference']:,.0f} | {r['inferences_per_second']:,.0f} | "
                  f"{used['lut']:,} | {used['ff']:,} | {used['bram']} | "
                  f"{used['dsp']} ({r['requant_dsps']}) | "
                  f"{' -> '.join(path.get('through', []))} |")
        if "before" not in row:
            continue
        same = row["after_at_before_folding"]["yosys_estimate"]["lut"]
        earlier = row["before"]["yosys_estimate"]["lut"]
        print(f"|  | speed-up {row['speedup_inferences_per_second']:.2f}x; LUT (Yosys) at the "
              f"earlier folding: {earlier:,} -> {same:,} ({same / earlier - 1:+.0%}) |")
    print(f"wrote {save(rows, args)}")


def save(rows: list[dict], args: argparse.Namespace) -> Path:
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"before": args.before, "seeds": args.seeds, "rows": rows},
                              indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
