"""One stream-dse 2.1.1 run, in Stream's own Python 3.12 environment (called by
``benchmarks/schedule_vs_stream.py``; not imported by kiln).

    stream-venv/bin/python benchmarks/stream_peer.py HW.yaml MODEL.onnx OUT_DIR [per-layer]

Prints one JSON line: latency (cycles), per-group cycles, CPU seconds after the imports, DRAM
traffic from Stream's own memory-access report, and the mapping Stream chose (all fused
groups merged into one mapping YAML, written to OUT_DIR/stream_mapping.yaml).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

logging.disable(logging.WARNING)


def main() -> None:
    hardware, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    per_layer = len(sys.argv) > 4 and sys.argv[4] == "per-layer"
    import yaml
    from stream.api import SolveOptions, evaluate_mapping

    options = SolveOptions(stage_options={"fusion_cut_points": "per-layer"}) if per_layer \
        else SolveOptions()
    cpu, wall = time.process_time(), time.time()
    estimate = evaluate_mapping(hardware, model, out, options=options)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    data = estimate.context.data
    dram_bits = 0
    for report in data.get("group_memory_accesses", {}).values():
        for core in report.get("cores", []):
            if core.get("is_offchip"):
                dram_bits += core["read"] * core["read_bandwidth"] + \
                    core["write"] * core["write_bandwidth"]
    merged = {"layers": [], "fused_groups": []}
    groups = sorted((d for d in os.listdir(out) if d.startswith("group_")),
                    key=lambda d: int(d.split("_")[1]))
    for index, group in enumerate(groups):
        path = os.path.join(out, group, "mapping.yaml")
        if not os.path.isfile(path):
            continue
        with open(path) as handle:
            mapping = yaml.safe_load(handle)
        merged["layers"] += mapping.get("layers", [])
        for fused in mapping.get("fused_groups", []):
            fused = dict(fused, name=f"group_{index}_{fused.get('name', '')}")
            merged["fused_groups"].append(fused)
    with open(os.path.join(out, "stream_mapping.yaml"), "w") as handle:
        yaml.safe_dump(merged, handle, sort_keys=False)
    print(json.dumps({"cycles": estimate.cycles, "group_cycles": list(estimate.group_cycles),
                      "cpu_s": cpu, "wall_s": wall, "dram_bits": dram_bits,
                      "groups": len(groups),
                      "mapping": os.path.join(out, "stream_mapping.yaml")}))


if __name__ == "__main__":
    main()
