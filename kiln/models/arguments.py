"""The MODEL argument every command (and the flow) takes, in any of its forms: a zoo name,
a .pt checkpoint or model file, an .onnx file, or ``path/to/file.py:Name``.

    >>> graph, info = load_model_argument("convnet")
    >>> info.dataset
    'fashion-mnist'
"""

from __future__ import annotations

from typing import Any

from kiln.data import load_dataset
from kiln.errors import ConfigError
from kiln.models import build_graph, resolve_model
from kiln.models.artifacts import zoo_base
from kiln.models.files import ModelInfo
from kiln.models.registry import model_spec
from kiln.models.user import is_user_module, parse_shape


def load_model_argument(model: str, *, data: str | None = None,
                        input_shape: str | None = None, weights: Any = None,
                        pretrained: bool = True):
    """``(graph, info)`` of a MODEL argument in any of its forms."""
    shape_ = parse_shape(input_shape)
    if shape_ is not None and not is_user_module(model) and not model.endswith(
            (".pt", ".onnx")):
        graph = build_graph(model, shape_)  # a zoo model at another input size
        return graph, ModelInfo(model, data or model_spec(model).dataset,
                                recipe={"base": zoo_base(model, graph), "steps": []})
    return resolve_model(model, dataset=data, pretrained=pretrained, input_shape=shape_,
                         weights=weights)


def model_dataset(info: Any, data: str | None, input_scale: float | None):
    """The dataset a command evaluates or calibrates on, scaled for the model: ``data`` or
    the model's own; ``input_scale`` or what the model file records."""
    name = data or info.dataset
    if name is None:
        raise ConfigError(f"model '{info.name}' has no default dataset: pass --data")
    scale = input_scale if input_scale is not None else getattr(info, "input_scale", 1.0)
    if scale <= 0:
        raise ConfigError(f"--input-scale must be positive, got {scale}")
    return load_dataset(name).scaled(scale), scale
