"""The scheduler's view of a network: every operator that takes time on some core (MAC
layers, pooling, element-wise), its feature-map geometry and the edges between them.

Operators that only rename data (Flatten, Reshape, Identity, Dropout) are dropped and their
consumers read the producer directly; a constant spatial Pad in front of convolutions or
pools becomes their padding (the rows they read are what matters here, not the fill
value). A MAC layer keeps its loop nest (:class:`Layer`) so each tile is priced by kiln's
mapper.

    >>> graph = graph_from_onnx("resnet18.onnx")        # doctest: +SKIP
    >>> graph.nodes[0].name, graph.nodes[0].out_rows    # doctest: +SKIP
    ('/conv1/Conv', 112)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import ConfigError, ModelFormatError
from kiln.hw.schedule.system import MAC_OPERATORS
from kiln.hw.workload import Layer, Workload, workload_from_onnx
from kiln.onnx_constants import attributes, fold_constant_subgraphs, infer_shapes, tensor_to_numpy

PASSTHROUGH = ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze")
GLOBAL_OPERATORS = ("GlobalAveragePool", "GlobalMaxPool")
POOL_OPERATORS = ("MaxPool", "AveragePool")


@dataclass
class Node:
    """One scheduled operator. Feature maps are channels × rows × columns (a matrix product's
    output is ``out_channels`` features, one row). ``needs_all_rows``: each output row reads
    every input row (matrix products after a flatten, global pooling)."""

    name: str
    op_type: str
    inputs: list[str]
    out_channels: int
    out_rows: int
    out_cols: int
    in_channels: int
    in_rows: int
    in_cols: int
    kernel_rows: int = 1
    stride_rows: int = 1
    pad_top: int = 0
    dilation_rows: int = 1
    channelwise: bool = False  # output channel k reads only input channel k
    groups: int = 1  # a grouped convolution: output group g reads input group g
    needs_all_rows: bool = False
    layer: Layer | None = None
    weight_count: int = 0
    ops_per_output: int = 1  # SIMD operations per output element (kernel area of a pool)
    act_bits: int = 8
    weight_bits: int = 8

    @property
    def is_mac(self) -> bool:
        return self.layer is not None

    @property
    def output_bits(self) -> int:
        return self.out_channels * self.out_rows * self.out_cols * self.act_bits

    def rows_read(self, first: int, last: int) -> list[int]:
        """Exactly the input rows output rows ``[first, last)`` read, sorted (with a stride
        larger than the window or a dilation, the span has rows nobody reads)."""
        if self.needs_all_rows:
            return list(range(self.in_rows))
        read = {row * self.stride_rows - self.pad_top + tap * self.dilation_rows
                for row in range(first, last) for tap in range(self.kernel_rows)}
        return sorted(r for r in read if 0 <= r < self.in_rows)

    def input_channels_for(self, channels: tuple[int, int]) -> tuple[int, int] | None:
        """The input channels output channels ``[a, b)`` read: their own (channel-wise),
        their groups' (a grouped convolution), or None: all of them."""
        if self.channelwise:
            return channels
        if self.groups > 1 and self.out_channels % self.groups == 0 and \
                self.in_channels % self.groups == 0:
            out_per_group = self.out_channels // self.groups
            in_per_group = self.in_channels // self.groups
            first, last = channels[0] // out_per_group, (channels[1] - 1) // out_per_group + 1
            return first * in_per_group, last * in_per_group
        return None

    def input_rows(self, first: int, last: int) -> tuple[int, int]:
        """The input rows ``[a, b)`` that output rows ``[first, last)`` read."""
        if self.needs_all_rows:
            return 0, self.in_rows
        start = first * self.stride_rows - self.pad_top
        end = (last - 1) * self.stride_rows - self.pad_top + (self.kernel_rows - 1) * (
            self.dilation_rows) + 1
        return max(0, start), min(self.in_rows, end)


