"""The stages of ``kiln flow``, one small function each.

A stage reads what the stages before it made (through :class:`FlowContext`, which loads
a cached artifact from disk when that stage did not run now), writes its own artifact into
the folder it is given, and returns its figures (JSON). A stage that cannot take the model
raises :class:`~kiln.errors.KilnError`: the flow records the reason and goes on with the
stages that do not need it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.flow.config import FlowConfig
from kiln.graph.metadata import COMPUTE_KINDS
from kiln.hw import load_accelerator
from kiln.hw.compare import plot_comparison
from kiln.hw.workload_mapper import map_workload
from kiln.hw.workload_sources import graph_widths, workload_from_program
from kiln.integer import IntegerProgram, export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx
from kiln.models import fit, resolve_model
from kiln.models.arguments import load_model_argument, model_dataset
from kiln.models.artifacts import quantize_step, save_model
from kiln.passes import count, model_size
from kiln.quant import QuantConfig, calibrate, qat, quantize, uniform_config
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.ptq import refine_weights
from kiln.rtl import emit, synthesize
from kiln.rtl.emit import Design
from kiln.rtl.simulate import simulate
from kiln.search import load_config, run_search
from kiln.training import predict


@dataclass
class FlowContext:
    """The model, the config, the output folder, and the artifacts made so far."""

    model: str
    config: FlowConfig
    out: Path
    cache: dict[str, Any] = field(default_factory=dict)

    # --- shared inputs -------------------------------------------------------------
    def base_model(self):
        """The MODEL argument as given (before the train stage, when that runs)."""
        if "base" not in self.cache:
            options = self.config.model
            self.cache["base"] = load_model_argument(
                self.model, data=self.config.data.dataset, input_shape=options.input_shape,
                weights=options.weights, pretrained=options.pretrained)
        return self.cache["base"]

    def float_model(self):
        """The float model the flow carries: the train stage's when it runs, else MODEL."""
        if "float" not in self.cache:
            if "train" in self.config.stages:
                self.cache["float"] = resolve_model(str(self.out / "train" / "model.pt"))
            else:
                self.cache["float"] = self.base_model()
        return self.cache["float"]

    def dataset(self):
        if "dataset" not in self.cache:
            _, info = self.base_model()
            self.cache["dataset"] = model_dataset(info, self.config.data.dataset,
                                                  self.config.data.input_scale)
        return self.cache["dataset"]

    def test_inputs(self):
        dataset, _ = self.dataset()
        limit = self.config.data.test_samples
        return dataset.x_test[:limit], dataset.y_test[:limit]

    def check_inputs(self) -> None:
        """Refuse, before anything is written, a model that cannot be loaded or does not fit
        its dataset: its input shape against the dataset's, its outputs against the
        dataset's classes (a mismatch would otherwise "evaluate" at chance)."""
        import math

        graph, info = self.base_model()
        dataset, _ = self.dataset()
        takes = tuple(int(d) for d in graph.input_shape[1:])
        if takes != tuple(dataset.input_shape):
            raise KilnError(
                f"model '{info.name}' takes inputs of {_shape(takes)}, dataset "
                f"'{dataset.name}' has {_shape(dataset.input_shape)}",
                hint="give the dataset its inputs come from (--data), or your module's "
                     "input shape (--input-shape)")
        outputs = _output_shape(graph)
        if outputs is not None and math.prod(outputs) != dataset.num_classes:
            raise KilnError(
                f"model '{info.name}' has {math.prod(outputs)} outputs"
                + (f" ({_shape(outputs)} per input)" if len(outputs) > 1 else "")
                + f", dataset '{dataset.name}' has {dataset.num_classes} classes",
                hint="a classifier over the dataset's classes is what the flow evaluates; "
                     "give the dataset it was trained on (--data)")

    # --- artifacts of earlier stages (from disk when they were cached) ----------------
    def quantized(self):
        if "quantized" not in self.cache:
            self.cache["quantized"] = resolve_model(str(self.out / "compress" / "model.pt"))[0]
        return self.cache["quantized"]

    def program(self):
        if "program" not in self.cache:
            self.cache["program"] = IntegerProgram.load(self.out / "integer" / "program")
        return self.cache["program"]

    def hardware_program(self, rounding: str) -> IntegerProgram:
        """The program at the hardware's requantization rounding: the integer stage's own
        when it rounds so, else the compressed model lowered again (the RTL's adds take
        fixed-point requantization only, and float32 is a float multiplier in LUTs)."""
        program = self.program()
        if program.rounding == rounding:
            return program
        key = f"program-{rounding}"
        if key not in self.cache:
            self.cache[key] = lower(self.quantized(), rounding=rounding)
        return self.cache[key]


