"""``quantize`` and ``calibrate``: the passes that turn a float graph into a quantized one."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx
from torch import nn

from kiln.errors import KilnError
from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.graph.shapes import propagate
from kiln.passes.equalize import equalize
from kiln.passes.fuse import fuse_batchnorm
from kiln.passes.normalize import normalize
from kiln.quant.config import QUANTIZABLE_OPS, LayerQuant, QuantConfig
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.layers import QuantConv2d, QuantLinear

#: Ops that a layer's output passes through before its output quantizer (the fused tail).
TAIL_KINDS = {OpKind.BATCHNORM, OpKind.RELU, OpKind.RELU6, OpKind.CLIP}


class UnmatchedRuleWarning(UserWarning):
    """A quantization rule matched no layer (usually a typo in a name or regex)."""


def quantize(graph: Graph, config: QuantConfig | dict[str, Any]) -> Graph:
    """Return a quantized copy of ``graph`` (fake-quant modules at every point the config
    names). The graph is normalized first (:func:`kiln.passes.normalize.normalize`: bias and
    scale nodes folded into their layers), BatchNorm is folded unless the config says
    ``fold_batchnorm: false``, and with ``equalize: true`` the layers' channel ranges are
    evened out first (:func:`kiln.passes.equalize.equalize`).
    Activation quantizers need :func:`calibrate` before the graph runs.

    >>> from kiln.models import build_graph
    >>> q = quantize(build_graph("jsc-three-linear"), {"default": {"weight": {"bits": 4}}})
    >>> type(q.submodule("_2")).__name__
    'QuantLinear'
    """
    config = QuantConfig.parse(config)
    result = normalize(graph)  # biases written as Add nodes, Identity, Dropout, ...
    result = fuse_batchnorm(result) if config.fold_batchnorm else result
    if config.equalize:
        result = equalize(result)
    module = result.module
    infos = {info.name: info for info in result.nodes()}
    compute = [n for n in module.graph.nodes if infos[n.name].op in QUANTIZABLE_OPS]
    layers = [(n.name, infos[n.name].op) for n in compute]
    adds = {n.name: config.layer(n.name, OpKind.ADD) for n in module.graph.nodes
            if infos[n.name].op is OpKind.ADD and len(n.all_input_nodes) == 2}
    unmatched = config.unmatched_rules(layers, [(name, OpKind.ADD) for name in adds])
    if unmatched:
        warnings.warn("quantization rules that match no layer: " + ", ".join(unmatched),
                      UnmatchedRuleWarning, stacklevel=2)
    first_input_spec = None
    last_output_spec = None
    for index, node in enumerate(compute):
        layer_config = config.layer(node.name, infos[node.name].op,
                                    is_last=index == len(compute) - 1)
        if first_input_spec is None and layer_config.input is not None:
            first_input_spec = layer_config.input
        if index == len(compute) - 1:
            last_output_spec = layer_config.output
        if not layer_config.is_empty:
            _quantize_node(module, node, infos, layer_config)
    if first_input_spec is not None:
        _quantize_network_input(module, first_input_spec)
        _quantize_add_inputs(module, infos, first_input_spec, adds)
    _quantize_add_outputs(module, adds)
    if last_output_spec is not None:
        _quantize_network_output(module, infos, last_output_spec)
    module.graph.lint()
    module.recompile()
    return propagate(result)


def _quantize_node(module: torch.fx.GraphModule, node: torch.fx.Node,
                   infos: dict[str, Any], layer: LayerQuant) -> None:
    already = node.op == "call_module" and isinstance(
        module.get_submodule(node.target), (QuantConv2d, QuantLinear))
    if already:  # a pre-quantized model's layer keeps its own weight quantization
        pass
    elif node.op == "call_module" and (layer.weight is not None or layer.bias is not None):
        float_layer = module.get_submodule(node.target)
        if isinstance(float_layer, nn.Conv2d):
            quantized: nn.Module = QuantConv2d.from_float(float_layer, layer.weight, layer.bias)
        elif isinstance(float_layer, nn.Linear):
            quantized = QuantLinear.from_float(float_layer, layer.weight, layer.bias)
        else:
            raise KilnError(f"layer '{node.name}': cannot quantize weights of "
                            f"{type(float_layer).__name__}")
        _replace_submodule(module, str(node.target), quantized.train(float_layer.training))
    if layer.input is not None:
        inputs = node.all_input_nodes if infos[node.name].op is OpKind.MATMUL else [node.args[0]]
        for position, source in enumerate(inputs):
            if _is_activation_quantizer(module, source):
                continue  # already quantized (a pre-quantized model's quantizer)
            shared = [user for user in source.users if user is not node
                      and _is_activation_quantizer(module, user)
                      and module.get_submodule(user.target).spec == layer.input]
            if shared:  # another layer reads the same tensor at the same width: one integer
                node.replace_input_with(source, shared[0])
                continue
            name = f"{node.name}_input{position if len(inputs) > 1 else ''}_quant"
            module.add_submodule(name, FakeQuantize(layer.input, "activation"))
            with module.graph.inserting_before(node):
                quant_node = module.graph.call_module(name, (source,))
            node.replace_input_with(source, quant_node)
    if layer.output is not None:
        tail = output_tail(node, infos)
        if len(tail.users) == 1 and _is_activation_quantizer(module, next(iter(tail.users))):
            return  # the output is quantized already
        name = f"{tail.name}_output_quant"
        module.add_submodule(name, FakeQuantize(layer.output, "activation"))
        with module.graph.inserting_after(tail):
            quant_node = module.graph.call_module(name, (tail,))
        tail.replace_all_uses_with(quant_node, delete_user_cb=lambda user: user is not quant_node)


def _quantize_network_input(module: torch.fx.GraphModule, spec: Any) -> None:
    """Quantize the network input itself when it does not go straight into a quantizer
    (e.g. a BatchNorm comes first): integer-only inference starts from quantized inputs."""
    for placeholder in [n for n in module.graph.nodes if n.op == "placeholder"]:
        users = list(placeholder.users)
        if users and all(u.op == "call_module" and
                         isinstance(module.get_submodule(u.target), FakeQuantize)
                         for u in users):
            continue
        module.add_submodule("input_quant", FakeQuantize(spec, "activation"))
        with module.graph.inserting_after(placeholder):
            quant_node = module.graph.call_module("input_quant", (placeholder,))
        placeholder.replace_all_uses_with(
            quant_node, delete_user_cb=lambda user, new=quant_node: user is not new)


#: Ops whose output is their input's integers rearranged or selected: a quantized input
#: makes a quantized output.
_VALUE_PRESERVING = {OpKind.MAXPOOL, OpKind.FLATTEN, OpKind.RESHAPE}


def _quantize_network_output(module: torch.fx.GraphModule, infos: dict[str, Any],
                             spec: Any) -> None:
    """The network's output quantized as the last layer's output rule says, also when the
    last layer is not what the network ends with (a residual add, then a max pool):
    looking back from the output through pools and reshapes, the first other node gets
    the quantizer."""
    output = next(n for n in module.graph.nodes if n.op == "output")
    for source in list(output.all_input_nodes):
        node = source
        while node.name in infos and infos[node.name].op in _VALUE_PRESERVING and \
                node.all_input_nodes:
            node = node.all_input_nodes[0]
        if _is_activation_quantizer(module, node) or node.op == "placeholder":
            continue
        name = f"{node.name}_output_quant"
        module.add_submodule(name, FakeQuantize(spec, "activation"))
        with module.graph.inserting_after(node):
            quant_node = module.graph.call_module(name, (node,))
        node.replace_all_uses_with(quant_node, delete_user_cb=lambda user, new=quant_node:
                                   user is not new)


def _is_activation_quantizer(module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    return node.op == "call_module" and isinstance(module.get_submodule(node.target),
                                                   FakeQuantize)


#: Ops that integer inference runs on quantized inputs besides conv/linear layers.
_INTEGER_INPUT_KINDS = {OpKind.ADD, OpKind.AVGPOOL, OpKind.GLOBAL_AVGPOOL}


def _quantize_add_inputs(module: torch.fx.GraphModule, infos: dict[str, Any], spec: Any,
                         add_rules: dict[str, LayerQuant]) -> None:
    """Residual adds and average pools read quantized tensors: a tensor that a layer's
    input quantizer already quantizes is read through that quantizer (so every consumer
    sees the same integers, as integer hardware does); any other input gets a quantizer
    of its own, at the add's ``input`` rule where the config has one for it."""
    adds = [n for n in module.graph.nodes
            if n.name in infos and infos[n.name].op in _INTEGER_INPUT_KINDS
            and (infos[n.name].op is not OpKind.ADD or len(n.all_input_nodes) == 2)]
    for add in adds:
        for index, source in enumerate(list(add.all_input_nodes)):
            if _is_activation_quantizer(module, source):
                continue
            existing = [u for u in source.users if u is not add and
                        _is_activation_quantizer(module, u)]
            if existing:
                add.replace_input_with(source, existing[0])
                continue
            name = f"{add.name}_input{index}_quant"
            own = add_rules.get(add.name)
            module.add_submodule(name, FakeQuantize(own.input if own is not None and
                                                    own.input is not None else spec,
                                                    "activation"))
            with module.graph.inserting_before(add):
                quant_node = module.graph.call_module(name, (source,))
            add.replace_input_with(source, quant_node)


