"""Workloads: one loop nest per layer, as ZigZag describes them.

A :class:`Layer` is an equation ``O[..] += A[..] * B[..]`` over named loop dimensions
(``B K G OX OY C FX FY`` for a convolution, ``D C K`` for a matrix product), operand
precisions in bits (``O`` for partial sums, ``O_final`` for finished outputs) and, for a
convolution's input, the *partially relevant* dimensions ``IX = stride*OX + dilation*FX``.

Workloads come from ZigZag workload YAML, from any ONNX file (Conv, Gemm, MatMul are
costed) or from a kiln Graph (its conv/linear/matmul layers, with widths taken from a
quantized graph: :mod:`kiln.hw.workload_sources`). Pooling and element-wise layers have no
MACs; they are listed in ``Workload.not_costed`` with their names so a report can say what
was left out.

    >>> from kiln.hw import load_workload
    >>> workload = load_workload("resnet18")              # doctest: +SKIP
    >>> len(workload.layers), workload.layers[0].sizes     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, ModelFormatError
from kiln.strict_yaml import load_yaml_file

DEFAULT_LINKS = {"O": "O", "W": "I2", "I": "I1"}
_EQUATION = re.compile(
    r"^\s*(\w)((?:\[\w+\])+)\s*\+?=\s*(\w)((?:\[\w+\])+)\s*[*+]\s*(\w)((?:\[\w*\])+)\s*$"
)
_RELATION = re.compile(
    r"^\s*(\w+)\s*=\s*(?:(\d+)\s*\*\s*)?(\w+)\s*\+\s*(?:(\d+)\s*\*\s*)?(\w+)\s*$"
)


@dataclass
class Layer:
    """One layer's loop nest and operands.

    ``operand_dims`` keeps the equation's order: output first, then the two inputs.
    ``relations`` maps a partially relevant dimension to ``(dim_a, scale_a, dim_b,
    scale_b)``; ``pr_sizes`` gives its real (unpadded) extent.
    """

    name: str
    op_type: str
    sizes: dict[str, int]
    operand_dims: dict[str, list[str]]
    precision: dict[str, int]
    relations: dict[str, tuple[str, int, str, int]] = field(default_factory=dict)
    pr_sizes: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LINKS))
    inputs_from: list[str] = field(default_factory=list)

    # Read in the mapper's innermost loops: worked out once (operand_dims never changes).
    @functools.cached_property
    def operands(self) -> tuple[str, ...]:
        return tuple(self.operand_dims)

    @functools.cached_property
    def output(self) -> str:
        return self.operands[0]

    @functools.cached_property
    def inputs(self) -> tuple[str, ...]:
        return self.operands[1:]

    @property
    def macs(self) -> int:
        return math.prod(self.sizes.values())

    def with_precision(self, **bits: int) -> Layer:
        """A copy with some operand precisions changed, e.g. ``with_precision(W=4, I=4)``."""
        precision = dict(self.precision)
        precision.update(bits)
        return Layer(
            self.name,
            self.op_type,
            dict(self.sizes),
            self.operand_dims,
            precision,
            self.relations,
            self.pr_sizes,
            dict(self.links),
            list(self.inputs_from),
        )


@dataclass
class Workload:
    """The costed layers in execution order, and the layers kept out of the cost with why."""

    name: str
    layers: list[Layer]
    not_costed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


def pr_extent(scale_a: int, size_a: int, scale_b: int, size_b: int) -> int:
    """How many distinct values ``scale_a*a + scale_b*b`` takes for a < size_a, b < size_b."""
    divisor = math.gcd(scale_a, scale_b)
    return size_a * size_b - max(0, size_b - scale_a // divisor) * (size_a - scale_b // divisor)


def parse_equation(equation: str, where: str) -> dict[str, list[str]]:
    match = _EQUATION.match(equation)
    if not match:
        raise ConfigError(f"{where}: equation {equation!r} is not of the form O[..]+=I[..]*W[..]")
    operands: dict[str, list[str]] = {}
    for index in range(0, 6, 2):
        operand, dims = match.group(index + 1), match.group(index + 2)
        operands[operand] = [d.upper() for d in re.findall(r"\[(\w*)\]", dims) if d]
    return operands


def _parse_relation(text: str, where: str) -> tuple[str, tuple[str, int, str, int]]:
    match = _RELATION.match(text)
    if not match:
        raise ConfigError(f"{where}: dimension relation {text!r} is not of the form ix=2*ox+1*fx")
    target, scale_a, dim_a, scale_b, dim_b = match.groups()
    return target.upper(), (dim_a.upper(), int(scale_a or 1), dim_b.upper(), int(scale_b or 1))


def layer_from_zigzag(data: dict[str, Any], where: str) -> Layer:
    """One layer of a ZigZag workload YAML (already loaded)."""
    required = ("id", "operator_type", "equation", "loop_dims", "loop_sizes", "operand_precision")
    for key in required:
        if key not in data:
            raise ConfigError(f"{where}: missing key '{key}'")
    allowed = set(required) | {
        "name",
        "dimension_relations",
        "operand_source",
        "pr_loop_dims",
        "pr_loop_sizes",
        "padding",
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
        )
    operand_dims = parse_equation(str(data["equation"]), f"{where}.equation")
    dims = [str(d).upper() for d in data["loop_dims"]]
    sizes_list = data["loop_sizes"]
    if len(dims) != len(sizes_list):
        raise ConfigError(f"{where}: loop_dims and loop_sizes differ in length")
    sizes = {}
    for dim, size in zip(dims, sizes_list, strict=False):
        if not isinstance(size, int) or size < 1:
            raise ConfigError(
                f"{where}.loop_sizes: size of {dim} must be a whole number >= 1, got {size!r}"
            )
        sizes[dim] = size
    relations = dict(
        _parse_relation(str(r), f"{where}.dimension_relations")
        for r in data.get("dimension_relations") or []
    )
    for operand, odims in operand_dims.items():
        for dim in odims:
            if dim not in sizes and dim not in relations:
                raise ConfigError(
                    f"{where}.equation: dimension {dim} of {operand} has no loop size"
                )
    precision = {str(k): int(v) for k, v in data["operand_precision"].items()}
    for operand in operand_dims:
        if operand not in precision:
            raise ConfigError(f"{where}.operand_precision: no precision for operand {operand}")
    precision.setdefault("O_final", precision.get("O", 8))
    for key, bits in precision.items():
        if bits < 1:
            raise ConfigError(
                f"{where}.operand_precision.{key}: bit width must be >= 1, got {bits}"
            )
    pr_sizes: dict[str, int] = {}
    pr_dims = [str(d).upper() for d in data.get("pr_loop_dims") or []]
    if data.get("pr_loop_sizes"):
        pr_sizes = dict(zip(pr_dims, (int(s) for s in data["pr_loop_sizes"]), strict=False))
    padding = data.get("padding") or []
    for target, (dim_a, scale_a, dim_b, scale_b) in relations.items():
        if target not in pr_sizes:
            full = pr_extent(scale_a, sizes.get(dim_a, 1), scale_b, sizes.get(dim_b, 1))
            pads = padding[pr_dims.index(target)] if target in pr_dims and padding else (0, 0)
            pr_sizes[target] = int(full - sum(pads))
    name = zigzag_layer_name(data)
    return Layer(
        name, str(data["operator_type"]), sizes, operand_dims, precision, relations, pr_sizes
    )


def _conv_layer(
    name: str,
    *,
    batch: int,
    groups: int,
    k: int,
    c: int,
    oy: int,
    ox: int,
    fy: int,
    fx: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    in_hw: tuple[int, int],
    precision: dict[str, int],
    op_type: str = "Conv",
) -> Layer:
    # ZigZag's convention: loops B K G OX OY C FX FY, ix = stride*ox + dilation*fx.
    sizes = {"B": batch, "K": k, "G": groups, "OX": ox, "OY": oy, "C": c, "FX": fx, "FY": fy}
    operand_dims = {
        "O": ["B", "G", "K", "OY", "OX"],
        "W": ["G", "K", "C", "FY", "FX"],
        "I": ["B", "G", "C", "IY", "IX"],
    }
    relations = {
        "IX": ("OX", stride[1], "FX", dilation[1]),
        "IY": ("OY", stride[0], "FY", dilation[0]),
    }
    pr_sizes = {"IX": in_hw[1], "IY": in_hw[0]}
    return Layer(name, op_type, sizes, operand_dims, precision, relations, pr_sizes)


def _gemm_layer(
    name: str, *, rows: int, c: int, k: int, precision: dict[str, int], op_type: str = "Gemm"
) -> Layer:
    sizes = {"C": c, "D": rows, "K": k}
    operand_dims = {"O": ["D", "K"], "I": ["D", "C"], "W": ["C", "K"]}
    return Layer(name, op_type, sizes, operand_dims, precision)


def default_precision(weight_bits: int = 8, activation_bits: int = 8) -> dict[str, int]:
    """ZigZag's defaults: partial sums twice the activation width, outputs at it."""
    return {
        "W": weight_bits,
        "I": activation_bits,
        "O": 2 * activation_bits,
        "O_final": activation_bits,
    }


