"""``emit``: an :class:`IntegerProgram` as a graph of streaming SystemVerilog units.

Each weighted layer becomes a ``kiln_dense`` instance (a conv: behind a ``kiln_im2col``; a
standalone BatchNorm, a depthwise conv or an average pool: its per-channel ``DIAGONAL``
form) with its weights, biases and requantization parameters in ``$readmemh`` files laid
out one word per block; a max pool a ``kiln_maxpool``, a residual add a ``kiln_add``.
``kiln_top.sv`` connects them with valid/ready streams: a tensor read by several units is
forked (the short branches through a ``kiln_skip_fifo``), an add joins two
(:mod:`kiln.rtl.top`). The folder also gets the component sources, ``design.json`` (every
parameter), the simulation harness ``kiln_tb.sv`` and the cocotb testbench ``test_top.py``.

Supported: conv (any groups; equal strides, paddings and dilations in both directions),
max pool (floor mode, equal strides and paddings; padded ones through an im2col), average
and global average pool, residual add, flatten, dense and affine ops, in ``floor``,
``nearest`` or ``float32`` rounding (an add: not float32). :func:`check_emittable` names
everything else at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kiln.atomic import atomic_folder
from kiln.errors import KilnError
from kiln.integer.program import IntegerProgram
from kiln.report.markdown import write_text
from kiln.rtl.design import COMPONENTS, SOURCES, Design
from kiln.rtl.layers import EMITTED_OPS, WEIGHTED_OPS, Layer, walk
from kiln.rtl.roms import write_memories
from kiln.rtl.testbench import TESTBENCH, harness
from kiln.rtl.top import plan_skip_fifos, top_module

__all__ = ["COMPONENTS", "Design", "Layer", "check_emittable", "emit", "plan_layers"]

def _parse_parallelism(parallelism: Any, count: int, names: list[str]) -> list[tuple[int, int]]:
    if isinstance(parallelism, str):
        parallelism = tuple(int(p) for p in parallelism.lower().split("x"))
    if isinstance(parallelism, tuple):
        per_layer = [parallelism] * count
    elif isinstance(parallelism, dict):
        default = parallelism.get("default", (1, 1))
        per_layer = [tuple(parallelism.get(name, default)) for name in names]
    else:
        per_layer = [tuple(p) for p in parallelism]
    for name, (p_in, p_out) in zip(names, per_layer, strict=True):
        if p_in < 1 or p_out < 1:
            raise KilnError(f"layer '{name}': parallelism must be positive, got {p_in}x{p_out}")
    return per_layer


def emit_blockers(program: IntegerProgram) -> list[str]:
    """Every op and attribute of ``program`` the RTL emitter cannot build (empty: none)."""
    blockers = []
    if program.rounding not in ("floor", "nearest", "float32"):
        blockers.append(f"{program.rounding} rounding (the hardware implements floor, "
                        "nearest and float32: lower with --rounding nearest)")
    for op in program.ops:
        where = f"{op.name} ({op.kind})"
        if op.kind not in EMITTED_OPS:
            blockers.append(f"{where}: no hardware unit")
        elif op.kind == "conv":
            stride, padding, dilation = (op.attrs[k] for k in ("stride", "padding", "dilation"))
            if len({*stride}) != 1 or len({*padding}) != 1 or len({*dilation}) != 1:
                blockers.append(f"{where}: strides {stride}, paddings {padding}, dilations "
                                f"{dilation} (the im2col takes each equal in both directions)")
        elif op.kind == "maxpool":
            stride, padding = op.attrs["stride"], op.attrs["padding"]
            if op.attrs["ceil_mode"] or len({*stride}) != 1 or len({*padding}) != 1:
                blockers.append(f"{where}: stride {stride}, padding {padding}, ceil_mode "
                                f"{op.attrs['ceil_mode']} (the units take floor-mode pools "
                                "with equal strides and paddings in both directions)")
        elif op.kind == "avgpool" and len({*op.attrs["stride"]}) != 1:
            blockers.append(f"{where}: strides {op.attrs['stride']} (equal ones only)")
        elif op.kind == "add" and program.rounding == "float32":
            blockers.append(f"{where}: float32 rounding (kiln_add implements the integer "
                            "add of floor and nearest programs)")
    if program.ops and program.ops[-1].output != program.output_name:
        blockers.append(f"the program's output '{program.output_name}' is not its last op's")
    return blockers


def check_emittable(program: IntegerProgram) -> None:
    """Refuse, naming every op and attribute it cannot take, a program the RTL emitter
    cannot build."""
    blockers = emit_blockers(program)
    if blockers:
        raise KilnError(f"the RTL emitter cannot build program '{program.name}': "
                        + "; ".join(blockers),
                        hint="supported: conv (any groups), max pool, average pool, residual "
                             "add, flatten, dense, affine; floor, nearest or float32 rounding")


def emit(program: IntegerProgram, parallelism: Any, out_dir: str | Path, *,
         rom_layout: str = "banked") -> Design:
    """Write the SystemVerilog design of ``program`` into ``out_dir``.

    ``parallelism`` is ``(P_in, P_out)``, ``"4x4"``, a list per layer, or a dict of
    layer name -> (P_in, P_out) with a ``default``. Consecutive layers must agree on the
    stream width (P_out of one = P_in of the next). Parallelism that does not divide a
    dimension, or exceeds it, is handled by padding lanes with zero weights. A layer's P_in
    must equal the width of the stream it reads (the P_out of the layer that makes it); a
    depthwise conv's P_in and P_out are equal, and an add's two inputs have one width.
    ``rom_layout`` says how deep weight ROMs are laid out (:mod:`kiln.rtl.memories`):
    ``banked`` (banks one block RAM deep, the fastest clock), ``packed`` (rows that fill
    the block RAMs' 36-bit columns, as fast, fewer block RAMs, more logic) or ``whole``
    (as Yosys maps it: the fewest block RAMs, a slower clock).
    """
    check_emittable(program)
    weighted = [op for op in program.ops if op.kind in WEIGHTED_OPS]
    per_layer = _parse_parallelism(parallelism, len(weighted), [op.name for op in weighted])
    final = Path(out_dir)
    with atomic_folder(final, marker="design.json") as directory:  # whole or not at all
        design = _write_design(program, per_layer, directory, rom_layout)
    design.directory = final
    return design


def _write_design(program: IntegerProgram, per_layer: list[tuple[int, int]], directory: Path,
                  rom_layout: str) -> Design:
    (directory / "mem").mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        shutil.copyfile(SOURCES / name, directory / name)
    design = Design(directory, program.name, program.rounding)
    design.input_vectors_per_input = _input_vectors(program)
    for op, layer, weight in walk(program, per_layer, rom_layout=rom_layout):
        if weight is not None:
            # an average pool has no bias (its sums start at 0)
            bias = op.arrays.get("bias", np.zeros(layer.out_n, dtype=np.int64))
            write_memories(directory / "mem", layer, weight, bias)
        design.layers.append(layer)
    plan_skip_fifos(design.layers)
    program.save(directory / "program")  # the golden model travels with the design
    write_text(directory / "kiln_top.sv", top_module(design))
    write_text(directory / "design.json", json.dumps(design.as_dict(), indent=2) + "\n")

    write_text(directory / "kiln_tb.sv", harness(design))
    write_text(directory / "test_top.py", TESTBENCH)
    return design


def plan_layers(program: IntegerProgram, parallelism: Any, *, rom_layout: str = "banked"
                ) -> list[Layer]:
    """The layers :func:`emit` would make (shapes, parallelism, cycles), writing nothing:
    what folding searches over."""
    weighted = [op for op in program.ops if op.kind in WEIGHTED_OPS]
    per_layer = _parse_parallelism(parallelism, len(weighted), [op.name for op in weighted])
    layers = [layer for _, layer, _ in walk(program, per_layer, weights=False,
                                            rom_layout=rom_layout, check_widths=False)]
    plan_skip_fifos(layers)
    return layers


def _input_vectors(program: IntegerProgram) -> int:
    shape = tuple(program.input_shape)
    if len(shape) == 3 and not (program.ops and program.ops[0].kind == "flatten"):
        return shape[1] * shape[2]
    return 1