@dataclass
class Graph:
    """Nodes in a topological order and the names of the network's inputs."""

    name: str
    nodes: list[Node]
    source: str = "<graph>"
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {node.name: i for i, node in enumerate(self.nodes)}

    def node(self, name: str) -> Node:
        return self.nodes[self.index[name]]

    def consumers(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for producer in node.inputs:
                result[producer].append(node.name)
        return result


def _topological(nodes: list[Node], source: str) -> list[Node]:
    """Nodes ordered so that each comes after its producers; a cycle is an error."""
    by_name = {node.name: node for node in nodes}
    pending = {node.name: {p for p in node.inputs if p in by_name} for node in nodes}
    ordered: list[Node] = []
    ready = [node.name for node in nodes if not pending[node.name]]
    done: set[str] = set()
    while ready:
        name = ready.pop(0)
        done.add(name)
        ordered.append(by_name[name])
        for node in nodes:
            if node.name not in done and node.name not in ready and name in pending[node.name]:
                pending[node.name].discard(name)
                if not pending[node.name]:
                    ready.append(node.name)
    if len(ordered) != len(nodes):
        stuck = sorted(n.name for n in nodes if n.name not in done)
        raise ModelFormatError(f"{source}: the workload has a cycle through "
                               f"{', '.join(stuck[:4])}")
    return ordered


def _chw(shape: list[int] | None) -> tuple[int, int, int]:
    if not shape:
        return 1, 1, 1
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], shape[2], 1
    return (shape[-1] if shape else 1), 1, 1


ELEMENT_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 10: 16, 11: 64, 16: 16}


