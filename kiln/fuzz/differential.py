"""Differential checks of one network through kiln's stages.

Each stage is compared with an independent reference on the same inputs:

* ``lower``: the quantized graph lowers to an :class:`IntegerProgram` (a refusal of a
  network the generator only draws from supported shapes is a failure);
* ``engine``: the engine's output integers against the fake-quant graph's outputs put on
  the same grid (at most 1 LSB apart on every element, and equal on most);
* ``onnx``: both export forms in ONNX Runtime: no float Conv/Gemm/MatMul left in its
  optimized graph, and every output integer equal to the engine (float32 rounding, the
  mode ONNX Runtime computes in; the program is lowered again in it when needed);
* ``rtl``: the emitted SystemVerilog at a random parallelism, simulated, every beat of
  every layer compared with the engine by the testbench;
* ``schedule``: the float network exported by PyTorch, scheduled on an example multi-core
  system (:mod:`kiln.fuzz.schedule_check`): kiln's validator, every output computed once,
  MACs equal to the module's, latency not below the lower bound.
"""

from __future__ import annotations

import random
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.fuzz.networks import NetworkSpec, build_module, random_inputs
from kiln.fuzz.reference import reference_run
from kiln.fuzz.schedule_check import check_schedule
from kiln.graph import from_onnx, from_torch
from kiln.integer import export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx
from kiln.integer.program import TensorQuant
from kiln.quant import calibrate, quantize
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.layers import QuantConv2d, QuantLinear
from kiln.quant.onnx_quantizers import ONNX_QUANTIZERS
from kiln.rtl import emit
from kiln.rtl.simulate import simulate
from kiln.training import predict

STAGES = ("lower", "engine", "onnx", "rtl", "schedule")
#: (max LSB, exact fraction) of the engine against the fake-quant graph with integer
#: biases and the program's rounding: the two differ only where a float product lands
#: within float32 rounding of a rounding tie, and such a 1-LSB difference can propagate.
#: Networks in ``floor`` mode are not held to it: there a product that is an exact integer
#: in real arithmetic (a global average of 25 equal values) lands just below it with the
#: fixed-point multiplier and floors to one less, which is floor mode's defined arithmetic
#: (the reference interpreter checks it exactly); the lowering itself is the same code in
#: every mode, and the nearest and float32 networks hold it to this tolerance.
#: Below 4-bit activations most values lie near a rounding tie (a real tie that the
#: engine's fixed-point multiplier and the float graph each break their own way), so the
#: exact fraction is held lower there; the 1-LSB bound holds at every width.
FAKE_QUANT_TOLERANCE = (1, 0.95)
FAKE_QUANT_EXACT_BELOW_4_BITS = 0.8


@dataclass
class StageFailure:
    stage: str
    message: str

    @property
    def signature(self) -> str:
        """What identifies the bug (stage and error type), for shrinking."""
        import re

        head = re.sub(r"'[^']*'", "'…'", self.message)  # names differ between networks
        head = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", head)
        return f"{self.stage}: {head[:70]}"


@dataclass
class CaseResult:
    spec: NetworkSpec
    passed: dict[str, bool] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failure: StageFailure | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


def rtl_supported(spec: NetworkSpec) -> str | None:
    """Why the RTL emitter would refuse ``spec`` (None when it takes it)."""
    for layer in spec.layers:
        op = layer["op"]
        if op == "residual" and spec.rounding == "float32":
            return "a residual add in float32 rounding"
        if op == "conv" and len(set(layer["padding"])) != 1:
            return "unequal conv padding"
        if op in ("maxpool", "avgpool") and layer["ceil"]:
            return f"ceil-mode {op}"
        if op == "avgpool" and layer["padding"]:
            return "padded avgpool"
    return None


def build_graph(spec: NetworkSpec, workdir: Path):
    """The spec as a kiln Graph, through torch.fx or through an ONNX file."""
    module = build_module(spec)
    example = torch.zeros(1, *spec.input_shape)
    if not spec.via_onnx:
        return from_torch(module, example, name=f"fuzz{spec.seed}")
    path = workdir / f"fuzz{spec.seed}.onnx"
    with warnings.catch_warnings():  # the legacy exporter's notes on every network
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    return from_onnx(path, name=f"fuzz{spec.seed}", quantizers=ONNX_QUANTIZERS)


def quant_config(spec: NetworkSpec) -> dict[str, Any]:
    activation = {"bits": spec.activation["bits"], "signed": spec.activation["signed"],
                  "symmetric": spec.activation["symmetric"]}
    weight = {"bits": spec.weight["bits"], "granularity": spec.weight["granularity"],
              "symmetric": spec.weight["symmetric"]}
    return {"default": {"weight": weight, "input": activation},
            "rules": [{"match": {"name": ["@last"]},
                       "output": {**activation, "signed": True}}]}


