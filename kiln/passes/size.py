"""``model_size``: bytes a model's parameters take at their bit widths.

Per conv/linear layer: weights at the weight quantizer's width (32 in float), plus its
scales (32-bit floats) and zero points (at the weight width), plus the bias (32 bits:
float, or int32 after lowering). Other parameters (e.g. an unfused BatchNorm) count as
32-bit floats. Unstructured sparsity can be stored in a sparse format:

* ``csr``: each nonzero costs its value plus a column index of ceil(log2(columns)) bits;
  each row a 32-bit pointer (rows = output channels, columns = fan-in);
* ``bitmap``: one presence bit per weight position plus the nonzero values;
* ``auto``: per layer, the smallest of dense, csr and bitmap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn

from kiln.errors import ConfigError
from kiln.graph.core import Graph

SparseFormat = Literal["dense", "csr", "bitmap", "auto"]


@dataclass(frozen=True)
class LayerSize:
    name: str
    params: int
    nonzeros: int
    weight_bits: int
    storage: str
    weight_bits_total: int
    index_bits_total: int
    overhead_bits_total: int  # scales, zero points, bias

    @property
    def bytes(self) -> float:
        return (self.weight_bits_total + self.index_bits_total + self.overhead_bits_total) / 8


@dataclass(frozen=True)
class SizeReport:
    total_bytes: float
    layers: list[LayerSize] = field(default_factory=list)
    other_bits: int = 0

    @property
    def kilobytes(self) -> float:
        return self.total_bytes / 1024

    def as_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "kilobytes": self.kilobytes,
                "other_bits": self.other_bits,
                "layers": [{**asdict(layer), "bytes": layer.bytes} for layer in self.layers]}


def _weight_bits(layer: nn.Module) -> tuple[int, int]:
    """(bits per weight, overhead bits for scales and zero points) of a layer's weights."""
    quantizer = getattr(layer, "weight_quantizer", None)
    if quantizer is None:
        return 32, 0
    spec = quantizer.spec
    channels = layer.weight.shape[0] if spec.granularity == "channel" else 1
    if spec.format == "bfp":
        blocks = math.ceil(layer.weight.numel() / spec.block_size)
        return spec.bits, blocks * 8  # an 8-bit shared exponent per block
    zero_points = 0 if spec.symmetric or spec.format != "int" else channels * spec.bits
    return spec.bits, channels * 32 + zero_points


def model_size(graph: Graph, *, sparse_format: SparseFormat = "dense") -> SizeReport:
    """Bytes of ``graph``'s parameters at their quantized widths (see module docstring).

    >>> from kiln.models import build_graph
    >>> model_size(build_graph("jsc-tiny")).total_bytes        # 474 float32 parameters
    1896.0
    """
    if sparse_format not in ("dense", "csr", "bitmap", "auto"):
        raise ConfigError(f"unknown sparse format '{sparse_format}': use dense, csr, bitmap "
                          "or auto")
    layers = []
    counted: set[int] = set()
    for name, module in graph.module.named_modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        counted.add(id(module.weight))
        bits, overhead = _weight_bits(module)
        weight = module.weight.detach()
        params = weight.numel()
        nonzeros = int((weight != 0).sum())
        rows, columns = weight.shape[0], params // weight.shape[0]
        options = {"dense": (params * bits, 0)}
        if sparse_format in ("csr", "auto"):
            options["csr"] = (nonzeros * bits,
                              nonzeros * max(1, math.ceil(math.log2(columns))) + (rows + 1) * 32)
        if sparse_format in ("bitmap", "auto"):
            options["bitmap"] = (nonzeros * bits, params)
        if sparse_format == "auto":
            storage = min(options, key=lambda k: sum(options[k]))
        else:
            storage = sparse_format
        value_bits, index_bits = options[storage]
        if module.bias is not None:
            counted.add(id(module.bias))
            overhead += module.bias.numel() * 32
        layers.append(LayerSize(name, params, nonzeros, bits, storage, value_bits, index_bits,
                                overhead))
    other = sum(p.numel() * 32 for p in graph.module.parameters() if id(p) not in counted
                and not _is_quantizer_param(graph.module, p))
    total = sum(layer.bytes for layer in layers) + other / 8
    return SizeReport(total, layers, other)


def _is_quantizer_param(module: nn.Module, param: nn.Parameter) -> bool:
    # A quantizer (FakeQuantize) says what it is with ``kiln_kind``: passes sit below
    # kiln.quant and do not import its classes.
    return any(p is param for m in module.modules()
               if getattr(m, "kiln_kind", None) == "quantize"
               for p in m.parameters())
