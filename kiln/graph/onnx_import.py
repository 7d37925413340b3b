"""Import an ONNX file into a :class:`Graph` (an executable, trainable fx graph).

Weights become ``nn.Parameter``s of standard modules (``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ...) so that an imported graph trains, quantizes and prunes like a
traced PyTorch model. Subgraphs whose inputs are all constants are folded at import.
While the fx graph is built, every new node is also run once on an example tensor, so
shapes are exact for the decisions that need them (BatchNorm rank, ``auto_pad``).

A ``Reshape`` whose constant target starts with 1 (models exported at batch size 1)
is made batch-polymorphic: that leading 1 follows the input's batch dimension. At
batch size 1 this is exactly ONNX's semantics; at larger batches it is what the
exporter meant, and it lets imported models be evaluated and trained in batches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from kiln.errors import KilnError, UnsupportedOperatorError
from kiln.graph import onnx_ops, onnx_quant
from kiln.graph.core import Graph
from kiln.graph.onnx_load import load_onnx_model
from kiln.graph.onnx_quant import (
    QuantizerFactory,
    linear_params,
    qonnx_params,
    quantize_node,
    same_params,
)
from kiln.onnx_constants import attributes, fold_constant_node, tensor_to_numpy

Handler = Callable[["_Importer", Any, dict[str, Any]], list[torch.fx.Node]]
_HANDLERS: dict[str, Handler] = {}


def _handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op_type in op_types:
            _HANDLERS[op_type] = function
        return function

    return register


def from_onnx(path: str | Path, *, name: str | None = None, seed: int = 0,
              quantizers: QuantizerFactory | None = None) -> Graph:
    """Import the ONNX model at ``path`` as a :class:`Graph`.

    Dynamic dimensions of the input (e.g. a symbolic batch) are set to 1 for the example
    input. Every operator the file uses that kiln does not support is listed in one
    :class:`~kiln.errors.UnsupportedOperatorError`. A pre-quantized model (QDQ or QONNX
    ``Quant`` nodes) needs ``quantizers`` to build its quantizers with
    (``kiln.quant.onnx_quantizers.ONNX_QUANTIZERS``; ``kiln.load`` passes it).

    >>> g = from_onnx("model.onnx")            # doctest: +SKIP
    >>> g(g.example_input).shape               # doctest: +SKIP
    torch.Size([1, 10])
    """
    path = Path(path)
    model = load_onnx_model(path)
    importer = _Importer(model, path, seed=seed, quantizers=quantizers)
    return importer.build(name or path.stem)


class _Importer:
    def __init__(self, model: Any, path: Path, *, seed: int,
                 quantizers: QuantizerFactory | None = None) -> None:
        self.model = model
        self.quantizers = quantizers
        self.path = path
        self.seed = seed
        self.opset = next(
            (imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 1
        )
        self.root = nn.Module()
        self.fx = torch.fx.Graph()
        self.constants: dict[str, np.ndarray] = {
            init.name: tensor_to_numpy(init) for init in model.graph.initializer
        }
        self.values: dict[str, torch.fx.Node] = {}
        self.examples: dict[torch.fx.Node, Any] = {}
        self.constant_nodes: dict[str, torch.fx.Node] = {}
        self.used_names: set[str] = set()
        # Pre-quantized models (kiln.graph.onnx_quant): the quantization of folded constant
        # weights, and of computed tensors between a QuantizeLinear and its Dequantize.
        self.weight_quant: dict[str, Any] = {}
        self.quant_params: dict[str, Any] = {}

    def attrs_of(self, node: Any) -> dict[str, Any]:
        return attributes(node)

    def quantizers_for(self, node: Any) -> QuantizerFactory:
        """The factory of quantizers, or a clear refusal when none was given."""
        if self.quantizers is None:
            raise UnsupportedOperatorError(
                f"{self.where(node)}: a pre-quantized model ({node.op_type} nodes) needs "
                "kiln's quantizers: load it with kiln.load(path), or call from_onnx(path, "
                "quantizers=kiln.quant.onnx_quantizers.ONNX_QUANTIZERS)")
        return self.quantizers

    # --- naming --------------------------------------------------------------------
    def unique_name(self, raw: str) -> str:
        base = re.sub(r"\W", "_", raw).strip("_") or "node"
        if base[0].isdigit():
            base = "n_" + base
        candidate, index = base, 1
        while candidate in self.used_names:
            candidate = f"{base}_{index}"
            index += 1
        self.used_names.add(candidate)
        return candidate

    def where(self, node: Any) -> str:
        return f"node '{node.name or node.output[0]}' ({node.op_type}) in {self.path}"

    # --- emitting ------------------------------------------------------------------
    def _evaluate(self, fx_node: torch.fx.Node) -> None:
        args = torch.fx.node.map_arg(fx_node.args, lambda n: self.examples[n])
        kwargs = torch.fx.node.map_arg(fx_node.kwargs, lambda n: self.examples[n])
        with torch.no_grad():
            if fx_node.op == "call_module":
                result = self.root.get_submodule(fx_node.target)(*args, **kwargs)
            elif fx_node.op == "call_function":
                result = fx_node.target(*args, **kwargs)
            elif fx_node.op == "get_attr":
                result = getattr(self.root, fx_node.target)
            else:  # placeholders get their example when created
                return
        self.examples[fx_node] = result

    def call_module(self, raw_name: str, module: nn.Module, *args: Any) -> torch.fx.Node:
        name = self.unique_name(raw_name)
        self.root.add_module(name, module.eval())
        fx_node = self.fx.call_module(name, args=args)
        fx_node.name = name
        self._evaluate(fx_node)
        return fx_node

    def call_function(
        self, raw_name: str, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.fx.Node:
        fx_node = self.fx.call_function(function, args=args, kwargs=kwargs)
        fx_node.name = self.unique_name(raw_name)
        self._evaluate(fx_node)
        return fx_node

    def constant_node(self, onnx_name: str) -> torch.fx.Node:
        """A buffer holding constant ``onnx_name`` (one per constant, reused)."""
        if onnx_name not in self.constant_nodes:
            value = torch.from_numpy(np.array(self.constants[onnx_name]))
            attr = self.unique_name("const_" + onnx_name)
            if value.is_floating_point():
                # Float operands of arithmetic (biases, scales) train with the model.
                self.root.register_parameter(attr, nn.Parameter(value.float()))
            else:
                self.root.register_buffer(attr, value)
            fx_node = self.fx.get_attr(attr)
            self._evaluate(fx_node)
            self.constant_nodes[onnx_name] = fx_node
        return self.constant_nodes[onnx_name]

    def example(self, fx_node: torch.fx.Node) -> Any:
        return self.examples[fx_node]

    # --- inputs --------------------------------------------------------------------
    def is_constant(self, onnx_name: str) -> bool:
        return onnx_name in self.constants

    def dynamic(self, onnx_name: str, node: Any) -> torch.fx.Node:
        if onnx_name in self.values:
            return self.values[onnx_name]
        if onnx_name in self.constants:
            return self.constant_node(onnx_name)
        raise KilnError(f"{self.where(node)}: input '{onnx_name}' is not produced by any node")

    def tensor_or_constant(self, onnx_name: str, node: Any) -> torch.fx.Node:
        return self.dynamic(onnx_name, node)

    def require_constant(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or node.input[index] == "":
            return None
        name = node.input[index]
        if name not in self.constants:
            raise UnsupportedOperatorError(
                f"{self.where(node)}: {what} must be a constant (initializer), "
                f"but '{name}' is computed at run time"
            )
        return self.constants[name]

    # --- the build -----------------------------------------------------------------
    def build(self, name: str) -> Graph:

        graph = self.model.graph
        unsupported: list[str] = []
        dynamic_nodes = []
        known = set(self.constants)
        nodes = _needed_nodes(graph)
        for node in nodes:
            inputs_constant = all(i == "" or i in known for i in node.input)
            if inputs_constant and node.op_type in ("DequantizeLinear", "Quant"):
                inputs = [self.constants.get(i) if i else None for i in node.input]
                value, params = onnx_quant.dequantize_constant(node, inputs, attributes(node))
                self.constants[node.output[0]] = value
                self.weight_quant[node.output[0]] = params
                known.add(node.output[0])
                continue
            if node.domain not in ("", "ai.onnx") and not (
                    node.op_type == "Quant" and node.domain in onnx_quant.QONNX_DOMAINS):
                # a custom-domain op (Brevitas' FloatQuant, say): nothing can run or fold it
                unsupported.append(f"{node.op_type} of domain '{node.domain}' "
                                   f"(node '{node.name or node.output[0]}')")
                continue
            if inputs_constant and node.op_type not in ("RandomNormal", "RandomUniform"):
                inputs = [self.constants.get(i) if i else None for i in node.input]
                try:
                    outputs = fold_constant_node(node, inputs, self.opset)
                except Exception as exc:
                    raise KilnError(f"{self.where(node)}: cannot fold constant: {exc}") from exc
                for out_name, value in zip(node.output, outputs, strict=False):
                    self.constants[out_name] = value
                    known.add(out_name)
                continue
            domain_ok = node.domain in ("", "ai.onnx") or (
                node.op_type == "Quant" and node.domain in onnx_quant.QONNX_DOMAINS)
            if node.op_type not in _HANDLERS or not domain_ok:
                unsupported.append(f"{node.op_type} (node '{node.name or node.output[0]}')")
            dynamic_nodes.append(node)
        if unsupported:
            raise UnsupportedOperatorError(
                f"{self.path}: {len(unsupported)} unsupported operator node(s): "
                + ", ".join(unsupported),
                hint="supported ONNX ops: " + ", ".join(sorted(SUPPORTED_ONNX_OPS)),
            )

        placeholders = [i for i in graph.input if i.name not in self.constants]
        if len(placeholders) != 1:
            raise KilnError(
                f"{self.path}: kiln imports models with exactly one input tensor, found "
                f"{len(placeholders)}: {[p.name for p in placeholders]}"
            )
        example_input = self._example_input(placeholders[0])
        input_node = self.fx.placeholder(self.unique_name(placeholders[0].name))
        self.examples[input_node] = example_input
        self.values[placeholders[0].name] = input_node

        for node in dynamic_nodes:
            outputs = _HANDLERS[node.op_type](self, node, attributes(node))
            for out_name, fx_node in zip(node.output, outputs, strict=False):
                if out_name:
                    self.values[out_name] = fx_node
            if node.op_type in onnx_quant.INTEGER_PASS_THROUGH and \
                    node.input[0] in self.quant_params:  # integers moved, not changed
                self.quant_params[node.output[0]] = self.quant_params[node.input[0]]

        results = []
        for output in _outputs(graph):
            if output.name not in self.values:
                raise KilnError(f"{self.path}: graph output '{output.name}' is a constant")
            results.append(self.values[output.name])
        self.fx.output(results[0] if len(results) == 1 else tuple(results))
        module = torch.fx.GraphModule(self.root, self.fx, class_name=_class_name(name))
        module.eval()
        from kiln.graph.shapes import propagate

        return propagate(Graph(module, example_input, name=name, source=str(self.path)))

    def _example_input(self, value_info: Any) -> torch.Tensor:
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type not in (1, 10, 11):  # float, float16, double
            raise KilnError(
                f"{self.path}: input '{value_info.name}' is not a floating-point tensor "
                f"(ONNX elem_type {tensor_type.elem_type}); kiln imports float models"
            )
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in tensor_type.shape.dim]
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(*dims, generator=generator)


def _is_quantized_model(graph: Any) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "Quant")
               for node in graph.node)


def _outputs(graph: Any) -> list[Any]:
    """The outputs kiln builds: all of them, but only the first of a pre-quantized model
    (kiln's own QDQ export adds the integers as a second output, through casts)."""
    return list(graph.output[:1]) if _is_quantized_model(graph) else list(graph.output)


def _needed_nodes(graph: Any) -> list[Any]:
    """The nodes the built outputs depend on, in file order."""
    needed = {output.name for output in _outputs(graph)}
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    return list(reversed(keep))


def _class_name(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else "Onnx_" + cleaned


def _node_name(node: Any) -> str:
    return node.name or node.output[0]


# --- operators -------------------------------------------------------------------------


def _spatial_padding(
    imp: _Importer, node: Any, attrs: dict[str, Any], x: torch.fx.Node, kernel: list[int],
    strides: list[int], dilations: list[int],
) -> list[int]:
    """ONNX pads [begin..., end...] for this node, resolving ``auto_pad`` from shapes."""
    rank = len(kernel)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * rank)))
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    spatial = imp.example(x).shape[-rank:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _split_padding(
    imp: _Importer, node: Any, x: torch.fx.Node, pads: list[int], fill: float
) -> tuple[torch.fx.Node, tuple[int, ...]]:
    """Symmetric pads go to the layer; asymmetric ones become an explicit pad node."""
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, tuple(begins)
    torch_pads: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=True):
        torch_pads += [begin, end]
    padded = imp.call_function(_node_name(node) + "_pad", F.pad, x, tuple(torch_pads),
                               "constant", fill)
    return padded, (0,) * rank