def graph_from_onnx(path: str | Path, act_bits: int = 8, weight_bits: int = 8,
                    precision: str = "fixed") -> Graph:
    """Every operator of an ONNX file that does work, with shapes (inferred) and edges.

    ``precision="fixed"``: activations and weights move and are stored with ``act_bits`` and
    ``weight_bits``; ``"onnx"``: with the bits of their ONNX element types (Stream's
    convention: a float32 model moves 32-bit words), while MACs are still priced at
    ``act_bits``/``weight_bits`` as the cores compute them."""
    import onnx

    path = Path(path)
    if precision not in ("fixed", "onnx"):
        raise ConfigError(f"precision '{precision}': choose fixed or onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises several unrelated types for a bad file
        raise ModelFormatError(f"{path}: cannot read ONNX model: {error}") from None
    _check_acyclic(model.graph, path)
    try:
        model = infer_shapes(model)
    except Exception as error:  # onnx raises several unrelated types for a bad file
        raise ModelFormatError(f"{path}: cannot read ONNX model: {error}") from None
    layers = {layer.name: layer for layer in workload_from_onnx(path, model).layers}
    element_bits = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(
            model.graph.output):
        element_bits[value.name] = ELEMENT_BITS.get(value.type.tensor_type.elem_type, 8)
    for init in model.graph.initializer:
        element_bits[init.name] = ELEMENT_BITS.get(init.data_type, 8)
    shapes: dict[str, list[int]] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(
            model.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    # Constants: initializers and what is computed from them alone (weights made by a
    # ConstantOfShape, a Constant node): not network data, and not work for a core.
    for onnx_node in model.graph.node:
        if all(t in initializers for t in onnx_node.input if t):
            for output in onnx_node.output:
                initializers[output] = shapes.get(output, [])
    producer: dict[str, str] = {}  # tensor → scheduled node that makes it
    flattened: set[str] = set()  # tensors that went through a flatten/reshape
    padded = _foldable_pads(model, initializers, shapes)  # Pad output → (its input, top rows)
    nodes: list[Node] = []
    for position, onnx_node in enumerate(model.graph.node):
        name = onnx_node.name or f"{onnx_node.op_type}_{position}"
        op = onnx_node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in onnx_node.attribute}
        data_inputs = [t for t in onnx_node.input if t and t not in initializers]
        if not data_inputs:
            continue  # computes a constant
        folded_pad = 0
        if op == "Pad" and onnx_node.output[0] in padded:
            continue  # its consumers read its input with more padding
        if data_inputs[0] in padded:
            data_inputs[0], folded_pad = padded[data_inputs[0]]
        if op in PASSTHROUGH:
            for output in onnx_node.output:
                if data_inputs and data_inputs[0] in producer:
                    producer[output] = producer[data_inputs[0]]
                if op in ("Flatten", "Reshape", "Squeeze") or (
                        data_inputs and data_inputs[0] in flattened):
                    flattened.add(output)
            continue
        inputs = [producer[t] for t in data_inputs if t in producer]
        out_c, out_h, out_w = _chw(shapes.get(onnx_node.output[0]))
        first = data_inputs[0] if data_inputs else None
        in_c, in_h, in_w = _chw(shapes.get(first) if first else None)
        node = Node(name, op, inputs, out_c, out_h, out_w, in_c, in_h, in_w,
                    act_bits=act_bits, weight_bits=weight_bits)
        if precision == "onnx":
            node.act_bits = element_bits.get(onnx_node.output[0], act_bits)
            weights = [t for t in onnx_node.input[1:2] if t in initializers]
            node.weight_bits = element_bits.get(weights[0], weight_bits) if weights else \
                node.act_bits
        if op in MAC_OPERATORS:
            layer = layers.get(name)
            if layer is None:
                raise ModelFormatError(f"{path}: node '{name}': cannot read its loop nest")
            node.layer = layer.with_precision(W=weight_bits, I=act_bits, O=2 * act_bits,
                                              O_final=act_bits)
            if "OY" in layer.sizes:
                kernel = list(attrs.get("kernel_shape") or (initializers.get(
                    onnx_node.input[1]) or [0, 0, 1, 1])[2:])
                node.kernel_rows = int(kernel[0])
                node.stride_rows = int((attrs.get("strides") or [1, 1])[0])
                node.dilation_rows = int((attrs.get("dilations") or [1, 1])[0])
                node.pad_top = int((attrs.get("pads") or [0, 0, 0, 0])[0]) + folded_pad
                if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID",
                                                             "VALID"):
                    total = max(0, (out_h - 1) * node.stride_rows + (
                        node.kernel_rows - 1) * node.dilation_rows + 1 - in_h)
                    node.pad_top = total // 2 + folded_pad
                groups = int(attrs.get("group", 1))
                node.channelwise = groups > 1 and groups == in_c == out_c
                node.groups = groups
                node.weight_count = out_c * (in_c // groups) * math.prod(kernel)
            else:  # a matrix product: its rows are the output's rows, no halo
                out_c = layer.sizes["K"]
                node.out_channels, node.in_channels = out_c, layer.sizes["C"]
                node.out_rows, node.out_cols = layer.sizes["D"], 1
                node.in_rows, node.in_cols = layer.sizes["D"], 1
                node.weight_count = layer.sizes["C"] * layer.sizes["K"]
            if first in flattened:
                node.needs_all_rows = True
                node.in_rows = max(1, _chw(shapes.get(first))[1])
        elif op in POOL_OPERATORS:
            kernel = list(attrs.get("kernel_shape", [1, 1]))
            node.kernel_rows = int(kernel[0])
            node.stride_rows = int((attrs.get("strides") or [1, 1])[0])
            node.dilation_rows = int((attrs.get("dilations") or [1, 1])[0])
            node.pad_top = int((attrs.get("pads") or [0, 0, 0, 0])[0]) + folded_pad
            node.channelwise = True
            node.ops_per_output = math.prod(kernel)
        elif op in GLOBAL_OPERATORS:
            node.channelwise, node.needs_all_rows = True, True
            node.ops_per_output = in_h * in_w
        elif op in ("Concat", "LRN", "Softmax"):
            node.channelwise = False  # reads other channels than its own
        else:  # element-wise: one operation per output element and input
            node.channelwise = True
            node.ops_per_output = max(1, len(data_inputs) - 1)
        nodes.append(node)
        for output in onnx_node.output:
            producer[output] = name
    if not nodes:
        raise ModelFormatError(f"{path}: no operator to schedule")
    return Graph(path.stem, _topological(nodes, str(path)), str(path))


def _foldable_pads(model, initializers: dict, shapes: dict[str, list[int]]
                   ) -> dict[str, tuple[str, int]]:
    """Pads that only add rows and columns (constant mode, no batch or channel padding, no
    cropping) and feed only convolutions and pools: output tensor → (input tensor, rows
    added on top). Their pads may come from a constant subgraph (PyTorch's F.pad)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    folded_constants: dict | None = None

    def value(tensor: str):
        """A constant tensor's value: an initializer, or folded from constants."""
        nonlocal folded_constants
        for init in model.graph.initializer:
            if init.name == tensor:
                return tensor_to_numpy(init)
        if tensor not in initializers:
            return None
        if folded_constants is None:  # folded once, only for a Pad that needs it
            folded_constants = {init.name: init for init in
                                fold_constant_subgraphs(model).graph.initializer}
        init = folded_constants.get(tensor)
        return None if init is None else tensor_to_numpy(init)

    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, set()).add(node.op_type)
    folded = {}
    for node in model.graph.node:
        if node.op_type != "Pad" or not node.input or node.input[0] in initializers:
            continue
        attrs = attributes(node)
        mode = attrs.get("mode", b"constant")
        if mode not in (b"constant", "constant"):
            continue
        pads = attrs.get("pads") if opset < 11 else (
            value(node.input[1]) if len(node.input) > 1 and node.input[1] else None)
        rank = len(shapes.get(node.input[0]) or [])
        if pads is None or rank != 4 or len(list(pads)) != 8:
            continue
        pads = [int(p) for p in list(pads)]
        if any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
            continue
        if consumers.get(node.output[0], set()) <= {"Conv", *POOL_OPERATORS} and \
                consumers.get(node.output[0]):
            folded[node.output[0]] = (node.input[0], pads[2])
    return folded