def _quantize_add_outputs(module: torch.fx.GraphModule, adds: dict[str, LayerQuant]) -> None:
    """An add whose rule gives an ``output`` gets its output quantized so (otherwise its
    readers' input quantizers decide)."""
    nodes = {n.name: n for n in module.graph.nodes}
    for name, layer in adds.items():
        if layer.output is None:
            continue
        add = nodes[name]
        quantizer = f"{name}_output_quant"
        module.add_submodule(quantizer, FakeQuantize(layer.output, "activation"))
        with module.graph.inserting_after(add):
            quant_node = module.graph.call_module(quantizer, (add,))
        add.replace_all_uses_with(quant_node, delete_user_cb=lambda user, new=quant_node:
                                  user is not new)


def output_tail(node: torch.fx.Node, infos: dict[str, Any]) -> torch.fx.Node:
    """The last node of ``node``'s fused tail: following single users through BatchNorm,
    ReLU, ReLU6 and Clip."""
    tail = node
    while len(tail.users) == 1:
        user = next(iter(tail.users))
        if user.name not in infos or infos[user.name].op not in TAIL_KINDS:
            break
        tail = user
    return tail


def _replace_submodule(module: torch.fx.GraphModule, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def quantizers(graph: Graph) -> list[tuple[str, FakeQuantize]]:
    """Every ``FakeQuantize`` of the graph with its qualified module name."""
    return [(name, m) for name, m in graph.module.named_modules() if isinstance(m, FakeQuantize)]


def calibration_batches(data: Any, *, batches: int = 8, batch_size: int = 256, seed: int = 0
                        ) -> list[torch.Tensor]:
    """The inputs calibration sees: ``batches`` batches of a dataset's training split
    (shuffled with ``seed``), or of a tensor of inputs."""
    if isinstance(data, torch.Tensor):
        return list(torch.split(data, batch_size))[:batches]
    chunks = []
    for x, _ in data.loader("train", batch_size=batch_size, seed=seed):
        chunks.append(x)
        if len(chunks) >= batches:
            break
    return chunks


def layer_inputs(module: torch.nn.Module, layer: torch.nn.Module,
                 chunks: list[torch.Tensor]) -> torch.Tensor:
    """What ``layer`` receives while ``module`` (in eval mode) runs ``chunks``, concatenated
    along the batch."""
    inputs: list[torch.Tensor] = []

    def keep(_layer: torch.nn.Module, args: tuple, _output: torch.Tensor) -> None:
        inputs.append(args[0].detach())

    handle = layer.register_forward_hook(keep)
    try:
        with torch.no_grad():
            for chunk in chunks:
                module(chunk)
    finally:
        handle.remove()
    return torch.cat(inputs)


def calibrate(graph: Graph, data: Any, *, batches: int = 8, batch_size: int = 256,
              seed: int = 0) -> Graph:
    """Return a copy of ``graph`` whose activation quantizers have ranges set from data.

    ``data`` is a :class:`~kiln.data.Dataset` (its training split is used, shuffled with
    ``seed``) or a tensor of inputs. Each quantizer applies its own range method
    (min-max, percentile, MSE, entropy) to what it observed over ``batches`` batches.
    """
    result = graph.copy()
    activation = [q for _, q in quantizers(result) if q.role == "activation"]
    chunks = calibration_batches(data, batches=batches, batch_size=batch_size, seed=seed)
    module = result.module
    was_training = module.training
    module.eval()
    for quantizer in activation:
        quantizer.start_observing()
    completed = False
    try:
        # One pass per quantization depth would be exact for chained quantizers; observing
        # unquantized activations (all quantizers observe in one pass) is the standard
        # post-training calibration and what the integer lowering assumes.
        with torch.no_grad():
            for chunk in chunks:
                module(chunk)
        completed = True
    finally:
        for quantizer in activation:
            if quantizer.observing and completed:
                quantizer.finish_observing()
            # Interrupted (Ctrl-C, an error): stop observing without freezing a range, so
            # the interruption, not "saw no data", is what the user sees.
            quantizer.observing = False
        module.train(was_training)
    return result
