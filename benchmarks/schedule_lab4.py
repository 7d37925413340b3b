"""The seed tutorial's lab-4 story, on kiln's heterogeneous quad-core example
(``examples/hardware/multicore/quad_core_heterogeneous.yaml``: 32x32, 16x64, 8x8x16 and 64x8
arrays, a SIMD core, DRAM on a 128-bit bus): four copies of ResNet-18's first layer,

  (a) fixed allocation (copy i on core i), layer by layer;
  (b) the same without the dependencies between the copies;
  (c) with allocation search (exhaustive over every core and split of each copy);
  (d) (c)'s search, layer-fused on 8-row tiles.

    python benchmarks/schedule_lab4.py

Prints latency, energy and peak memory of each, writes benchmarks/results/schedule_lab4.json
and the timelines (benchmarks/results/schedule_lab4_<case>.png).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from kiln.hw.schedule.inputs import first_layer_copies
from kiln.hw.schedule.run import schedule
from kiln.hw.schedule.system import load_system
from kiln.hw.schedule.views import plot_timeline

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SYSTEM = ROOT / "examples" / "hardware" / "multicore" / "quad_core_heterogeneous.yaml"


def fixed_mapping(folder: Path) -> Path:
    """Copy i on core i (a Stream mapping YAML)."""
    path = folder / "fixed.yaml"
    path.write_text("layers:\n" + "".join(
        f"  - name: conv1_{i}\n    core_allocation: [[{i}]]\n" for i in range(4)))
    return path


def main() -> None:
    system = load_system(SYSTEM)
    folder = Path(tempfile.mkdtemp(prefix="kiln-lab4-"))
    mapping = fixed_mapping(folder)
    cases = {
        "a_fixed_layer_by_layer": dict(workload=first_layer_copies(True), mapping=mapping,
                                       allocate="fixed", granularity="layer"),
        "b_no_dependencies": dict(workload=first_layer_copies(False), mapping=mapping,
                                  allocate="fixed", granularity="layer"),
        "c_allocation_search": dict(workload=first_layer_copies(True), allocate="exhaustive",
                                    granularity="layer"),
        "d_layer_fused_rows8": dict(workload=first_layer_copies(True), allocate="exhaustive",
                                    granularity="rows=8"),
    }
    results = {"system": str(SYSTEM.relative_to(ROOT)), "cases": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, options in cases.items():
        start = time.process_time()
        result = schedule(options.pop("workload"), system, **options)
        figures = result.figures
        results["cases"][name] = {
            "latency_cycles": figures["latency_cycles"], "energy_pj": figures["energy_pj"],
            "energy_breakdown_pj": figures["energy_breakdown_pj"],
            "dram_traffic_by_reason_bits": figures["dram_traffic_by_reason_bits"],
            "peak_memory_bits": figures["peak_memory_bits"],
            "peak_memory_bits_max": figures["peak_memory_bits_max"],
            "core_utilization": figures["core_utilization"],
            "lower_bound": figures["lower_bound"], "allocation": result.plan.describe(),
            "evaluated_schedules": result.evaluated, "cpu_s": time.process_time() - start}
        plot_timeline(result.schedule, RESULTS / f"schedule_lab4_{name}.png")
        print(f"{name:24} latency {figures['latency_cycles']:>11,.0f} cycles  energy "
              f"{figures['energy_pj'] / 1e6:8.1f} uJ  peak memory "
              f"{figures['peak_memory_bits_max'] / 8192:7.0f} KiB  cores "
              f"{ {k: list(v) for k, v in result.plan.allocation.items()} }  "
              f"({result.evaluated} schedules)")
    shutil.rmtree(folder, ignore_errors=True)
    (RESULTS / "schedule_lab4.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS / 'schedule_lab4.json'}")


if __name__ == "__main__":
    main()