def check_network(spec: NetworkSpec, stages: tuple[str, ...] = STAGES, *,
                  inputs: int = 64, vectors: int = 3, simulator: str = "verilator",
                  workdir: Path | None = None) -> CaseResult:
    """Run ``spec`` through ``stages``; the first failing comparison is the result's
    ``failure`` (later stages are not run)."""
    result = CaseResult(spec)
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as scratch:
        folder = Path(workdir or scratch)
        try:
            _run_stages(spec, stages, result, folder, inputs, vectors, simulator)
        except _StageFailedError:
            pass
        except Exception as exc:  # an unexpected crash anywhere is a bug too
            stage = result.details.get("stage", "setup")
            result.failure = StageFailure(stage, f"{type(exc).__name__}: {exc} "
                                                 f"[{_where(exc)}]")
    return result


class _StageFailedError(Exception):
    pass


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    kiln_frames = [f for f in frames if "/kiln/" in f.filename] or frames
    last = kiln_frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


def _fail(result: CaseResult, stage: str, message: str) -> None:
    result.failure = StageFailure(stage, message)
    raise _StageFailedError


def _run_stages(spec: NetworkSpec, stages: tuple[str, ...], result: CaseResult, folder: Path,
                inputs: int, vectors: int, simulator: str) -> None:
    result.details["stage"] = "lower"
    graph = build_graph(spec, folder)
    with warnings.catch_warnings():  # e.g. an '@last' rule on a network without layers
        warnings.simplefilter("ignore")
        quantized = calibrate(quantize(graph, quant_config(spec)),
                              random_inputs(spec, 256, seed=spec.seed + 1))
    try:
        program = lower(quantized, rounding=spec.rounding)
    except KilnError as exc:
        _fail(result, "lower", str(exc))
    result.passed["lower"] = True
    x = random_inputs(spec, inputs, seed=spec.seed + 2).numpy()
    x_int = program.input_quant.quantize(x)
    if "engine" in stages:
        result.details["stage"] = "engine"
        _check_engine(program, quantized, x, x_int, result)
        result.passed["engine"] = True
    if "onnx" in stages:
        result.details["stage"] = "onnx"
        _check_onnx(spec, quantized, program, x, folder, result)
        result.passed["onnx"] = True
    if "rtl" in stages:
        reason = rtl_supported(spec)
        if reason is not None:
            result.skipped["rtl"] = f"the emitter refuses {reason}"
        else:
            result.details["stage"] = "rtl"
            _check_rtl(spec, program, x_int[:vectors], folder, simulator, result)
            result.passed["rtl"] = True
    if "schedule" in stages:
        result.details["stage"] = "schedule"
        try:
            failure, skipped, details = check_schedule(spec, folder)
        except KilnError as exc:  # the generator draws only what the scheduler claims
            _fail(result, "schedule", str(exc))
        result.details["schedule"] = details
        if skipped is not None:
            result.skipped["schedule"] = skipped
            return
        if failure is not None:
            _fail(result, "schedule", failure)
        result.passed["schedule"] = True


def _check_engine(program, quantized, x: np.ndarray, x_int: np.ndarray,
                  result: CaseResult) -> None:
    """The engine against the reference interpreter (every tensor, exactly) and against
    the fake-quant graph (the output, within rounding noise)."""
    expected = reference_run(program, x_int)
    ours = run(program, x_int)  # the fast paths (pooling accumulators first, ...)
    if not np.array_equal(ours, expected[program.output_name]):
        _fail(result, "engine", "engine output differs from the reference interpreter: "
                                f"{_first_difference(ours, expected[program.output_name])}")
    for name, tensor in run(program, x_int, keep=True).items():
        if not np.array_equal(tensor, expected[name]):
            _fail(result, "engine", f"tensor '{name}' differs from the reference interpreter: "
                                    f"{_first_difference(tensor, expected[name])}")
    reference = program.output_quant.quantize(predict(
        integer_reference_graph(quantized, program.rounding), x))
    difference = np.abs(ours - reference)
    exact = float((difference == 0).mean())
    result.details.update(fake_quant_exact=exact, fake_quant_max_lsb=int(difference.max()))
    max_lsb, exact_fraction = FAKE_QUANT_TOLERANCE
    widths = [TensorQuant(**op.attrs["out_quant"]).bits for op in program.ops
              if "out_quant" in op.attrs] + [program.input_quant.bits]
    if min(widths) < 4:
        exact_fraction = FAKE_QUANT_EXACT_BELOW_4_BITS
    if program.rounding != "floor" and (difference.max() > max_lsb or exact < exact_fraction):
        _fail(result, "engine", f"engine vs fake-quant: max {int(difference.max())} LSB, "
                                f"{exact:.1%} exact (element {int(difference.argmax())})")


