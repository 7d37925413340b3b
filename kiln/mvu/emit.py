"""Write an :class:`MvuPlan` to disk: configurations, C header, memory images, test vectors.

Files (all text):

* ``mvu.json``: precisions, data RAM buffers, and per layer its passes and jobs (every CSR
  field), host steps, countdowns, and where kiln differs from BARVINN's generator;
* ``mvu_jobs.h``: one ``kiln_mvu_job_t`` per job and ``kiln_mvu_start(job)``, the CSR writes
  that configure and kick it (``CSR_WRITE`` can be redefined for a simulator);
* ``weights/<layer>.pass<k>.mem``: the weight RAM image of each pass, ``$readmemh``, one
  4096-bit word per line (1024 hex digits, bit 4095 first; lane o in bits 64·o … 64·o+63);
* ``weights/<layer>.pass<k>.scaler.mem`` / ``.bias.mem``: per address one line of 64 lanes
  (lane 63 first), 16-bit scales / 32-bit words holding the 27-bit biases;
* ``data/input.s<i>.mem``: the input buffer (padding filled) for test input i, ``$readmemh``
  with an ``@address`` line, 64-bit words;
* ``data/<layer>.s<i>.mem``: the expected buffer after each layer (and host step), from
  kiln's engine, in the same layout;
* ``program/``: the MVU-lowered integer program (``kiln run`` runs it: rounding ``mvu``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kiln.integer.engine import run as run_engine
from kiln.mvu.compat import IMAGE_NOTES, barvinn_rows, differences, plan_shapes
from kiln.mvu.job import MvuJob
from kiln.mvu.model import Mvu
from kiln.mvu.plan import Buffer, HostPool, MvuLayer, MvuPlan
from kiln.mvu.run import store_tensor
from kiln.report.markdown import write_text


def _hex_words(words: np.ndarray, digits: int) -> str:
    return "".join(f"{int(w):0{digits}x}\n" for w in words)


def weight_image(words: np.ndarray) -> str:
    """[n, 64] uint64 weight words as 1024-hex-digit lines (lane 63's word first)."""
    return "".join("".join(f"{int(lane):016x}" for lane in word[::-1]) + "\n"
                   for word in words)


def lane_words(values: np.ndarray, bits: int) -> list[str]:
    """[64, n] per-lane values as one hex word per address, lane 63 first, ``bits`` per
    lane (the scaler/bias RAM word: lane i in bits i·bits … i·bits + bits − 1)."""
    digits = bits // 4
    mask = (1 << bits) - 1
    return ["".join(f"{int(v) & mask:0{digits}x}" for v in values[::-1, address])
            for address in range(values.shape[1])]


def lane_image(values: np.ndarray, bits: int) -> str:
    """:func:`lane_words` as a ``$readmemh`` file."""
    return "".join(line + "\n" for line in lane_words(values, bits))


def buffer_image(unit: Mvu, buffer: Buffer, sample: int) -> str:
    words = unit.data[sample, buffer.base:buffer.base + buffer.words]
    return f"@{buffer.base:04x}\n" + _hex_words(words, 16)


def precision_csr(job: MvuJob) -> int:
    """``mvuprecision`` (mvutop_wrapper.sv): wprec [5:0], iprec [11:6], oprec [17:12],
    w_signed 24, d_signed 25."""
    return (job.wprec | job.iprec << 6 | job.oprec << 12 | int(job.wsigned) << 24
            | int(job.isigned) << 25)


def command_csr(job: MvuJob) -> int:
    """``mvucommand``: countdown [28:0], max_en 29 (0: the pooler copies), mul_mode [31:30]
    = 01 (vvp.v: a weight bit of 1 passes the data bit, i.e. plain bit products)."""
    return job.countdown | 1 << 30


def _jump(value: int) -> int:
    """A signed jump as the 15-bit two's complement the jump registers hold."""
    return int(value) & 0x7FFF


def csr_writes(job: MvuJob, mvu: int = 0) -> list[tuple[str, int]]:
    """The CSR writes that configure and start ``job`` on MVU ``mvu``, in order, as BARVINN's
    ``mvutop_wrapper.sv`` decodes them; ``mvucommand`` last (it starts the job).

    >>> names = [name for name, _ in csr_writes(job)]   # doctest: +SKIP
    >>> names[-1]                                        # doctest: +SKIP
    'mvucommand'
    """
    writes = [("mvuwbaseptr", job.wbase), ("mvuibaseptr", job.ibase),
              ("mvusbaseptr", job.sbase), ("mvubbaseptr", job.bbase),
              ("mvuobaseptr", job.obase)]
    writes += [(f"mvuwjump_{k}", _jump(v)) for k, v in enumerate(job.wjump)]
    writes += [(f"mvuijump_{k}", _jump(v)) for k, v in enumerate(job.ijump)]
    sjump = [*job.sjump, 0, 0, 0]
    writes += [(f"mvusjump_{k}", _jump(v)) for k, v in enumerate(sjump)]
    writes += [(f"mvubjump_{k}", _jump(v)) for k, v in enumerate(sjump)]
    writes += [(f"mvuwlength_{k}", v) for k, v in enumerate(job.wlength) if k]
    writes += [(f"mvuilength_{k}", v) for k, v in enumerate(job.ilength) if k]
    # Only _1: the wrapper decodes mvuslength_2..4 and mvublength_2..4 into index 1 too.
    writes += [("mvuslength_1", job.slength), ("mvublength_1", job.slength)]
    writes += [("mvuprecision", precision_csr(job)),
               ("mvuquant", job.msbidx),                       # msbidx [4:0]
               ("mvuconfig1", job.shacc_load_sel | job.zigzag_step_sel << 5),
               ("mvuomvusel", 1 << mvu),                       # write to its own data RAM
               ("mvuusescaler_mem", 1), ("mvuusebias_mem", 1),  # per-lane scale and bias
               ("mvucommand", command_csr(job))]
    return writes


def c_header(plan: MvuPlan, mvu: int = 0) -> str:
    """``mvu_jobs.h``: one ``kiln_mvu_job_t`` (a value per CSR) per job and
    ``kiln_mvu_start(job)``, which writes them in :func:`csr_writes` order."""
    names = [name for name, _ in csr_writes(plan.layers[0].jobs[0], mvu)] if plan.layers \
        else []
    lines = [
        "/* MVU jobs generated by kiln for program '" + plan.program.name + "'.",
        " * One entry per job, in execution order, one value per CSR as BARVINN's",
        " * mvutop_wrapper.sv decodes it (mvuquant: msbidx [4:0]; mvuconfig1: shift/",
        " * accumulator-load jump select [4:0], zig-zag step select [9:5]). Host steps",
        " * (weight loads, padding fills, max pooling, the ReLU) are listed in mvu.json and",
        f" * as comments below. Written for MVU {mvu}. */",
        "#ifndef KILN_MVU_JOBS_H", "#define KILN_MVU_JOBS_H", "", "#include <stdint.h>", "",
        "#ifndef CSR_WRITE",
        "#define CSR_WRITE(csr, value) __asm__ volatile(\"csrw \" #csr \", %0\" :: "
        "\"r\"((uint32_t)(value)))",
        "#endif", "",
        "typedef struct {",
        *[f"    uint32_t {name[3:]};" for name in names],
        "} kiln_mvu_job_t;", "",
        "static inline void kiln_mvu_start(const kiln_mvu_job_t *job) {",
        *[f"    CSR_WRITE({name}, job->{name[3:]});" for name in names],
        "}", "",
    ]
    total = 0
    for step in plan.steps:
        if isinstance(step, HostPool):
            lines.append(f"/* host: {step.op.kind} '{step.op.name}' from data RAM "
                         f"{step.source.base} to {step.target.base} */")
            continue
        for index, one in enumerate(step.passes):
            lines.append(f"/* layer '{step.op.name}' pass {index}: load "
                         f"weights/{step.op.name}.pass{index}.mem, fill buffer at "
                         f"{step.target.base} with {step.target.fill_value} */")
            lines.append(f"static const kiln_mvu_job_t kiln_{_c_name(step.op.name)}_pass{index}"
                         f"[{len(one.jobs)}] = {{")
            lines += ["    {" + ", ".join(f"0x{value:x}" for _, value in csr_writes(job, mvu))
                      + "}," for job in one.jobs]
            lines.append("};")
            total += len(one.jobs)
        if step.raw is not None:
            lines.append(f"/* host: after '{step.op.name}', "
                         + ("ReLU on the sign plane, " if step.relu else "")
                         + f"raw buffer at {step.raw.base} into '{step.target.name}' at "
                         f"{step.target.base} */")
    lines += ["", f"#define KILN_MVU_JOB_COUNT {total}", "", "#endif", ""]
    return "\n".join(lines)


def _c_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def describe_plan(plan: MvuPlan) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    compat = _compat_rows(plan)
    for step in plan.steps:
        if isinstance(step, HostPool):
            layers.append({"name": step.op.name, "kind": f"host {step.op.kind}",
                           "source": step.source.name, "target": step.target.name,
                           "kernel": list(step.kernel), "stride": list(step.stride)})
            continue
        entry = {"name": step.op.name, "kind": step.op.kind,
                 "in_shape": [step.source.blocks, *step.source.padded],
                 "kernel": [step.target.blocks, *step.kernel], "stride": list(step.stride),
                 "out_size": list(step.out_size), "jobs": len(step.jobs),
                 "countdown_per_job": step.jobs[0].countdown,
                 "countdown": step.countdown, "weight_words": int(sum(
                     len(one.weight_words) for one in step.passes)),
                 "precision": {"iprec": step.jobs[0].iprec, "wprec": step.jobs[0].wprec,
                               "oprec": step.jobs[0].oprec},
                 "msbidx": step.jobs[0].msbidx, "relu_on_host": step.relu,
                 "raw_buffer": step.raw.describe() if step.raw is not None else None,
                 "notes": step.notes,
                 "passes": [{"first_block": one.first_block, "blocks": one.blocks,
                             "weights": f"weights/{step.op.name}.pass{index}.mem",
                             "jobs": [job.as_dict() for job in one.jobs]}
                            for index, one in enumerate(step.passes)]}
        if step.op.name in compat:
            entry["differs_from_barvinn"] = differences(step, compat[step.op.name])
        layers.append(entry)
    return {"format": "kiln-mvu-plan", "program": plan.program.name,
            "buffers": [b.describe() for b in plan.buffers],
            "countdown": plan.countdown, "jobs": sum(len(layer.jobs) for layer in plan.layers),
            "image_notes": IMAGE_NOTES, "layers": layers}


def _compat_rows(plan: MvuPlan) -> dict[str, dict[str, Any]]:
    convs = [layer for layer in plan.layers if layer.op.kind == "conv"]
    if not convs:
        return {}
    first = convs[0].jobs[0]
    rows = barvinn_rows(plan_shapes(plan), (first.iprec, first.wprec, first.oprec))
    return {layer.op.name: row for layer, row in zip(convs, rows, strict=True)}


def write_plan(plan: MvuPlan, directory: Path, inputs: np.ndarray) -> dict[str, Any]:
    """Write every file of the module docstring into ``directory`` (which must exist)."""
    description = describe_plan(plan)
    write_text(directory / "mvu.json", json.dumps(description, indent=1) + "\n")
    write_text(directory / "mvu_jobs.h", c_header(plan))
    plan.program._write(directory / "program")
    for step in plan.layers:
        for index, one in enumerate(step.passes):
            stem = directory / "weights" / f"{step.op.name}.pass{index}"
            write_text(stem.parent / f"{stem.name}.mem", weight_image(one.weight_words))
            write_text(stem.parent / f"{stem.name}.scaler.mem", lane_image(one.scaler, 16))
            write_text(stem.parent / f"{stem.name}.bias.mem", lane_image(one.bias, 32))
    golden = run_engine(plan.program, inputs, keep=True)
    unit = Mvu(batch=len(inputs))
    store_tensor(unit, plan.input, inputs)
    for sample in range(len(inputs)):
        write_text(directory / "data" / f"input.s{sample}.mem",
                   buffer_image(unit, plan.input, sample))
    for step in plan.steps:
        store_tensor(unit, step.target, golden[step.op.output])
        for sample in range(len(inputs)):
            write_text(directory / "data" / f"{step.op.name}.s{sample}.mem",
                       buffer_image(unit, step.target, sample))
    return description


def layer_rows(plan: MvuPlan) -> list[list[Any]]:
    """Terminal rows like BARVINN's table, for kiln's configuration (first job per layer)."""
    rows = []
    for step in plan.steps:
        if isinstance(step, MvuLayer):
            job = step.jobs[0]
            rows.append([step.op.name, [step.source.blocks, *step.source.padded],
                         [step.target.blocks, *step.kernel], job.ilength, job.ijump,
                         job.wlength, job.wjump, job.countdown, len(step.jobs),
                         step.countdown])
        else:
            rows.append([step.op.name, f"host {step.op.kind}", "", "", "", "", "", "", "",
                         ""])
    return rows


LAYER_HEADER = ["layer", "iShape (padded)", "fShape", "ilength", "ijump", "wlength", "wjump",
                "countdown", "jobs", "layer countdown"]
