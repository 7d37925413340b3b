"""kiln's multi-core scheduler beside stream-dse 2.1.1, side by side in one run, on Stream's own
inputs: ResNet-18 (the ``resnet18.onnx`` the zigzag-dse wheel ships) on Stream's
``tpu_like_quad_core`` (Stream's fused mapping, and layer by layer) and on its
``meta_prototype_dual_core_simd_offchip``, and Stream's 2-conv test model on both systems.

Each tool runs in its own process, CPU time counted after the imports. Stream is installed by
this script into its own Python 3.12 environment (``~/.cache/kiln/stream-dse-2.1.1``, pyenv's
3.12) and runs in a fresh output folder each time (it caches per-core costs there and would
silently reuse them).

Conventions, as Stream applies them: data moves with its ONNX element type (ResNet-18 is
float32: 32-bit activations and weights on links and DRAM; the 2-conv model bfloat16), MACs
are priced at the cores' 8-bit operands, link and bus bandwidths in bits per cycle, the DRAM
port at its 64 bits per cycle. kiln's runs: ``--precision onnx``, the default allocation
(MAC layers split over every compute core's output channels, as Stream does; pooling and
element-wise layers on the cores that list them), ``--granularity auto`` for the fused case
(layer by layer or every layer fused at 16/8/4/2 rows per tile, the best) and ``layer`` for
the layer-by-layer case. Every kiln schedule passes kiln's validator.

Fidelity: Stream's own choice for ResNet-18 on the quad core (its fused groups, allocation and
inter-core splits, merged into one Stream mapping YAML) is evaluated by kiln too.

Fidelity also with ``--single-route`` (every transfer on one route, as Stream moves data), to
show how much of the difference is kiln splitting core-to-core transfers over routes.

ResNet-18 on the quad core is also run with 16 times the SRAM per compute core (both tools):
how close each scheduler gets to the DRAM-traffic bound when the cores' capacity does not
limit weight prefetching.

    python benchmarks/schedule_vs_stream.py            # everything, ~7 minutes
    python benchmarks/schedule_vs_stream.py --cases resnet18-quad-fused

Writes benchmarks/results/schedule_vs_stream.json and prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STREAM_VERSION = "2.1.1"
STREAM_ENV = Path.home() / ".cache" / "kiln" / f"stream-dse-{STREAM_VERSION}"
TWO_CONV = ROOT.parent / "shared" / "data" / "stream" / "2conv_1_8_32_32_16_32_3.onnx"
QUAD = "tpu_like_quad_core.yaml"
DUAL = "meta_prototype_dual_core_simd_offchip.yaml"
BIG_QUAD = "tpu_like_quad_core.yaml@16x-memory"  # each compute core's SRAM 16 times larger
# name: (workload, Stream system, Stream per-layer?, kiln granularity)
CASES = {
    "resnet18-quad-fused": ("resnet18", QUAD, False, "auto"),
    "resnet18-quad16x-fused": ("resnet18", BIG_QUAD, False, "auto"),
    "resnet18-quad-layer": ("resnet18", QUAD, True, "layer"),
    "resnet18-dual-fused": ("resnet18", DUAL, False, "auto"),
    "2conv-quad-fused": ("2conv", QUAD, False, "auto"),
    "2conv-dual-fused": ("2conv", DUAL, False, "auto"),
}


def resnet18() -> Path:
    import zigzag

    return Path(os.path.dirname(zigzag.__file__)) / "inputs" / "workload" / "resnet18.onnx"


def workload_path(name: str) -> Path:
    return resnet18() if name == "resnet18" else TWO_CONV


def stream_python() -> Path:
    """Stream's interpreter, installing stream-dse 2.1.1 on pyenv's Python 3.12 if needed."""
    python = STREAM_ENV / "bin" / "python"
    check = [str(python), "-c", f"import stream, importlib.metadata as m; "
             f"assert m.version('stream-dse') == '{STREAM_VERSION}'"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    candidates = [shutil.which("python3.12")] + sorted(
        glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.12*" / "bin" / "python3.12")))
    base = next((c for c in candidates if c), None)
    if base is None:
        sys.exit("stream-dse 2.1.1 needs Python 3.12 (pyenv install 3.12)")
    print(f"installing stream-dse {STREAM_VERSION} into {STREAM_ENV} ...", flush=True)
    subprocess.run([base, "-m", "venv", str(STREAM_ENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"stream-dse=={STREAM_VERSION}",
                    "six"], check=True)
    return python


def stream_hardware(python: Path, name: str) -> Path:
    """Stream's example system file; ``NAME@16x-memory``: a copy whose compute cores have
    16 times the on-chip SRAM (enough to hold every ResNet-18 weight on chip), to show how
    much of the gap to the DRAM-traffic bound is the cores' capacity."""
    out = subprocess.run([str(python), "-c", "import stream, os; print(os.path.dirname("
                          "stream.__file__))"], capture_output=True, text=True, check=True)
    folder = Path(out.stdout.strip()) / "inputs" / "examples" / "hardware"
    name, _, variant = name.partition("@")
    if not variant:
        return folder / name
    copy = Path(tempfile.mkdtemp(prefix="stream-hw-")) / "hardware"
    shutil.copytree(folder, copy)
    core = copy / "cores" / "tpu_like.yaml"
    text = core.read_text()
    assert "size: 16777216" in text, "Stream's tpu_like core changed: update the benchmark"
    core.write_text(text.replace("size: 16777216", f"size: {16 * 16777216}"))
    return copy / name


