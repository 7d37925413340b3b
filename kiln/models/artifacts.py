"""Compressed models as files the next command reads (``kiln quantize … --out q.pt``).

A model file records how to rebuild its graph: the *base* (a zoo model, an ONNX file
stored inside, or a user's Python module with its source) and the *steps* applied to it
in order (pruning masks and whether they were shrunk away, channel multipliers, a quantization
config), then
the final state: weights, quantizer scales and zero points, masks. It also names the
dataset and input scale the model was made with. Loading replays the steps on the base and
loads the state, with ``torch.load(weights_only=True)``: no pickled code. Every command
that takes a MODEL reads these files, so ``quantize``, ``qat``, ``prune``, ``lower``,
``map`` and ``emit-rtl`` chain.

>>> graph, info = load_model("convnet-w4.pt")          # doctest: +SKIP
>>> info.recipe["steps"][-1]["kind"]                    # doctest: +SKIP
'quantize'
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kiln.atomic import atomic_write_file
from kiln.errors import ModelFormatError
from kiln.graph import from_onnx
from kiln.graph.core import Graph
from kiln.models.files import ModelInfo, read_torch_file
from kiln.models.registry import build_graph
from kiln.models.user import load_user_module
from kiln.prune import shrink
from kiln.prune.masks import set_mask
from kiln.prune.scale import scale_channels
from kiln.quant import QuantConfig, quantize
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.onnx_quantizers import ONNX_QUANTIZERS

MODEL_FORMAT = "kiln-model"
MODEL_VERSION = 2


def zoo_base(name: str, graph: Graph) -> dict[str, Any]:
    return {"kind": "zoo", "name": name, "input_shape": list(graph.input_shape[1:]),
            "num_classes": int(graph.node(graph.fx_nodes()[-1].name).input_shapes[0][-1])}


def onnx_base(path: Path) -> dict[str, Any]:
    import torch

    data = path.read_bytes()
    return {"kind": "onnx", "name": path.stem,
            "bytes": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()}


def module_base(spec: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    file = Path(spec.rpartition(":")[0])
    return {"kind": "module", "spec": spec, "path": str(file.resolve()),
            "source": file.read_text(), "input_shape": list(input_shape)}


def build_base(base: dict[str, Any]) -> Graph:
    """The graph a recipe starts from (fresh weights: the state comes later)."""
    kind = base.get("kind")
    if kind == "zoo":

        graph = build_graph(base["name"], tuple(base["input_shape"]), base["num_classes"])
        return graph
    if kind == "onnx":
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{base['name']}.onnx"
            path.write_bytes(bytes(base["bytes"].numpy().tobytes()))
            return from_onnx(path, name=base["name"], quantizers=ONNX_QUANTIZERS)
    if kind == "module":

        spec = base["spec"]
        path = Path(base["path"])
        source = None if path.is_file() else base["source"]  # the file moved: its copy
        return load_user_module(f"{path}:{spec.rpartition(':')[2]}",
                                tuple(base["input_shape"]), source=source)
    raise ModelFormatError(f"unknown model base kind '{kind}'")


def prune_step(pruned: Graph, *, shrunk: bool) -> dict[str, Any]:
    """A pruning step: every mask of the (masked, unshrunk) graph."""
    masks = {key: value.detach().clone() for key, value in pruned.module.state_dict().items()
             if key.endswith("_mask")}
    return {"kind": "prune", "masks": masks, "shrink": shrunk}


def quantize_step(config: Any) -> dict[str, Any]:
    parsed = QuantConfig.parse(config)
    data = parsed.model_dump(mode="json", exclude_unset=True)
    # Written out, so that replay can tell this file from one written before weights got
    # their range method by width (those lack the key: min-max at every width).
    data["weight_range_by_width"] = parsed.weight_range_by_width
    return {"kind": "quantize", "config": data}


def _step_config(step: dict[str, Any]) -> Any:
    """A quantize step's config as it was meant when the file was written."""
    config = step["config"]
    if isinstance(config, dict) and "weight_range_by_width" not in config:
        return {**config, "weight_range_by_width": False}
    return config