def _shape_hint(model) -> str:
    from kiln.onnx_constants import _ceil_mode_pools

    if _ceil_mode_pools(model):
        return ("the graph has a pool in ceil mode: ONNX's shape inference keeps a last "
                "window that starts past the input, ONNX Runtime and PyTorch drop it, and "
                "this file's shapes fit neither (re-export with ceil_mode=False or padding)")
    return "neither ONNX shape inference nor a run in ONNX Runtime could work out its shapes"


def workload_from_onnx(path: str | Path, model: Any = None) -> Workload:
    """Conv, Gemm and MatMul nodes of an ONNX file, in graph order (ZigZag's conventions).
    ``model``: the file already loaded with its shapes inferred (not read or inferred again)."""
    import onnx

    from kiln.onnx_constants import infer_shapes

    path = Path(path)
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
            model = infer_shapes(model)
        except Exception as error:  # onnx raises several unrelated types for a bad file
            raise ModelFormatError(f"{path}: cannot read ONNX model: {error}") from None
    shapes: dict[str, list[int]] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    producers: dict[str, str] = {}
    layers, not_costed = [], []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        preds = [producers[i] for i in node.input if i in producers]
        if node.op_type in ("Conv", "QLinearConv"):
            x_name = node.input[0]
            in_shape, out_shape = shapes.get(x_name), shapes.get(node.output[0])
            if not in_shape or not out_shape or len(in_shape) != 4:
                raise ModelFormatError(
                    f"{path}: node '{name}': Conv needs known 4-D input/output shapes",
                    hint=_shape_hint(model))
            groups = int(attrs.get("group", 1))
            kernel = list(attrs.get("kernel_shape") or shapes[node.input[1]][2:])
            layer = _conv_layer(
                name,
                batch=max(1, out_shape[0]),
                groups=groups,
                k=math.ceil(out_shape[1] / groups),
                c=math.ceil(in_shape[1] / groups),
                oy=out_shape[2],
                ox=out_shape[3],
                # kernel_shape is [rows, columns]. ZigZag 3.9.1 reads kernel_shape[0] as
                # FX: the same on square kernels (all its bundled networks), wrong on others.
                fy=kernel[0],
                fx=kernel[1],
                stride=tuple(attrs.get("strides", [1, 1])),
                dilation=tuple(attrs.get("dilations", [1, 1])),
                in_hw=(in_shape[2], in_shape[3]),
                precision=default_precision(),
                op_type=node.op_type,
            )
        elif node.op_type in ("Gemm", "MatMul"):
            in_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
            if node.op_type == "Gemm" and attrs.get("transA"):
                in_shape = list(reversed(in_shape or []))
            if not out_shape:
                raise ModelFormatError(
                    f"{path}: node '{name}': {node.op_type} needs a known output shape",
                    hint=_shape_hint(model))
            if not in_shape:
                weight = shapes[node.input[1]]
                in_shape = [out_shape[0], weight[1] if attrs.get("transB") else weight[0]]
            rows = math.prod(out_shape[:-1]) or 1
            layer = _gemm_layer(
                name,
                rows=rows,
                c=in_shape[-1],
                k=out_shape[-1],
                precision=default_precision(),
                op_type=node.op_type,
            )
        else:
            not_costed.append((name, node.op_type))
            for output in node.output:
                producers[output] = producers.get(node.input[0], name) if node.input else name
            continue
        layer.inputs_from = preds
        layers.append(layer)
        for output in node.output:
            producers[output] = name
    return Workload(path.stem, layers, not_costed)


