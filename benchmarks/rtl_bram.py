"""Block RAM: the int8 convnet's LUTs before and after kiln's memories moved to block RAM.

    .venv/bin/python benchmarks/rtl_bram.py [--parallelism 4x4] [--first 1x4]

Emits the convnet once, then synthesizes it for ECP5 (Yosys ``synth_ecp5``, flattened, as
place and route gets it) with the SystemVerilog units of three commits: before (ROMs read
asynchronously, input buffers in registers, one requantizer per lane: e3fd3c7), with
synchronously read ROMs (02ce7ab), and now (input buffers in one synchronously read memory,
shared requantizers). Verilator then checks the current design on 100 test images (the
weights still bit-exact). Writes benchmarks/results/rtl_bram.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

VERSIONS = {"before (e3fd3c7)": "e3fd3c7", "synchronous ROMs (02ce7ab)": "02ce7ab",
            "now": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parallelism", default="4x4")
    parser.add_argument("--first", default="1x4")
    parser.add_argument("--vectors", type=int, default=100)
    args = parser.parse_args()

    from rtl_folding import convnet_program  # this folder is on sys.path
    from rtl_resource_model import flattened_synthesis

    from kiln.rtl import emit, simulate
    from kiln.rtl.emit import COMPONENTS

    program = convnet_program()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        parallelism = {"default": tuple(int(v) for v in args.parallelism.split("x")),
                       "features_0": tuple(int(v) for v in args.first.split("x"))}
        for label, commit in VERSIONS.items():
            design = emit(program, parallelism, Path(folder) / label.split()[0])
            if commit is not None:
                for name in COMPONENTS:
                    source = subprocess.run(["git", "show", f"{commit}:kiln/rtl/sv/{name}"],
                                            capture_output=True, text=True)
                    if source.returncode == 0:
                        (design.directory / name).write_text(source.stdout)
                top = design.directory / "kiln_top.sv"
                top.write_text(re.sub(r",?\s*\.REQUANTS\(\d+\)", "", top.read_text()))
            used = flattened_synthesis(design, "ecp5", dsp=True)
            results[label] = used
            print(f"{label}: {used}", flush=True)
            if commit is None:
                sim = simulate(design, simulator="verilator", vectors=args.vectors, jobs=2)
                results["now_simulation"] = {"vectors": sim.vectors, "passed": sim.passed,
                                             "cycles_per_inference": sim.cycles_per_inference}
                print(f"now: {sim.vectors} images bit-exact={sim.passed}", flush=True)
            shutil.rmtree(design.directory, ignore_errors=True)
    out = Path("benchmarks/results/rtl_bram.json")
    out.write_text(json.dumps({"parallelism": args.parallelism, "first": args.first,
                               **results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
