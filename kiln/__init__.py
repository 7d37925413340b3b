"""kiln: carry a trained neural network all the way to an accelerator.

The top-level API mirrors the CLI, one function per command, each taking the same MODEL
forms (a zoo name, a .pt checkpoint or model file, an .onnx file, ``file.py:Name``)::

    import kiln

    graph, info = kiln.load("convnet")                       # kiln inspect / evaluate
    quantized = kiln.quantize(graph, kiln.uniform_config(8, 8), data="fashion-mnist")
    program = kiln.lower(quantized, rounding="float32")      # kiln lower
    kiln.save_program(program, "out/convnet-int8")
    cost = kiln.map("convnet", "examples/hardware/edge_npu.yaml")   # kiln map
    plan = kiln.schedule("resnet18-conv1x4",                         # kiln schedule
                         "examples/hardware/multicore/quad_core_homogeneous.yaml")
    design = kiln.emit_rtl(program, (4, 4), "out/convnet-rtl")      # kiln emit-rtl
    result = kiln.simulate(design, vectors=20)                      # kiln simulate

Heavy modules are imported on first use, so ``import kiln`` (and ``kiln --help``) stays
fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# (Names that are also subpackages, kiln.prune, kiln.search, kiln.fuzz, get a verb: the
# subpackage would replace the function once imported.)
__all__ = ["__version__", "calibrate", "emit_rtl", "evaluate", "export_onnx", "fuzz_networks",
           "load", "lower", "map", "prune_model", "qat", "quantize", "run", "save_program",
           "schedule", "search_study", "simulate", "train", "uniform_config"]


def load(model: str, *, data: str | None = None, input_shape: tuple[int, ...] | None = None,
         weights: str | None = None, pretrained: bool = True):
    """``(graph, info)`` of a MODEL in any form (``kiln inspect``)."""
    from kiln.models import resolve_model

    return resolve_model(model, dataset=data, pretrained=pretrained, input_shape=input_shape,
                         weights=weights)


def _dataset(data: Any):
    from kiln.data import load_dataset

    return load_dataset(data) if isinstance(data, str) else data


def quantize(graph, config, *, data: Any = None, batches: int = 8,
             bias_correction: bool | None = None, adaround: bool = False):
    """Quantize (and, given ``data``, calibrate) a graph (``kiln quantize``); with data,
    biases are corrected for weight rounding as ``kiln quantize`` does (default: when
    weights are narrower than 8 bits), or (``adaround``) the rounding is learned."""
    from kiln.quant import calibrate as calibrate_graph
    from kiln.quant import quantize as quantize_graph
    from kiln.quant.ptq import refine_weights

    quantized = quantize_graph(graph, config)
    if data is None:
        return quantized
    dataset = _dataset(data)
    quantized = calibrate_graph(quantized, dataset, batches=batches)
    return refine_weights(quantized, dataset, batches=batches,
                          bias_correction=bias_correction, adaround=adaround)[0]


def calibrate(graph, data: Any, *, batches: int = 8):
    """Set a quantized graph's activation ranges from data."""
    from kiln.quant import calibrate as calibrate_graph

    return calibrate_graph(graph, _dataset(data), batches=batches)


def uniform_config(weight_bits: int | None = 8, activation_bits: int | None = None, **options):
    """The same widths everywhere, as a quantization config."""
    from kiln.quant import uniform_config as config

    return config(weight_bits, activation_bits, **options)


def qat(graph, data: Any, **options):
    """Quantization-aware fine-tuning of a quantized, calibrated graph (``kiln qat``)."""
    from kiln.quant import qat as run_qat

    return run_qat(graph, _dataset(data), **options)


def prune_model(graph, *, method: str = "filters", fraction: float = 0.5, shrink: bool = True,
          **options):
    """Prune a graph; structured pruning is shrunk physically (``kiln prune``)."""
    from kiln import prune as pruning
    from kiln.errors import ConfigError

    functions = {"filters": pruning.prune_filters, "channels": pruning.prune_channels,
                 "magnitude": pruning.prune_magnitude}
    if method not in functions:
        raise ConfigError(f"unknown pruning method '{method}': use {', '.join(functions)}")
    pruned = functions[method](graph, fraction=fraction, **options)
    return pruning.shrink(pruned) if shrink and method != "magnitude" else pruned


def train(graph, data: Any, **options):
    """Train a graph in place (``kiln train``); returns the training record."""
    from kiln.models import fit

    return fit(graph, _dataset(data), **options)


def evaluate(graph, data: Any, *, split: str = "test") -> float:
    """Top-1 accuracy (``kiln evaluate``)."""
    from kiln.models import evaluate as evaluate_graph

    return evaluate_graph(graph, _dataset(data), split=split)


def lower(graph, *, rounding: str = "nearest"):
    """A quantized graph as an integer-only program (``kiln lower``)."""
    from kiln.integer import lower as lower_graph

    return lower_graph(graph, rounding=rounding)


def save_program(program, directory):
    """Write a program folder (what ``kiln lower --out`` writes)."""
    return program.save(directory)


def run(program, inputs):
    """The program's output integers for integer inputs (``kiln run``'s engine)."""
    from kiln.integer import run as run_program

    return run_program(program, inputs)


def export_onnx(program, path, *, export_format: str = "qoperator"):
    """An integer program as ONNX (``kiln export-onnx``)."""
    from kiln.integer import export_onnx as export

    return export(program, path, export_format=export_format)


def map(workload, accelerator, *, objective: str = "latency", refine: int = 4, **options):
    """The best mapping of every layer on an accelerator (``kiln map``, same defaults)."""
    from kiln.hw import load_accelerator, load_workload
    from kiln.hw.workload_mapper import map_workload

    if isinstance(workload, str):
        workload = load_workload(workload)
    hardware = load_accelerator(accelerator) if not hasattr(accelerator, "memories") \
        else accelerator
    return map_workload(workload, hardware, objective, refine=refine, **options)


def schedule(workload, system, **options):
    """A network on a multi-core system (``kiln schedule``, same options as keywords:
    mapping, granularity, allocate, objective, trials, seed, storage, precision)."""
    from kiln.hw.schedule.run import schedule as run_schedule

    return run_schedule(workload, system, **options)


def emit_rtl(program, parallelism, out_dir):
    """SystemVerilog for a program (``kiln emit-rtl``)."""
    from kiln.rtl import emit

    return emit(program, parallelism, out_dir)


def simulate(design, **options):
    """Simulate a design against the engine (``kiln simulate``)."""
    from kiln.rtl.simulate import simulate as run_simulation

    return run_simulation(design, **options)


def search_study(config, **options):
    """Run a search study from a config file or object (``kiln search``)."""
    from kiln.search import load_config, run_search

    if not hasattr(config, "study"):
        config = load_config(config)
    return run_search(config, **options)


def fuzz_networks(**options):
    """Random networks through kiln's stages (``kiln fuzz``)."""
    from kiln.fuzz import fuzz as run_fuzz

    return run_fuzz(**options)
