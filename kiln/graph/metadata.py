"""Typed per-node metadata of a :class:`~kiln.graph.Graph`.

Every fx node of a graph carries a :class:`NodeInfo` in ``node.meta["kiln"]``, filled by
:func:`kiln.passes.propagate`. Compute layers (conv, linear, matmul) also carry
:class:`LoopDims`, the loop nest in ZigZag's naming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from math import prod
from typing import Any


class OpKind(StrEnum):
    """What a node computes, independent of how PyTorch or ONNX spelled it."""

    INPUT = "input"
    OUTPUT = "output"
    CONSTANT = "constant"
    CONV = "conv2d"
    CONV1D = "conv1d"
    LINEAR = "linear"
    MATMUL = "matmul"
    RELU = "relu"
    RELU6 = "relu6"
    CLIP = "clip"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    BATCHNORM = "batchnorm"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    CONCAT = "concat"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    SOFTMAX = "softmax"
    DROPOUT = "dropout"
    IDENTITY = "identity"
    LRN = "lrn"
    PAD = "pad"
    QUANTIZE = "quantize"
    OTHER = "other"


#: Kinds that carry multiply-accumulate loop nests.
COMPUTE_KINDS = frozenset({OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR, OpKind.MATMUL})
#: Kinds that are not layers of the network (bookkeeping nodes).
STRUCTURAL_KINDS = frozenset({OpKind.INPUT, OpKind.OUTPUT, OpKind.CONSTANT})


@dataclass(frozen=True)
class LoopDims:
    """The loop nest of a conv / linear / matmul layer, in ZigZag's naming.

    ``G`` groups, each computing ``K`` output channels from ``C`` input channels, so a
    depthwise conv has ``G = channels, K = C = 1`` and a plain conv ``G = 1``. For a
    linear or matmul layer ``B`` is the product of the leading (batch and row)
    dimensions, ``C`` the reduced dimension and ``K`` the output features.

    >>> LoopDims(B=1, G=1, K=64, C=3, OY=112, OX=112, FY=7, FX=7).macs
    118013952
    """

    B: int
    G: int
    K: int
    C: int
    OY: int
    OX: int
    FY: int
    FX: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def groups(self) -> int:
        return self.G

    @property
    def macs(self) -> int:
        return prod((self.B, self.G, self.K, self.C, self.OY, self.OX, self.FY, self.FX))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NodeInfo:
    """What kiln knows about one node: kind, shapes, parameters, MACs, loop nest."""

    name: str
    op: OpKind
    target: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shape: tuple[int, ...] | None = None
    output_dtype: str | None = None
    params: int = 0
    macs: int = 0
    loops: LoopDims | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_layer(self) -> bool:
        return self.op not in STRUCTURAL_KINDS

    @property
    def output_elements(self) -> int:
        return prod(self.output_shape) if self.output_shape else 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["op"] = str(self.op)
        data["input_shapes"] = [list(s) for s in self.input_shapes]
        data["output_shape"] = list(self.output_shape) if self.output_shape else None
        return data
