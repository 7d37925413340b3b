"""The model zoo, shipped checkpoints, and training / evaluation.

>>> from kiln.models import MODELS, resolve_model
>>> graph, info = resolve_model("convnet")
>>> graph.input_shape
(1, 1, 28, 28)
"""

from kiln.models.checkpoints import (
    ModelInfo,
    build_graph,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
    shipped_checkpoint,
)
from kiln.models.registry import MODELS, ModelSpec, model_spec
from kiln.training import TrainResult, evaluate, fit, predict

__all__ = [
    "MODELS",
    "ModelInfo",
    "ModelSpec",
    "TrainResult",
    "build_graph",
    "evaluate",
    "fit",
    "load_checkpoint",
    "model_spec",
    "predict",
    "resolve_model",
    "save_checkpoint",
    "shipped_checkpoint",
]
