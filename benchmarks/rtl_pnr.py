"""Generated hardware placed and routed on real FPGAs: resources, Fmax, inferences/s.

    .venv/bin/python benchmarks/rtl_pnr.py [--runs jsc:1:ecp5-25k,jsc:4:ecp5-85k] [--clock 50]

Lowers the shipped int8 jsc-three-linear (nearest rounding), emits it at P x P, simulates
each design on Verilator (100 test vectors, bit-exact on every layer; the measured cycles
per inference are what inferences/s use), then synthesizes it for the device with Yosys and
places and routes it with nextpnr (`kiln.rtl.fpga.place_and_route`). A design that does not
fit is recorded with the resource it lacks. Prints a table and writes
benchmarks/results/rtl_pnr.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEFAULT_RUNS = ("jsc:1:ice40-up5k,jsc:1:ecp5-25k,jsc:2:ecp5-25k,jsc:2:ecp5-85k,"
                "jsc:4:ecp5-85k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help="model:P:device, comma-separated (model: jsc)")
    parser.add_argument("--clock", type=float, default=50.0, help="clock constraint, MHz")
    parser.add_argument("--out", default="benchmarks/results/rtl_pnr.json")
    args = parser.parse_args()

    from rtl_parallelism import jsc_int8_program  # this folder is on sys.path

    from kiln.errors import KilnError
    from kiln.rtl import emit, simulate
    from kiln.rtl.fpga import place_and_route

    program = jsc_int8_program()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for run in args.runs.split(","):
            model, size, device = run.split(":")
            p = int(size)
            directory = Path(folder) / f"{model}-{p}-{device}"
            design = emit(program, (p, p), directory)
            simulated = simulate(design, simulator="verilator", vectors=100)
            row = {"model": model, "parallelism": f"{p}x{p}", "device": device,
                   "bit_exact_vectors": simulated.vectors,
                   "cycles_per_inference": simulated.cycles_per_inference}
            started = time.perf_counter()
            try:
                result = place_and_route(design, device, clock_mhz=args.clock)
                row.update(fits=True, **{k: v for k, v in result.as_dict().items()
                                         if k not in ("report_path", "device")})
            except KilnError as error:
                row.update(fits=False, error=error.message)
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'design':<10} {'device':<11} {'LUT':>7} {'FF':>6} {'DSP':>4} {'BRAM':>4} "
          f"{'Fmax':>7} {'inf/s':>11} {'P&R s':>6}")
    for row in rows:
        if not row["fits"]:
            print(f"{row['model']} {row['parallelism']:<6} {row['device']:<11} "
                  f"does not fit: {row['error']}")
            continue
        used = row["used"]
        print(f"{row['model']} {row['parallelism']:<6} {row['device']:<11} {used['lut']:>7,} "
              f"{used['ff']:>6,} {used['dsp']:>4} {used['bram']:>4} {row['fmax_mhz']:>7.2f} "
              f"{row['inferences_per_second']:>11,.0f} {row['pnr_seconds']:>6.0f}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
