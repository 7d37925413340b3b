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
from torch import nn

from kiln.errors import KilnError, UnsupportedOperatorError
from kiln.graph import onnx_quant
from kiln.graph.core import Graph
from kiln.graph.onnx_handlers import HANDLERS, SUPPORTED_ONNX_OPS
from kiln.graph.onnx_load import load_onnx_model
from kiln.graph.onnx_quant import (
    QuantizerFactory,
)
from kiln.graph.shapes import propagate
from kiln.onnx_constants import attributes, fold_constant_node, tensor_to_numpy


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


__all__ = ["SUPPORTED_ONNX_OPS", "from_onnx"]


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
            if node.op_type not in HANDLERS or not domain_ok:
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
            outputs = HANDLERS[node.op_type](self, node, attributes(node))
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
