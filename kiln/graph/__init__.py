"""kiln's software IR: :class:`Graph` and its importers.

>>> import torch
>>> from kiln.graph import from_torch
>>> g = from_torch(torch.nn.Linear(3, 2), torch.zeros(1, 3))
>>> g.total_macs
6
"""

from kiln.graph.core import Graph
from kiln.graph.metadata import COMPUTE_KINDS, LoopDims, NodeInfo, OpKind
from kiln.graph.onnx_import import SUPPORTED_ONNX_OPS, from_onnx
from kiln.graph.torch_import import from_torch

__all__ = [
    "COMPUTE_KINDS",
    "SUPPORTED_ONNX_OPS",
    "Graph",
    "LoopDims",
    "NodeInfo",
    "OpKind",
    "from_onnx",
    "from_torch",
]
