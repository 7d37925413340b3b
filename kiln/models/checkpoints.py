"""Checkpoints (``.pt``) and resolving a MODEL argument: zoo name, checkpoint or ONNX file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.atomic import atomic_write_file
from kiln.data import load_dataset
from kiln.errors import ModelFormatError
from kiln.graph import from_onnx
from kiln.graph.core import Graph
from kiln.models.artifacts import MODEL_FORMAT, load_model, module_base, onnx_base, zoo_base
from kiln.models.files import ModelInfo, read_torch_file
from kiln.models.registry import MODELS, build_graph, model_spec
from kiln.models.user import is_user_module, load_user_module
from kiln.quant.onnx_quantizers import ONNX_QUANTIZERS

__all__ = ["ModelInfo", "build_graph", "load_checkpoint", "read_torch_file", "resolve_model",
           "save_checkpoint", "shipped_checkpoint"]

SHIPPED_DIR = Path(__file__).parent / "checkpoints"
CHECKPOINT_FORMAT = "kiln-checkpoint"


def shipped_checkpoint(name: str) -> Path | None:
    """The checkpoint kiln ships for zoo model ``name`` (trained on its default dataset)."""
    spec = model_spec(name)
    path = SHIPPED_DIR / f"{name}-{spec.dataset}.pt"
    return path if path.is_file() else None


def save_checkpoint(graph: Graph, path: str | Path, *, model: str, dataset: str | None,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write ``graph``'s weights as a kiln checkpoint (atomic), plus a JSON sidecar."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": model,
        "dataset": dataset,
        "input_shape": list(graph.input_shape[1:]),
        "num_classes": int(graph.node(graph.fx_nodes()[-1].name).input_shapes[0][-1]),
        "metrics": metrics or {},
        "state_dict": {k: v.detach().cpu() for k, v in graph.module.state_dict().items()},
    }
    atomic_write_file(path, lambda handle: torch.save(payload, handle))
    sidecar = {k: v for k, v in payload.items() if k != "state_dict"}
    atomic_write_file(path.with_suffix(".json"),
                  lambda handle: handle.write(json.dumps(sidecar, indent=2).encode() + b"\n"))
    return path


def load_checkpoint(path: str | Path) -> tuple[Graph, ModelInfo]:
    """Rebuild a zoo model from a kiln checkpoint; a bad file is a ``KilnError``."""
    path = Path(path)
    payload = read_torch_file(path, "checkpoint")

    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return load_model(path, payload)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFormatError(
            f"{path}: not a kiln checkpoint (no 'format: {CHECKPOINT_FORMAT}' entry)",
            hint="make one with 'kiln train MODEL --out FILE.pt'")
    graph = build_graph(payload["model"], tuple(payload["input_shape"]), payload["num_classes"])
    try:
        graph.module.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelFormatError(f"{path}: weights do not fit model '{payload['model']}': {exc}"
                               ) from exc
    graph.name = payload["model"]
    graph.source = str(path)
    info = ModelInfo(payload["model"], payload.get("dataset"), path, payload.get("metrics", {}),
                     recipe={"base": zoo_base(payload["model"], graph), "steps": []})
    return graph, info


def resolve_model(spec: str, *, dataset: str | None = None, pretrained: bool = False,
                  input_shape: tuple[int, ...] | None = None,
                  weights: str | Path | None = None) -> tuple[Graph, ModelInfo]:
    """Turn a MODEL argument into a graph: a zoo name, a ``.pt`` checkpoint or model file,
    an ``.onnx`` file, or a user's module ``file.py:ClassOrFactory`` (with ``input_shape``
    and optional ``weights``, a state-dict file).

    A zoo name gives fresh weights, or the shipped trained checkpoint when
    ``pretrained`` (for models that have one). ``dataset`` makes a zoo model's input
    width and class count follow that dataset.

    >>> graph, info = resolve_model("jsc-three-linear", dataset="letter")
    >>> graph.input_shape, info.dataset
    ((1, 16), 'letter')
    """

    if is_user_module(spec):
        graph = load_user_module(spec, input_shape, weights=weights)
        return graph, ModelInfo(graph.name, dataset, None,
                                recipe={"base": module_base(spec, input_shape or ()),
                                        "steps": []})
    if spec.endswith(".onnx") or (Path(spec).suffix == ".onnx"):
        graph = from_onnx(spec, quantizers=ONNX_QUANTIZERS)
        return graph, ModelInfo(Path(spec).stem, dataset, Path(spec),
                                recipe={"base": onnx_base(Path(spec)), "steps": []})
    if spec.endswith(".pt") or (spec not in MODELS and Path(spec).is_file()):
        graph, info = load_checkpoint(spec)
        if dataset is not None:
            info.dataset = dataset
        return graph, info
    zoo = model_spec(spec)
    if pretrained and dataset in (None, zoo.dataset):
        shipped = shipped_checkpoint(spec)
        if shipped is not None:
            return load_checkpoint(shipped)
    if dataset is not None:
        data = load_dataset(dataset)
        graph = build_graph(spec, data.input_shape, data.num_classes)
    else:
        graph = build_graph(spec)
    return graph, ModelInfo(spec, dataset or zoo.dataset,
                            recipe={"base": zoo_base(spec, graph), "steps": []})
