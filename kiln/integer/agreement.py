"""How closely an integer program follows the model it was lowered from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kiln.data import Dataset, load_dataset
from kiln.errors import ConfigError
from kiln.graph.core import Graph
from kiln.integer.engine import run
from kiln.integer.program import IntegerProgram
from kiln.training import predict


def program_dataset(program: IntegerProgram, name: str | None = None) -> Dataset:
    """The dataset a program was lowered with (or ``name``), scaled as its inputs were
    (``metadata["input_scale"]``, e.g. 255 for a model that takes 0..255 pixels)."""
    dataset_name = name or program.metadata.get("dataset")
    if dataset_name is None:
        raise ConfigError(f"program '{program.name}' names no dataset: pass --data")
    return load_dataset(dataset_name).scaled(float(program.metadata.get("input_scale", 1.0)))


@dataclass(frozen=True)
class Agreement:
    """Accuracy of the engine and its agreement with the fake-quant (and float) graph."""

    samples: int
    engine_accuracy: float
    fake_quant_accuracy: float | None
    top1_agreement: float | None
    within_one_lsb: float | None
    exact: float | None
    float_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_agreement(program: IntegerProgram, dataset: Dataset, *,
                      fake_quant: Graph | None = None, float_graph: Graph | None = None,
                      split: str = "test") -> Agreement:
    """Run the engine on a split and compare with the graphs it came from.

    ``within_one_lsb`` and ``exact`` compare output integers with the fake-quant graph's
    outputs put on the same grid.
    """
    x, y = dataset.arrays(split)
    out = run(program, program.input_quant.quantize(x))
    engine_top1 = out.argmax(axis=1)
    result: dict[str, Any] = {"samples": len(y),
                              "engine_accuracy": float((engine_top1 == y).mean()),
                              "fake_quant_accuracy": None, "top1_agreement": None,
                              "within_one_lsb": None, "exact": None}
    if fake_quant is not None:
        reference = program.output_quant.quantize(predict(fake_quant, x))
        difference = np.abs(out - reference)
        result.update(fake_quant_accuracy=float((reference.argmax(axis=1) == y).mean()),
                      top1_agreement=float((reference.argmax(axis=1) == engine_top1).mean()),
                      within_one_lsb=float((difference <= 1).mean()),
                      exact=float((difference == 0).mean()))
    if float_graph is not None:
        result["float_accuracy"] = float((predict(float_graph, x).argmax(axis=1) == y).mean())
    return Agreement(**result)
