"""Run zigzag-dse (the peer) on one workload/accelerator/mapping and save per-layer results as JSON.

Run it in its own process so that its CPU time is measured alone:

    python benchmarks/zigzag_peer.py resnet18.onnx tpu_like.yaml tpu_like.yaml out.json [6 [EDP]]
"""

import json
import logging
import sys
import time

from zigzag.api import get_hardware_performance_zigzag


def main() -> None:
    workload, accelerator, mapping, out_path = sys.argv[1:5]
    lpf_limit = int(sys.argv[5]) if len(sys.argv) > 5 else 6
    objective = sys.argv[6] if len(sys.argv) > 6 else "latency"  # latency, energy or EDP
    logging.disable(logging.CRITICAL)
    start_cpu = time.process_time()
    start_wall = time.perf_counter()
    energy, latency, cmes = get_hardware_performance_zigzag(
        workload,
        accelerator,
        mapping,
        opt=objective,
        dump_folder="/tmp/kiln-zigzag-peer",
        loma_show_progress_bar=False,
        lpf_limit=lpf_limit,
    )
    cpu_s = time.process_time() - start_cpu
    wall_s = time.perf_counter() - start_wall
    layers = []
    for cme, _extra in cmes[0][1]:
        layers.append(
            {
                "name": cme.layer.name,
                "energy_pj": cme.energy_total,
                "latency_cycles": cme.latency_total2,
                "spatial_mapping": {
                    str(oa): {str(d): f for d, f in m.items()}
                    for oa, m in cme.layer.spatial_mapping.items()
                },
                "temporal_mapping": {
                    str(op): [[[str(d), s] for d, s in level] for level in levels]
                    for op, levels in cme.temporal_mapping.mapping_dic_origin.items()
                },
                "layer_operands": [str(op) for op in cme.layer.layer_operands],
            }
        )
    result = {
        "tool": "zigzag-dse 3.9.1",
        "workload": workload,
        "accelerator": accelerator,
        "mapping": mapping,
        "lpf_limit": lpf_limit,
        "objective": objective,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "energy_pj": energy,
        "latency_cycles": latency,
        "layers": layers,
    }
    with open(out_path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"zigzag: energy {energy:.6g} pJ latency {latency:.6g} cycles cpu {cpu_s:.1f} s")


if __name__ == "__main__":
    main()