def integer_reference_graph(quantized, rounding: str = "nearest"):
    """A copy of the fake-quant graph that computes what integer inference computes:
    biases rounded to the accumulator grid (s_in · s_w per output channel), as the integer
    program stores them (with 2-bit weights one accumulator unit can be most of an output
    step), and every requantizing quantizer rounding as the program does (down in
    ``floor`` mode, half up in ``nearest`` mode; the network input is quantized as in the
    program, half to even)."""
    graph = quantized.copy()
    module = graph.module
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        layer = module.get_submodule(node.target)
        if rounding != "float32" and isinstance(layer, FakeQuantize) and \
                layer.role == "activation" and node.args[0].op != "placeholder":
            layer.forward = _rounding_quantizer(layer, rounding)
        if not isinstance(layer, (QuantConv2d, QuantLinear)) or layer.bias is None:
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and
                isinstance(module.get_submodule(source.target), FakeQuantize)):
            continue
        input_scale = float(module.get_submodule(source.target).scale.reshape(-1)[0])
        with torch.no_grad():
            layer.weight_quantizer(layer.weight)  # refresh the weight's scale
            weight_scale = layer.weight_quantizer.scale.double().reshape(-1)
            step = input_scale * weight_scale.expand(layer.bias.shape[0])
            layer.bias.copy_((torch.round(layer.bias.double() / step) * step).float())
    return graph


def _rounding_quantizer(quantizer, rounding: str):
    """The quantizer with the program's rounding: floor, or round half up (nearest)."""
    offset = 0.5 if rounding == "nearest" else 0.0

    def forward(x: torch.Tensor) -> torch.Tensor:
        spec = quantizer.spec
        q = torch.clamp(torch.floor(x / quantizer.scale + offset) + quantizer.zero_point,
                        spec.qmin, spec.qmax)
        return (q - quantizer.zero_point) * quantizer.scale

    return forward


def _first_difference(ours: np.ndarray, expected: np.ndarray) -> str:
    if ours.shape != expected.shape:
        return f"shape {ours.shape} vs {expected.shape}"
    index = np.unravel_index(int(np.argmax(ours != expected)), ours.shape)
    count = int((ours != expected).sum())
    return f"{count} elements, first at {tuple(map(int, index))}: {int(ours[index])} vs " \
           f"{int(expected[index])}"


def _check_onnx(spec: NetworkSpec, quantized, program, x: np.ndarray, folder: Path,
                result: CaseResult) -> None:
    if program.rounding != "float32":
        program = lower(quantized, rounding="float32")
    for export_format in ("qoperator", "qdq"):
        path = export_onnx(program, folder / f"{export_format}.onnx",
                           export_format=export_format)
        checked = check_onnx(program, path, x)
        if checked.float_nodes:
            _fail(result, "onnx", f"{export_format}: {checked.verdict()}")
        if checked.mismatches:
            _fail(result, "onnx", f"{export_format}: {checked.mismatches} of "
                                  f"{checked.elements} integers differ from the engine (max "
                                  f"{checked.max_difference})")


def random_parallelism(spec: NetworkSpec, program) -> list[tuple[int, int]]:
    """A random (P_in, P_out) per weighted layer: P_in is the width of the stream the layer
    reads. A chain of matrix units draws every P_out; where widths are tied (an add's two
    inputs, a depthwise conv's input and output) one width serves every stream after the
    input."""
    rng = random.Random(spec.seed * 7919 + 1)
    choices = [1, 1, 2, 3, 4, 8]
    tied = any(op.kind in ("add", "avgpool") or op.attrs.get("groups", 1) > 1
               for op in program.ops)
    width = rng.choice(choices)
    lanes = {program.input_name: width if tied else rng.choice(choices)}
    per_layer = []
    for op in program.ops:
        source = lanes[op.inputs[0]]
        if op.kind in ("conv", "dense", "affine"):
            depthwise = op.kind == "conv" and op.attrs["groups"] == \
                op.arrays["weight"].shape[0] > 1 and op.arrays["weight"].shape[1] == 1
            out = source if depthwise else (width if tied else rng.choice(choices))
            per_layer.append((source, out))
            lanes[op.output] = out
        else:
            lanes[op.output] = source
    return per_layer


def _check_rtl(spec: NetworkSpec, program, x_int: np.ndarray, folder: Path, simulator: str,
               result: CaseResult) -> None:
    parallelism = random_parallelism(spec, program)
    result.details["parallelism"] = parallelism
    try:
        design = emit(program, parallelism, folder / "rtl")
    except KilnError as exc:
        _fail(result, "rtl", f"emit: {exc}")
    try:
        simulated = simulate(design, simulator=simulator, inputs=x_int)
    except KilnError as exc:
        _fail(result, "rtl", f"{simulator}: {exc}")
    result.details["cycles_per_inference"] = simulated.cycles_per_inference