def run_stream(python: Path, hardware: Path, model: Path, per_layer: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="stream-run-"))  # fresh: Stream reuses cached costs
    command = [str(python), str(ROOT / "benchmarks" / "stream_peer.py"), str(hardware),
               str(model), str(out)] + (["per-layer"] if per_layer else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_kiln_child(hardware: str, model: str, granularity: str, mapping: str | None,
                   single_route: bool = False) -> None:
    """One kiln run (in a child process): figures and CPU time after the imports."""
    import onnx  # noqa: F401  (imported before the clock, as Stream's run has its imports)

    from kiln.hw.schedule.run import schedule

    cpu, wall = time.process_time(), time.time()
    result = schedule(model, hardware, mapping=mapping, granularity=granularity,
                      allocate="fixed", precision="onnx", single_route=single_route)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    figures = result.figures
    print(json.dumps({
        "cycles": figures["latency_cycles"], "energy_pj": figures["energy_pj"],
        "peak_memory_bits": figures["peak_memory_bits"],
        "dram_bits": figures["dram_traffic_bits"], "lower_bound": figures["lower_bound"],
        "gap_to_lower_bound": figures["gap_to_lower_bound"], "cpu_s": cpu, "wall_s": wall,
        "validated": True, "evaluated_schedules": result.evaluated,
        "priced_shapes": figures["priced_shapes"], "notes": result.notes,
        "rows_per_tile": sorted(set(result.plan.rows.values())) or ["layer"],
        "fused_groups": len(result.plan.groups)}))


def run_kiln(hardware: Path, model: Path, granularity: str, mapping: Path | None = None,
             single_route: bool = False) -> dict:
    command = [sys.executable, __file__, "--kiln-child", str(hardware), str(model), granularity,
               str(mapping) if mapping is not None else "-"]
    if single_route:
        command.append("single-route")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--kiln-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kiln_child:
        hardware, model, granularity, mapping, *flags = args.kiln_child
        run_kiln_child(hardware, model, granularity, None if mapping == "-" else mapping,
                       single_route="single-route" in flags)
        return
    python = stream_python()
    results = {"stream_dse": STREAM_VERSION, "cases": {}}
    for name in args.cases:
        workload, system, per_layer, granularity = CASES[name]
        hardware, model = stream_hardware(python, system), workload_path(workload)
        print(f"{name}: stream-dse ...", flush=True)
        stream = run_stream(python, hardware, model, per_layer)
        print(f"{name}: kiln ...", flush=True)
        kiln = run_kiln(hardware, model, granularity)
        case = {"workload": workload, "system": system,
                "mode": "layer by layer" if per_layer else "fused", "stream": stream,
                "kiln": kiln}
        if "cycles" in stream and "cycles" in kiln:
            case["latency_kiln_over_stream"] = kiln["cycles"] / stream["cycles"]
            case["cpu_stream_over_kiln"] = stream["cpu_s"] / max(kiln["cpu_s"], 1e-9)
            case["stream_over_lower_bound"] = stream["cycles"] / kiln["lower_bound"]["cycles"]
        if name == "resnet18-quad-fused" and "mapping" in stream:
            print(f"{name}: kiln evaluating Stream's own mapping ...", flush=True)
            kept = RESULTS / "stream_resnet18_quad_mapping.yaml"
            shutil.copy(stream["mapping"], kept)
            case["kiln_on_stream_mapping"] = run_kiln(hardware, model, "layer", kept)
            # The same with one route per transfer, as Stream moves data.
            case["kiln_on_stream_mapping_single_route"] = run_kiln(hardware, model, "layer",
                                                                   kept, single_route=True)
        results["cases"][name] = case
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "schedule_vs_stream.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'case':22} {'Stream cyc':>12} {'kiln cyc':>12} {'kiln/Str':>8} "
          f"{'bound':>12} {'kiln gap':>8} {'Str gap':>8} {'Str CPU':>8} {'kiln CPU':>8} "
          f"{'CPU x':>6}")
    for name, case in results["cases"].items():
        stream, kiln = case["stream"], case["kiln"]
        if "cycles" not in stream or "cycles" not in kiln:
            print(f"{name:22} stream: {stream.get('error', '')} kiln: {kiln.get('error', '')}")
            continue
        bound = kiln["lower_bound"]["cycles"]
        print(f"{name:22} {stream['cycles']:12,.0f} {kiln['cycles']:12,.0f} "
              f"{case['latency_kiln_over_stream']:8.3f} {bound:12,.0f} "
              f"{kiln['gap_to_lower_bound']:8.1%} {stream['cycles'] / bound - 1:8.1%} "
              f"{stream['cpu_s']:8.1f} {kiln['cpu_s']:8.2f} {case['cpu_stream_over_kiln']:6.1f}")
    fidelity = results["cases"].get("resnet18-quad-fused", {}).get("kiln_on_stream_mapping")
    if fidelity and "cycles" in fidelity:
        single = results["cases"]["resnet18-quad-fused"].get(
            "kiln_on_stream_mapping_single_route", {})
        print(f"\nStream's own ResNet-18 mapping on the quad core, evaluated by kiln: "
              f"{fidelity['cycles']:,.0f} cycles, {single.get('cycles', math.nan):,.0f} with "
              f"one route per transfer (Stream says "
              f"{results['cases']['resnet18-quad-fused']['stream']['cycles']:,.0f})")
    print(f"wrote {RESULTS / 'schedule_vs_stream.json'}")


if __name__ == "__main__":
    main()