def _check_acyclic(graph, path: Path) -> None:
    """ONNX nodes must come after what they read; a cycle is named instead of looping."""
    made_by = {out: index for index, node in enumerate(graph.node) for out in node.output}
    later = {}
    for index, node in enumerate(graph.node):
        reads = [made_by[t] for t in node.input if t in made_by]
        if any(source >= index for source in reads):
            later[index] = reads
    if not later:
        return
    # Something reads a later output: follow those edges to see whether they close a loop.
    edges = {i: [made_by[t] for t in n.input if t in made_by] for i, n in enumerate(graph.node)}
    state: dict[int, int] = {}

    def visit(start: int) -> list[int] | None:
        stack = [(start, iter(edges[start]))]
        path_nodes = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path_nodes.pop()
                continue
            if state.get(child) == 1:
                return path_nodes[path_nodes.index(child):]
            if child not in state:
                state[child] = 1
                stack.append((child, iter(edges[child])))
                path_nodes.append(child)
        return None

    for start in later:
        if start not in state:
            loop = visit(start)
            if loop:
                names = [graph.node[i].name or f"{graph.node[i].op_type}_{i}" for i in loop]
                raise ModelFormatError(f"{path}: the workload has a cycle through "
                                       f"{' -> '.join(names)}")
    raise ModelFormatError(f"{path}: nodes are not in topological order (node "
                           f"'{graph.node[min(later)].name}' reads an output made after it)")


def graph_from_workload(workload: Workload) -> Graph:
    """A kiln :class:`Workload` (MAC layers only; pooling is not part of it) as a graph."""
    nodes = []
    known = {layer.name for layer in workload.layers}
    for layer in workload.layers:
        inputs = [name for name in layer.inputs_from if name in known]
        if "OY" in layer.sizes:
            sizes = layer.sizes
            stride, dilation = layer.relations["IY"][1], layer.relations["IY"][3]
            in_rows = layer.pr_sizes.get("IY", sizes["OY"] * stride)
            span = (sizes["OY"] - 1) * stride + (sizes["FY"] - 1) * dilation + 1
            node = Node(layer.name, layer.op_type, inputs, sizes["K"] * sizes.get("G", 1),
                        sizes["OY"], sizes["OX"], sizes["C"] * sizes.get("G", 1), in_rows,
                        layer.pr_sizes.get("IX", sizes["OX"]), sizes["FY"], stride,
                        max(0, (span - in_rows) // 2), dilation,
                        channelwise=sizes.get("G", 1) > 1 and sizes["C"] == 1 and
                        sizes["K"] == 1, groups=sizes.get("G", 1), layer=layer,
                        weight_count=sizes["K"] * sizes["C"] * sizes["FY"] * sizes["FX"] *
                        sizes.get("G", 1))
        elif {"C", "K"} <= set(layer.sizes):
            rows = layer.sizes.get("D", 1)
            node = Node(layer.name, layer.op_type, inputs, layer.sizes["K"], rows, 1,
                        layer.sizes["C"], rows, 1, needs_all_rows=True, layer=layer,
                        weight_count=layer.sizes["C"] * layer.sizes["K"])
        else:
            raise ConfigError(f"layer '{layer.name}': the scheduler reads convolutions and "
                              "matrix products")
        node.act_bits = layer.precision.get("I", 8)
        node.weight_bits = layer.precision.get("W", 8)
        nodes.append(node)
    return Graph(workload.name, _topological(nodes, workload.name), workload.name)