def channels_step(factors: dict[str, float]) -> dict[str, Any]:
    """A channel-scaling step (NAS): each listed layer's width multiplied by its factor."""
    return {"kind": "channels", "factors": {name: float(f) for name, f in factors.items()}}


def replay(recipe: dict[str, Any]) -> Graph:
    """Build the base and apply every step (structure only; weights come from the state)."""
    graph = build_base(recipe["base"])
    for step in recipe.get("steps", []):
        if step["kind"] == "prune":
            graph = graph.copy()
            for key, mask in step["masks"].items():
                module_path, _, buffer = key.rpartition(".")
                set_mask(graph.module.get_submodule(module_path), buffer.removesuffix("_mask"),
                         mask.clone())
            if step["shrink"]:
                graph = shrink(graph)
        elif step["kind"] == "quantize":
            graph = quantize(graph, _step_config(step))
        elif step["kind"] == "channels":
            graph = scale_channels(graph, step["factors"])  # fresh weights: the state follows
        else:
            raise ModelFormatError(f"unknown recipe step '{step['kind']}'")
    return graph


def _load_state(graph: Graph, state: dict[str, Any], where: str) -> None:
    """Load the final state; quantizer scales, empty until calibrated, take their shape."""
    module = graph.module
    for name, submodule in module.named_modules():
        if isinstance(submodule, FakeQuantize):
            for attribute in ("scale", "zero_point"):
                key = f"{name}.{attribute}" if name else attribute
                if key in state:
                    setattr(submodule, attribute, state[key].clone())
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFormatError(f"{where}: its weights do not fit the rebuilt model: "
                               f"{str(exc).splitlines()[0]}") from exc


def save_model(graph: Graph, path: str | Path, recipe: dict[str, Any], *,
               dataset: str | None, input_scale: float = 1.0,
               metrics: dict[str, Any] | None = None) -> Path:
    """Write a model file (atomic), with a JSON sidecar of everything but the tensors."""
    import json

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "name": graph.name,
               "recipe": recipe, "dataset": dataset, "input_scale": float(input_scale),
               "metrics": metrics or {},
               "state_dict": {k: v.detach().cpu().clone()
                              for k, v in graph.module.state_dict().items()},
               # LSQ quantizers keep their trained scale: rebuilt as plain weight quantizers
               # they would take their ranges from the weights again
               "learned_quantizers": [name for name, m in graph.module.named_modules()
                                      if getattr(m, "learned", False)],
               # and frozen ones their scale (AdaRound's grid, a pre-quantized model's)
               "frozen_quantizers": [name for name, m in graph.module.named_modules()
                                     if getattr(m, "frozen", False)]}
    atomic_write_file(path, lambda handle: torch.save(payload, handle))
    sidecar = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "name": graph.name,
               "base": {k: v for k, v in recipe["base"].items() if k not in ("bytes", "source")},
               "steps": [step["kind"] for step in recipe.get("steps", [])],
               "dataset": dataset, "input_scale": input_scale, "metrics": metrics or {}}
    atomic_write_file(path.with_suffix(".json"),
                  lambda handle: handle.write(json.dumps(sidecar, indent=2).encode() + b"\n"))
    return path


def load_model(path: str | Path, payload: dict[str, Any] | None = None):
    """Rebuild a model file's graph: ``(graph, ModelInfo)``."""

    path = Path(path)
    if payload is None:

        payload = read_torch_file(path, "model")
    if payload.get("version") != MODEL_VERSION:
        raise ModelFormatError(f"{path}: kiln model version {payload.get('version')} "
                               f"(this kiln reads {MODEL_VERSION})")
    recipe = payload["recipe"]
    graph = replay(recipe)
    _load_state(graph, payload["state_dict"], str(path))
    for name in payload.get("learned_quantizers", []):
        graph.module.get_submodule(name).learn_scale()
    for name in payload.get("frozen_quantizers", []):
        graph.module.get_submodule(name).frozen = True
    graph.name = payload.get("name") or graph.name
    graph.source = str(path)
    info = ModelInfo(graph.name, payload.get("dataset"), path, payload.get("metrics", {}),
                     recipe=copy.deepcopy(recipe),
                     input_scale=float(payload.get("input_scale", 1.0)))
    return graph, info
