"""Generated MLP hardware over parallelism: cycles, utilization, resources, tool times.

    .venv/bin/python benchmarks/rtl_parallelism.py [--vectors 1000]

Lowers the shipped int8 jsc-three-linear (nearest rounding), emits it at P x P for
P in 1, 2, 4, 8, 16, simulates every design on Verilator and Icarus (bit-exact checks
on every layer's outputs), and synthesizes it with Yosys for iCE40 and Xilinx 7-series.
Prints a table and writes benchmarks/results/rtl_parallelism.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def jsc_int8_program():
    """The shipped jsc-three-linear, int8, lowered with nearest rounding, test set 'letter'."""
    from kiln.data import load_dataset
    from kiln.integer import lower
    from kiln.models import resolve_model
    from kiln.quant import calibrate, quantize, uniform_config

    graph, _ = resolve_model("jsc-three-linear", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), load_dataset("letter")))
    program.metadata["dataset"] = "letter"
    return program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1000)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    args = parser.parse_args()

    from kiln.errors import KilnError
    from kiln.rtl import emit, simulate, synthesize

    program = jsc_int8_program()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in (int(s) for s in args.sizes.split(",")):
            design = emit(program, (size, size), Path(folder) / f"p{size}")
            row = {"parallelism": f"{size}x{size}"}
            for simulator in ("verilator", "icarus"):
                result = simulate(design, simulator=simulator, vectors=args.vectors)
                row[simulator] = {
                    "bit_exact_vectors": result.vectors,
                    "cycles_per_inference": result.cycles_per_inference,
                    "ideal_cycles": result.ideal_cycles,
                    "utilization": result.utilization,
                    "latency_cycles": result.latency_cycles,
                    "build_seconds": result.build_seconds,
                    "run_seconds": result.run_seconds,
                }
            for target in ("ice40", "xilinx"):
                try:
                    synth = synthesize(design, target=target)
                except KilnError as exc:  # report a tool failure in its cell, keep going
                    row[target] = {
                        "luts": "-",
                        "flip_flops": "-",
                        "dsps": "-",
                        "multipliers": "-",
                        "error": str(exc)[-160:],
                    }
                    continue
                row[target] = {
                    "luts": synth.luts,
                    "flip_flops": synth.flip_flops,
                    "dsps": synth.dsps,
                    "multipliers": synth.multipliers,
                    "seconds": synth.seconds,
                }
            rows.append(row)
            v, i = row["verilator"], row["icarus"]
            print(
                f"{row['parallelism']:>6}: {v['cycles_per_inference']:6.1f} cycles/inference "
                f"(ideal {v['ideal_cycles']}, utilization {v['utilization']:.2f}), "
                f"iCE40 {row['ice40']['luts']} LUT {row['ice40']['flip_flops']} FF "
                f"{row['ice40']['dsps']} DSP, Xilinx {row['xilinx']['luts']} LUT "
                f"{row['xilinx']['flip_flops']} FF {row['xilinx']['dsps']} DSP; build/run "
                f"verilator {v['build_seconds']:.0f}/{v['run_seconds']:.0f} s, icarus "
                f"{i['build_seconds']:.0f}/{i['run_seconds']:.0f} s",
                flush=True,
            )
    out = Path(__file__).parent / "results" / "rtl_parallelism.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"model": "jsc-three-linear", "vectors": args.vectors, "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