@_handles("Conv")
def _conv(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    weight = imp.require_constant(node, 1, "the Conv weight")
    bias = imp.require_constant(node, 2, "the Conv bias")
    rank = weight.ndim - 2
    if rank not in (1, 2):
        raise UnsupportedOperatorError(f"{imp.where(node)}: only 1-D and 2-D Conv are supported")
    kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    groups = int(attrs.get("group", 1))
    pads = _spatial_padding(imp, node, attrs, x, kernel, strides, dilations)
    x, padding = _split_padding(imp, node, x, pads, 0.0)
    conv_type = nn.Conv2d if rank == 2 else nn.Conv1d
    conv = conv_type(
        weight.shape[1] * groups, weight.shape[0], tuple(kernel), stride=tuple(strides),
        padding=padding, dilation=tuple(dilations), groups=groups, bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    if node.input[1] in imp.weight_quant:  # a pre-quantized weight keeps its quantization
        conv = imp.quantizers_for(node).layer(conv, imp.weight_quant[node.input[1]], 0)
    return [imp.call_module(_node_name(node), conv, x)]


@_handles("Gemm")
def _gemm(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    a = imp.dynamic(node.input[0], node)
    if not imp.is_constant(node.input[1]):
        b = imp.dynamic(node.input[1], node)
        c = imp.dynamic(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        return [imp.call_function(_node_name(node), onnx_ops.onnx_gemm, a, b, c,
                                  alpha, beta, trans_a, trans_b)]
    weight = imp.constants[node.input[1]]
    weight = weight if trans_b else weight.T  # nn.Linear keeps [out, in]
    bias = imp.require_constant(node, 2, "the Gemm C operand") if len(node.input) > 2 else None
    out_features, in_features = weight.shape
    if trans_a:
        a = imp.call_function(_node_name(node) + "_transA", onnx_ops.onnx_transpose, a, (1, 0))
    linear = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(alpha * weight.astype(np.float32)))
        if bias is not None:
            full = np.broadcast_to(beta * bias.astype(np.float32), (1, out_features))
            if bias.size not in (1, out_features):
                raise UnsupportedOperatorError(
                    f"{imp.where(node)}: Gemm C of shape {bias.shape} is not a per-column bias"
                )
            linear.bias.copy_(torch.from_numpy(full.reshape(-1).copy()))
    if node.input[1] in imp.weight_quant:  # the output channels: axis 0 of B^T, 1 of B
        linear = imp.quantizers_for(node).layer(linear, imp.weight_quant[node.input[1]],
                                                0 if trans_b else 1)
    return [imp.call_module(_node_name(node), linear, a)]


@_handles("MatMul")
def _matmul(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.is_constant(node.input[1]) and imp.constants[node.input[1]].ndim == 2:
        weight = imp.constants[node.input[1]].astype(np.float32)
        a = imp.dynamic(node.input[0], node)
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        if node.input[1] in imp.weight_quant:
                linear = imp.quantizers_for(node).layer(linear, imp.weight_quant[node.input[1]], 1)
        return [imp.call_module(_node_name(node), linear, a)]
    a = imp.dynamic(node.input[0], node)
    b = imp.dynamic(node.input[1], node)
    return [imp.call_function(_node_name(node), torch.matmul, a, b)]


def _unary_module(factory: Callable[[], nn.Module]) -> Handler:
    def handler(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
        return [imp.call_module(_node_name(node), factory(), imp.dynamic(node.input[0], node))]

    return handler


_HANDLERS["Relu"] = _unary_module(nn.ReLU)
_HANDLERS["Sigmoid"] = _unary_module(nn.Sigmoid)
_HANDLERS["Tanh"] = _unary_module(nn.Tanh)
_HANDLERS["Dropout"] = _unary_module(nn.Identity)  # inference semantics
_HANDLERS["GlobalAveragePool"] = _unary_module(lambda: nn.AdaptiveAvgPool2d(1))


@_handles("Identity")
def _identity(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    return [imp.dynamic(node.input[0], node)]


@_handles("Clip")
def _clip(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.opset < 11:
        low = float(attrs.get("min", -np.inf))
        high = float(attrs.get("max", np.inf))
    else:
        low_value = imp.require_constant(node, 1, "the Clip min")
        high_value = imp.require_constant(node, 2, "the Clip max")
        low = float(low_value) if low_value is not None else -np.inf
        high = float(high_value) if high_value is not None else np.inf
    x = imp.dynamic(node.input[0], node)
    params = imp.quant_params.get(node.input[0])
    if params is not None:  # a clip of integers (between Q and DQ): its bounds as reals
        low = params.real(low) if np.isfinite(low) else low
        high = params.real(high) if np.isfinite(high) else high
        imp.quant_params[node.output[0]] = params
    if low == 0.0 and high == 6.0:
        module: nn.Module = nn.ReLU6()
    elif low == 0.0 and high == np.inf:
        module = nn.ReLU()
    else:
        module = nn.Hardtanh(low, high)
    return [imp.call_module(_node_name(node), module, x)]


@_handles("BatchNormalization")
def _batchnorm(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOperatorError(
            f"{imp.where(node)}: BatchNormalization in training mode (several outputs)"
        )
    x = imp.dynamic(node.input[0], node)
    scale, shift, mean, var = (
        imp.require_constant(node, i, what)
        for i, what in enumerate(["", "the BN scale", "the BN bias", "the BN mean", "the BN var"])
        if i > 0
    )
    rank = imp.example(x).dim()
    bn_type = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    bn = bn_type(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)),
                 momentum=1.0 - float(attrs.get("momentum", 0.9)))
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale.astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(shift.astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
    return [imp.call_module(_node_name(node), bn, x)]


def _pool_geometry(
    imp: _Importer, node: Any, attrs: dict[str, Any], x: torch.fx.Node
) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise UnsupportedOperatorError(f"{imp.where(node)}: only 2-D pooling is supported")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = _spatial_padding(imp, node, attrs, x, kernel, strides, dilations)
    return kernel, strides, dilations, pads


@_handles("MaxPool")
def _maxpool(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOperatorError(f"{imp.where(node)}: MaxPool with an Indices output")
    x = imp.dynamic(node.input[0], node)
    kernel, strides, dilations, pads = _pool_geometry(imp, node, attrs, x)
    rank = len(kernel)
    symmetric_ok = pads[:rank] == pads[rank:] and all(
        p <= k // 2 for p, k in zip(pads[:rank], kernel, strict=True))
    if not symmetric_ok:
        x, _ = _split_padding(imp, node, x, [p if pads[:rank] != pads[rank:] else p for p in pads],
                              float("-inf"))
        if pads[:rank] == pads[rank:]:  # symmetric but larger than torch allows
            torch_pads = [pads[1], pads[3], pads[0], pads[2]]
            x = imp.call_function(_node_name(node) + "_pad", F.pad, x, tuple(torch_pads),
                                  "constant", float("-inf"))
        padding: tuple[int, ...] = (0, 0)
    else:
        padding = tuple(pads[:rank])
    pool = nn.MaxPool2d(tuple(kernel), tuple(strides), padding, tuple(dilations),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)))
    return [imp.call_module(_node_name(node), pool, x)]


@_handles("AveragePool")
def _avgpool(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    kernel, strides, dilations, pads = _pool_geometry(imp, node, attrs, x)
    if dilations != [1, 1]:
        raise UnsupportedOperatorError(f"{imp.where(node)}: dilated AveragePool")
    include_pad = bool(attrs.get("count_include_pad", 0))
    rank = len(kernel)
    symmetric = pads[:rank] == pads[rank:] and all(
        p <= k // 2 for p, k in zip(pads[:rank], kernel, strict=True))
    if not symmetric:
        if not include_pad and any(pads):
            return [imp.call_function(
                _node_name(node), onnx_ops.onnx_avgpool_exclude_pad, x, tuple(kernel),
                tuple(strides), tuple(pads), bool(attrs.get("ceil_mode", 0)))]
        x, _ = _split_padding(imp, node, x, pads, 0.0)
        padding: tuple[int, ...] = (0, 0)
    else:
        padding = tuple(pads[:rank])
    pool = nn.AvgPool2d(tuple(kernel), tuple(strides), padding,
                        ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include_pad)
    return [imp.call_module(_node_name(node), pool, x)]


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@_handles(*_BINARY)
def _binary(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    if imp.opset < 7 and attrs.get("broadcast"):
        raise UnsupportedOperatorError(f"{imp.where(node)}: legacy (opset < 7) broadcasting")
    a = imp.dynamic(node.input[0], node)
    b = imp.dynamic(node.input[1], node)
    return [imp.call_function(_node_name(node), _BINARY[node.op_type], a, b)]


@_handles("Sum")
def _sum(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    inputs = [imp.dynamic(name, node) for name in node.input]
    if len(inputs) == 2:
        return [imp.call_function(_node_name(node), torch.add, *inputs)]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_sum, *inputs)]


@_handles("Concat")
def _concat(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    inputs = [imp.dynamic(name, node) for name in node.input]
    return [imp.call_function(_node_name(node), torch.cat, inputs, int(attrs.get("axis", 0)))]


@_handles("Flatten")
def _flatten(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    axis = int(attrs.get("axis", 1))
    if axis == 1:
        return [imp.call_function(_node_name(node), torch.flatten, x, 1)]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_flatten, x, axis)]


@_handles("Reshape")
def _reshape(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    if imp.opset < 5:
        shape = [int(s) for s in attrs["shape"]]
    else:
        shape = [int(s) for s in imp.require_constant(node, 1, "the Reshape target shape")]
    allowzero = int(attrs.get("allowzero", 0))
    example = imp.example(x)
    # Batch-polymorphism (see the module docstring): a leading 1 follows the batch.
    if shape and shape[0] == 1 and example.dim() >= 1 and example.shape[0] == 1:
        rest = shape[1:]
        if -1 in rest:
            resolved = onnx_ops.onnx_reshape(example, tuple(shape), allowzero).shape[1:]
            rest = list(resolved)
        shape = [-1, *rest]
    return [imp.call_function(_node_name(node), onnx_ops.onnx_reshape, x, tuple(shape),
                              allowzero)]


@_handles("Softmax")
def _softmax(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    legacy = imp.opset < 13
    axis = int(attrs.get("axis", 1 if legacy else -1))
    return [imp.call_function(_node_name(node), onnx_ops.onnx_softmax, x, axis, legacy)]


@_handles("Transpose")
def _transpose(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    perm = tuple(attrs["perm"]) if "perm" in attrs else None
    return [imp.call_function(_node_name(node), onnx_ops.onnx_transpose, x, perm)]


@_handles("LRN")
def _lrn(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    # ONNX and torch both divide alpha by size: b = a / (bias + alpha/size * sum a^2)^beta.
    lrn = nn.LocalResponseNorm(int(attrs["size"]), alpha=float(attrs.get("alpha", 1e-4)),
                               beta=float(attrs.get("beta", 0.75)), k=float(attrs.get("bias", 1.0)))
    return [imp.call_module(_node_name(node), lrn, imp.dynamic(node.input[0], node))]


@_handles("Pad")
def _pad(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    x = imp.dynamic(node.input[0], node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if imp.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in imp.require_constant(node, 1, "the Pad amounts")]
        constant = imp.require_constant(node, 2, "the Pad value")
        value = float(constant) if constant is not None else 0.0
    params = imp.quant_params.get(node.input[0])
    if params is not None:  # padding integers (between Q and DQ): the pad value as a real
        value = params.real(value)
        imp.quant_params[node.output[0]] = params
    rank = len(pads) // 2
    torch_pads: list[int] = []
    for begin, end in zip(reversed(pads[:rank]), reversed(pads[rank:]), strict=True):
        torch_pads += [begin, end]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise UnsupportedOperatorError(f"{imp.where(node)}: Pad mode '{mode}'")
    if torch_mode == "constant":
        return [imp.call_function(_node_name(node), F.pad, x, tuple(torch_pads), "constant",
                                  value)]
    return [imp.call_function(_node_name(node), F.pad, x, tuple(torch_pads), torch_mode)]


@_handles("QuantizeLinear")
def _quantize_linear(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    return quantize_node(imp, node, linear_params(imp, node, "QuantizeLinear"))


@_handles("DequantizeLinear")
def _dequantize_linear(imp: _Importer, node: Any, attrs: dict[str, Any]
                       ) -> list[torch.fx.Node]:
    """The identity in a float graph: the values are already the dequantized ones."""
    params = imp.quant_params.get(node.input[0])
    if params is None:
        raise UnsupportedOperatorError(f"{imp.where(node)}: DequantizeLinear of integers that "
                                       "no QuantizeLinear made (computed in integers)")
    if not same_params(params, linear_params(imp, node, "DequantizeLinear")):
        raise UnsupportedOperatorError(f"{imp.where(node)}: reads integers back with another "
                                       "scale or zero point than they were quantized with")
    return [imp.dynamic(node.input[0], node)]


@_handles("Quant")
def _qonnx_quant(imp: _Importer, node: Any, attrs: dict[str, Any]) -> list[torch.fx.Node]:
    rank = imp.example(imp.dynamic(node.input[0], node)).dim()
    inputs = [None] + [imp.require_constant(node, i, what) for i, what in
                       ((1, "the Quant scale"), (2, "the Quant zero point"),
                        (3, "the Quant bit width"))]
    return quantize_node(imp, node, qonnx_params(inputs, attrs, rank))


SUPPORTED_ONNX_OPS = frozenset(_HANDLERS) | {"Constant", "ConstantOfShape"}
