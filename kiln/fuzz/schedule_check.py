"""The ``schedule`` fuzz stage: a random network, exported to ONNX by PyTorch, scheduled on
one of kiln's example multi-core systems at a random granularity and allocation.

Besides kiln's own validator (which the scheduler runs on every schedule it returns), the
schedule is checked against what PyTorch says about the network, not against kiln's ONNX
reader: every MAC layer's output (rows × output channels × input-channel chunks) is
computed exactly once by its tiles, the tiles' MACs add up to the layer's MACs counted from
the module's own shapes, and the latency is at least the lower bound kiln reports.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.fuzz.networks import NetworkSpec, build_module
from kiln.hw.schedule.costs import tile_layer
from kiln.hw.schedule.run import schedule

EXAMPLE_SYSTEMS = Path(__file__).resolve().parents[2] / "examples" / "hardware" / "multicore"
SYSTEMS = ("quad_core_homogeneous", "quad_core_heterogeneous", "dual_core_simd")
GRANULARITIES = ("layer", "rows=1", "rows=2", "rows=3", "rows=5", "rows=all", "auto")


def schedule_choices(spec: NetworkSpec) -> dict[str, str]:
    """The system, granularity and allocation a network is scheduled with (from its seed)."""
    rng = random.Random(spec.seed * 7919 + 5)
    return {"system": rng.choice(SYSTEMS), "granularity": rng.choice(GRANULARITIES),
            "allocate": rng.choice(("fixed", "greedy"))}


def export_float_onnx(spec: NetworkSpec, path: Path) -> Path:
    """The float network as PyTorch exports it (what a user would bring to ``kiln schedule``)."""
    module = build_module(spec).eval()
    with warnings.catch_warnings():  # the legacy exporter's notes on every network
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *spec.input_shape),), str(path),
                          dynamo=False, input_names=["input"], output_names=["output"])
    return path


def module_macs(spec: NetworkSpec) -> list[int]:
    """MACs of every convolution and linear layer, in order, from the module's own shapes."""
    module = build_module(spec).eval()
    macs: list[int] = []

    def count(layer: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            per_output = (layer.in_channels // layer.groups) * int(np.prod(layer.kernel_size))
            macs.append(int(output.numel()) * per_output)
        elif isinstance(layer, nn.Linear):
            macs.append(int(output.numel()) * layer.in_features)

    handles = [m.register_forward_hook(count) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(torch.zeros(1, *spec.input_shape))
    for handle in handles:
        handle.remove()
    return macs


def runtime_refusal(path: Path) -> str | None:
    """Why ONNX Runtime refuses the export (None when it runs it): PyTorch writes some
    networks (a MaxPool in ceil mode whose last window starts past the input) with shapes
    ONNX disagrees with; such a file is not a fair input for any ONNX reader."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        return str(error).splitlines()[0][:160]
    return None


def check_schedule(spec: NetworkSpec, folder: Path) -> tuple[str | None, str | None,
                                                              dict[str, Any]]:
    """(failure, skip reason, details) of the schedule stage for one network."""
    path = export_float_onnx(spec, folder / f"float{spec.seed}.onnx")
    refused = runtime_refusal(path)
    if refused is not None:
        return None, f"ONNX Runtime refuses PyTorch's export: {refused}", {}
    choices = schedule_choices(spec)
    system = EXAMPLE_SYSTEMS / f"{choices['system']}.yaml"
    result = schedule(str(path), system, granularity=choices["granularity"],
                      allocate=choices["allocate"])
    found = result.schedule
    details = {**choices, "latency_cycles": found.latency}
    # Coverage: each (row, output channel, input-channel chunk) of a MAC layer, once.
    layer_macs: list[int] = []
    for node in found.graph.nodes:
        if not node.is_mac:
            continue
        tiles = [t.tile for t in found.tiles if t.tile.node == node.name]
        covered = np.zeros((node.out_rows, node.out_channels), dtype=np.int64)
        chunks = max((t.chunks for t in tiles), default=1)
        for tile in tiles:
            covered[tile.rows[0]:tile.rows[1], tile.channels[0]:tile.channels[1]] += 1
        if covered.min() != chunks or covered.max() != chunks:
            where = np.argwhere(covered != chunks)[0]
            return (f"{node.name}: output row {where[0]}, channel {where[1]} computed "
                    f"{covered[tuple(where)]} times (expected {chunks})"), None, details
        layer_macs.append(sum(tile_layer(node, tile).macs for tile in tiles))
    expected = module_macs(spec)
    if sorted(layer_macs) != sorted(expected):
        return (f"the tiles hold {sorted(layer_macs)} MACs per layer, the module "
                f"{sorted(expected)}"), None, details
    bound = result.figures["lower_bound"]["cycles"]
    if found.latency < bound:
        return f"latency {found.latency} below the lower bound {bound}", None, details
    return None, None, details
