"""``generate``: an integer program to MVU configurations, images and test vectors, proven
on the MVU model (what ``kiln mvu`` runs).

>>> result = generate(IntegerProgram.load("out/convnet-2b"), "out/convnet-mvu")  # doctest: +SKIP
>>> result.proof.mismatches                                                     # doctest: +SKIP
0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.atomic import atomic_folder
from kiln.errors import KilnError
from kiln.graph.metadata import OpKind
from kiln.integer.agreement import program_dataset as named_dataset
from kiln.integer.engine import run
from kiln.integer.program import IntegerProgram
from kiln.mvu.compat import ConvShape
from kiln.mvu.emit import write_plan
from kiln.mvu.lower import lower_for_mvu
from kiln.mvu.plan import MvuPlan, plan_mvu
from kiln.mvu.rtl_run import RtlProofReport, prove_on_rtl
from kiln.mvu.run import ProofReport, prove
from kiln.mvu.synthetic import random_inputs
from kiln.report.markdown import write_text


@dataclass
class MvuResult:
    plan: MvuPlan
    proof: ProofReport
    description: dict[str, Any]
    inputs_from: str
    accuracy: dict[str, float] = field(default_factory=dict)
    rtl: RtlProofReport | None = None


def program_dataset(program: IntegerProgram) -> Any | None:
    """The dataset the program was calibrated on, scaled as it was, if it is installed."""
    try:
        return named_dataset(program)
    except KilnError:
        return None


def test_inputs(program: IntegerProgram, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` quantized test-set inputs of the program's dataset, or uniform random
    integers when it has none (a synthetic program, or the data is not installed)."""
    dataset = program_dataset(program)
    if dataset is not None:
        x, _ = dataset.arrays("test")
        return program.input_quant.quantize(x[:count]), f"{dataset.name} test set"
    return random_inputs(program, count, seed), "uniform random integers"


def calibration_inputs(program: IntegerProgram, count: int = 1000) -> np.ndarray | None:
    """Quantized training-set inputs for :func:`lower_for_mvu`'s logit fit, if any."""
    dataset = program_dataset(program)
    if dataset is None:
        return None
    x, _ = dataset.arrays("train")
    return program.input_quant.quantize(x[:count])


def accuracy(program: IntegerProgram, dataset: Any) -> float:
    """Top-1 accuracy of ``program`` in kiln's engine on the dataset's test split."""
    x, y = dataset.arrays("test")
    logits = run(program, program.input_quant.quantize(x))
    return float((logits.reshape(len(x), -1).argmax(axis=1) == y).mean())


def generate(program: IntegerProgram, out: str | Path, *, prove_count: int = 100,
             samples: int = 1, seed: int = 0, rtl_count: int = 0,
             rtl_progress: Any = None) -> MvuResult:
    """Lower ``program`` for the MVU, plan it, prove the plan on ``prove_count`` test inputs
    on the MVU model (and on the first ``rtl_count`` of them on BARVINN's own RTL, see
    :mod:`kiln.mvu.rtl_run`), and write the files (:mod:`kiln.mvu.emit`) with ``samples``
    test vectors into ``out``, whole or not at all."""
    mvu_program = (program if program.rounding == "mvu" else
                   lower_for_mvu(program, calibration=calibration_inputs(program)))
    plan = plan_mvu(mvu_program)
    inputs, source = test_inputs(mvu_program, max(prove_count, samples, rtl_count), seed)
    report = prove(plan, inputs[:prove_count]) if prove_count else ProofReport(0)
    rtl = (prove_on_rtl(plan, inputs[:rtl_count], progress=rtl_progress) if rtl_count
           else None)
    with atomic_folder(Path(out), marker="mvu.json") as partial:
        description = write_plan(plan, partial, inputs[:samples])
        if rtl is not None:
            import json

            write_text(partial / "rtl_proof.json", json.dumps(rtl.as_dict(), indent=1) + "\n")
    return MvuResult(plan, report, description, source, rtl=rtl)


def graph_conv_shapes(graph: Any) -> list[ConvShape]:
    """The convolutions of a float graph in execution order, as BARVINN's generator reads
    them (no program needed: the compatibility table depends on shapes only)."""
    shapes = []
    for info in graph.nodes():
        if info.op != OpKind.CONV or info.loops is None:
            continue
        loops = info.loops
        height, width = info.input_shapes[0][-2:]
        shapes.append(ConvShape(loops.C, height, width, loops.K, loops.FY, loops.FX,
                                loops.stride[1], loops.padding[1]))
    return shapes