# Operator types a MAC array does not run: ZigZag prices them as MAC layers with a 0-bit
# or activation "weight" on digital arrays and skips them on IMC arrays; kiln keeps them
# in the workload, listed as not costed (a real NPU runs them on its vector unit).
NOT_COSTED_OPERATORS = ("Pooling", "Add")


def zigzag_layer_name(data: dict[str, Any]) -> str:
    """A workload layer's name as ZigZag gives it: its ``name``, else ``Layer<id>``."""
    return str(data.get("name") or f"Layer{data['id']}")


def workload_from_zigzag_yaml(path: str | Path) -> Workload:
    """A ZigZag workload YAML: its MAC layers costed, Pooling/Add layers kept as not costed."""
    path = Path(path)
    data = load_yaml_file(path)
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: a ZigZag workload is a non-empty list of layers")
    layers, not_costed, names = [], [], {}
    for index, item in enumerate(data):
        where = f"{path}: layer[{index}]"
        if not isinstance(item, dict) or "id" not in item or "operator_type" not in item:
            raise ConfigError(f"{where}: a layer needs at least 'id' and 'operator_type'")
        name = zigzag_layer_name(item)
        if name in names:
            raise ConfigError(f"{where}: layer name '{name}' is also layer[{names[name]}]'s",
                              hint="mapping entries find layers by name: give each its own")
        names[name] = index
        if str(item["operator_type"]) in NOT_COSTED_OPERATORS:
            not_costed.append((name, str(item["operator_type"])))
            continue
        layers.append(layer_from_zigzag(item, where))
    if not layers:
        raise ConfigError(f"{path}: no layer a MAC array runs (only "
                          f"{', '.join(sorted({op for _, op in not_costed}))})")
    return Workload(path.stem, layers, not_costed)


def layer_to_zigzag(layer: Layer, layer_id: int = 0) -> dict[str, Any]:
    """A layer as one entry of a ZigZag workload YAML (the inverse of :func:`layer_from_zigzag`)."""

    def operand_text(op: str) -> str:
        return op + "".join(f"[{d.lower()}]" for d in layer.operand_dims[op])

    out, first, second = layer.operands
    data: dict[str, Any] = {
        "id": layer_id,
        "name": layer.name,
        "operator_type": layer.op_type,
        "equation": f"{operand_text(out)}+={operand_text(first)}*{operand_text(second)}",
        "dimension_relations": [
            f"{t.lower()}={sa}*{a.lower()}+{sb}*{b.lower()}"
            for t, (a, sa, b, sb) in layer.relations.items()
        ],
        "loop_dims": list(layer.sizes),
        "loop_sizes": list(layer.sizes.values()),
        "operand_precision": {op: bits for op, bits in layer.precision.items()},
        "operand_source": {op: layer_id for op in layer.inputs if op == "I"},
    }
    if layer.pr_sizes:
        data["pr_loop_dims"] = list(layer.pr_sizes)
        data["pr_loop_sizes"] = list(layer.pr_sizes.values())
    return data