def _shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape) or "a scalar"


def _output_shape(graph) -> tuple[int, ...] | None:
    """The shape of one input's output (without the batch), where shapes are known."""
    output = graph.fx_nodes()[-1]
    shapes = output.meta["kiln"].input_shapes
    if not shapes or shapes[0] is None:
        return None
    return tuple(int(d) for d in shapes[0][1:])


def _accuracy(graph, x, y) -> float:
    return float((predict(graph, x).argmax(axis=1) == y).mean())


def stage_train(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """Train the model from its given weights (fresh ones for a zoo name without
    pretrained): the float stage and everything after carry the trained model."""
    graph, info = ctx.base_model()
    graph = graph.copy()
    dataset, scale = ctx.dataset()
    options = ctx.config.train
    result = fit(graph, dataset, epochs=options.epochs, lr=options.lr,
                 batch_size=options.batch_size, seed=options.seed)
    save_model(graph, folder / "model.pt", info.recipe or {"base": {}, "steps": []},
               dataset=dataset.name, input_scale=scale,
               metrics={"test_accuracy": result.final_accuracy})

    ctx.cache["float"] = resolve_model(str(folder / "model.pt"))
    return {"epochs": options.epochs, "lr": options.lr, "batch_size": options.batch_size,
            "seed": options.seed, "train_loss": result.train_loss,
            "test_accuracy": result.test_accuracy, "seconds": result.seconds}


def stage_float(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The float model on the test split: accuracy, size, MACs."""
    graph, info = ctx.float_model()
    dataset, scale = ctx.dataset()
    x, y = ctx.test_inputs()
    totals = count(graph)
    accuracy = _accuracy(graph, x, y)
    chance = 1.0 / dataset.num_classes
    return {"model": info.name, "dataset": dataset.name, "input_scale": scale,
            "test_samples": len(y), "accuracy": accuracy, "chance": chance,
            # at most 1.5x chance: random weights, or a model trained for other data
            "untrained": bool(accuracy <= 1.5 * chance),
            "params": totals.params, "macs": totals.macs,
            "bytes": model_size(graph).total_bytes, "layers": totals.compute_layers}


def _widths(graph) -> list[dict[str, Any]]:
    rows = []
    for node in graph.fx_nodes():
        info = node.meta["kiln"]
        if info.op in COMPUTE_KINDS:
            weight_bits, activation_bits = graph_widths(graph, node)
            rows.append({"layer": info.name, "weight_bits": weight_bits,
                         "activation_bits": activation_bits})
    return rows


def _uniform_config(options: Any) -> Any:
    """``[compression]``'s widths and range methods as a quantization config."""
    return uniform_config(
        options.weight_bits, options.activation_bits,
        weight={"range": options.weight_range} if options.weight_range else None,
        activation={"range": options.activation_range} if options.activation_range else None)


def stage_compress(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """PTQ, QAT, the best of a search, or nothing (a quantized model): a model file."""
    options = ctx.config.compression
    graph, info = ctx.float_model()
    dataset, scale = ctx.dataset()
    quantized_already = any(isinstance(m, FakeQuantize) for m in graph.module.modules())
    recipe = dict(info.recipe or {"base": {}, "steps": []})
    if options.method == "none" or (quantized_already and options.method == "ptq" and
                                    options.config is None):
        if not quantized_already:
            raise KilnError("compression method 'none' needs a quantized model (a model file "
                            "from quantize or qat, or a pre-quantized ONNX file)")
        quantized = graph
    elif options.method == "search":
        if options.search is None:
            raise KilnError("compression method 'search' needs [compression].search, a "
                            "search config file")
        search_config = load_config(options.search)
        search_config.study.out = str(folder / "search")
        search_config.study.storage = f"sqlite:///{folder / 'search' / 'study.db'}"
        result = run_search(search_config)
        if not result.best:
            raise KilnError("the search found no configuration that meets its constraints")
        quantized, _ = resolve_model(str(folder / "search" / "best_model.pt"))
        recipe = _load_recipe(folder / "search" / "best_model.pt")
        if not any(isinstance(m, FakeQuantize) for m in quantized.module.modules()):
            # a channel search's winner is a float network: quantize it as PTQ would
            config = _uniform_config(options)
            quantized = calibrate(quantize(quantized, config), dataset,
                                  batches=ctx.config.data.calibration_batches)
            recipe = {**recipe, "steps": [*recipe.get("steps", []), quantize_step(config)]}
    else:
        config = (QuantConfig.load(options.config) if options.config else
                  _uniform_config(options))
        quantized = calibrate(quantize(graph, config), dataset,
                              batches=ctx.config.data.calibration_batches)
        if options.method in ("ptq", "qat"):  # QAT starts from corrected biases too
            quantized, _ = refine_weights(quantized, dataset,
                                          batches=ctx.config.data.calibration_batches)
        if options.method == "qat":
            quantized, _ = qat(quantized, dataset, method=options.qat_method,
                               epochs=options.qat_epochs)
        recipe = {**recipe, "steps": [*recipe.get("steps", []), quantize_step(config)]}
    x, y = ctx.test_inputs()
    accuracy = _accuracy(quantized, x, y)
    save_model(quantized, folder / "model.pt", recipe, dataset=dataset.name, input_scale=scale,
               metrics={"accuracy": accuracy})
    ctx.cache["quantized"] = quantized
    return {"method": options.method, "accuracy": accuracy,
            "bytes": model_size(quantized).total_bytes, "widths": _widths(quantized)}


def _load_recipe(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["recipe"]


def stage_integer(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """Lowering to an integer-only program, and its agreement with the fake-quant model."""
    quantized = ctx.quantized()
    dataset, scale = ctx.dataset()
    program = lower(quantized, rounding=ctx.config.integer.rounding)
    program.metadata = {"model": "source/model.pt", "dataset": dataset.name,
                        "input_scale": scale}
    program.save(folder / "program",
                 extra_files={"source/model.pt": ctx.out / "compress" / "model.pt"})
    ctx.cache["program"] = program
    x, y = ctx.test_inputs()

    ours = run(program, program.input_quant.quantize(x))
    reference = program.output_quant.quantize(predict(quantized, x))
    difference = abs(ours - reference)
    return {"rounding": program.rounding, "ops": [op.kind for op in program.ops],
            "accuracy": float((ours.argmax(axis=1) == y).mean()),
            "top1_agreement": float((ours.argmax(axis=1) == reference.argmax(axis=1)).mean()),
            "within_one_lsb": float((difference <= 1).mean()),
            "exact": float((difference == 0).mean()),
            "layers": [{"layer": op.name, "kind": op.kind, "acc_bits": op.attrs.get("acc_bits"),
                        "weight_bits": op.array_bits.get("weight")} for op in program.layers()]}


def stage_onnx(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """Both ONNX forms, ONNX Runtime's optimized graph and every output integer checked."""
    program = ctx.program()
    x, _ = ctx.test_inputs()
    figures: dict[str, Any] = {}
    for export_format in ctx.config.onnx.formats:
        path = export_onnx(program, folder / f"model-{export_format}.onnx",
                           export_format=export_format)
        checked = check_onnx(program, path, x)
        figures[export_format] = {"node_types": checked.node_types,
                                  "float_nodes": [list(n) for n in checked.float_nodes],
                                  "elements": checked.elements,
                                  "mismatches": checked.mismatches,
                                  "bit_exact": checked.bit_exact}
    figures["bit_exact"] = all(f["bit_exact"] for f in figures.values())
    return figures


def stage_cost(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The program on the accelerator: the best mapping of every layer, at its widths."""
    import json

    options = ctx.config.accelerator
    hardware = load_accelerator(options.path)
    workload = workload_from_program(ctx.program())
    result = map_workload(workload, hardware, options.objective, refine=options.refine)
    plot_comparison([result], folder)
    layers = [{"layer": r.layer, "latency_cycles": r.cost.latency_cycles,
               "energy_pj": r.cost.energy_pj, "utilization": r.cost.utilization}
              for r in result.layers]
    ideal = sum(r.cost.ideal_cycles for r in result.layers)
    figures = {"accelerator": hardware.name, "objective": options.objective,
               "latency_cycles": result.latency_cycles, "energy_pj": result.energy_pj,
               "utilization": ideal / result.latency_cycles if result.latency_cycles else 0,
               "layers": layers, "not_costed": [list(n) for n in workload.not_costed]}
    (folder / "mapping.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def _parallelism(ctx: FlowContext) -> Any:
    options = ctx.config.rtl
    default = tuple(int(p) for p in options.parallelism.lower().split("x"))
    if not options.layers:
        return default
    return {"default": default, **{k: tuple(v) for k, v in options.layers.items()}}


def stage_rtl(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """SystemVerilog for the program at the configured parallelism and rounding."""
    program = ctx.hardware_program(ctx.config.rtl.rounding)
    design = emit(program, _parallelism(ctx), folder / "design")
    return {"parallelism": ctx.config.rtl.parallelism, "rounding": program.rounding,
            "layers": [{"layer": layer.name, "kind": layer.unit_name, "in": layer.in_n,
                        "out": layer.out_n, "p_in": layer.p_in, "p_out": layer.p_out,
                        "cycles": layer.compute_cycles} for layer in design.layers],
            "ideal_cycles": max(layer.compute_cycles for layer in design.layers)}


def stage_simulate(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The design simulated on test inputs: every beat of every layer against the engine.
    The simulator builds in this stage's own copy of the design: built in the rtl stage's
    folder, a build killed half-way was left there, and the next run's build failed on it."""
    options = ctx.config.simulate
    copy = folder / "design"
    shutil.copytree(ctx.out / "rtl" / "design", copy, ignore=shutil.ignore_patterns("sim_*"))
    design = Design.load(copy)
    program = ctx.program()
    x, _ = ctx.test_inputs()
    result = simulate(design, simulator=options.simulator,
                      inputs=program.input_quant.quantize(x[:options.vectors]),
                      jobs=options.jobs)
    return {"simulator": options.simulator, "vectors": result.vectors,
            "bit_exact": result.passed, "cycles_per_inference": result.cycles_per_inference,
            "latency_cycles": result.latency_cycles, "utilization": result.utilization,
            "layer_intervals": result.layer_intervals, "build_seconds": result.build_seconds,
            "run_seconds": result.run_seconds}


def stage_synth(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """Yosys resource figures (on a copy of the design: the rtl stage's folder is its own)."""
    source = ctx.out / "rtl" / "design"
    copy = folder / "design"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("sim_*"))
    result = synthesize(Design.load(copy), target=ctx.config.synth.target)
    return result.as_dict()


STAGE_FUNCTIONS: dict[str, Callable[[FlowContext, Path], dict[str, Any]]] = {
    "train": stage_train, "float": stage_float, "compress": stage_compress,
    "integer": stage_integer, "onnx": stage_onnx, "cost": stage_cost, "rtl": stage_rtl,
    "simulate": stage_simulate, "synth": stage_synth,
}
