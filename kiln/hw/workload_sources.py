"""Workloads from kiln's own models: a Graph (float or quantized, its widths read from
its quantizers), an integer program from ``kiln lower``, and any MODEL argument, ZigZag
workload YAML or ONNX file (:func:`load_workload`, what ``kiln map`` and ``kiln cost`` read).

    >>> from kiln.models.checkpoints import build_graph
    >>> len(workload_from_graph(build_graph("convnet")).layers)
    4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, ModelFormatError
from kiln.hw.workload import (
    Workload,
    _conv_layer,
    _gemm_layer,
    default_precision,
    workload_from_onnx,
    workload_from_zigzag_yaml,
)


def workload_from_graph(
    graph: Any, precision: dict[str, tuple[int, int]] | None = None, name: str | None = None
) -> Workload:
    """The conv/linear/matmul layers of a kiln Graph, with ZigZag's loop conventions.

    ``precision`` maps a layer name to (weight bits, activation bits); other layers use
    the widths of a quantized graph's quantizers, else 8/8.

    >>> from kiln.models.checkpoints import build_graph
    >>> [layer.op_type for layer in workload_from_graph(build_graph("convnet")).layers]
    ['Conv', 'Conv', 'Gemm', 'Gemm']
    """
    from kiln.graph.metadata import OpKind
    from kiln.graph.shapes import propagate

    graph = propagate(graph)
    layers, not_costed = [], []
    # The edges: each layer's nearest costed producers, looking through non-MAC nodes.
    producers: dict[str, list[str]] = {}
    for node in graph.fx_nodes():
        sources: list[str] = []
        for arg in node.all_input_nodes:
            if arg.meta["kiln"].loops is not None and arg.meta["kiln"].op in (
                OpKind.CONV,
                OpKind.CONV1D,
                OpKind.LINEAR,
                OpKind.MATMUL,
            ):
                sources.append(arg.name)
            else:
                sources += producers.get(arg.name, [])
        producers[node.name] = list(dict.fromkeys(sources))
    for node in graph.fx_nodes():
        info = node.meta["kiln"]
        if info.op in (OpKind.INPUT, OpKind.OUTPUT, OpKind.CONSTANT):
            continue
        if info.loops is None or info.op not in (
            OpKind.CONV,
            OpKind.CONV1D,
            OpKind.LINEAR,
            OpKind.MATMUL,
        ):
            if info.macs == 0 and not _is_quantizer(graph, node):
                not_costed.append((info.name, info.op.value))
            continue
        w_bits, a_bits = (precision or {}).get(info.name) or graph_widths(graph, node)
        bits = default_precision(w_bits, a_bits)
        loops = info.loops
        if info.op in (OpKind.CONV, OpKind.CONV1D):
            in_shape = info.input_shapes[0]
            in_hw = (in_shape[-2], in_shape[-1]) if len(in_shape) == 4 else (1, in_shape[-1])
            layer = _conv_layer(
                info.name,
                batch=loops.B,
                groups=loops.G,
                k=loops.K,
                c=loops.C,
                oy=loops.OY,
                ox=loops.OX,
                fy=loops.FY,
                fx=loops.FX,
                stride=tuple(loops.stride),
                dilation=tuple(loops.dilation),
                in_hw=in_hw,
                precision=bits,
            )
        else:
            layer = _gemm_layer(
                info.name, rows=loops.B, c=loops.C, k=loops.K, precision=bits, op_type="Gemm"
            )
        layer.inputs_from = producers[node.name]
        layers.append(layer)
    return Workload(name or graph.name, layers, not_costed)


def _is_quantizer(graph: Any, node: Any) -> bool:
    from kiln.quant.fake_quant import FakeQuantize

    return node.op == "call_module" and isinstance(
        graph.module.get_submodule(node.target), FakeQuantize
    )


def graph_widths(graph: Any, node: Any) -> tuple[int, int]:
    """(weight bits, activation bits) of a quantized layer; 8/8 for a float one."""
    weight_bits, act_bits = 8, 8
    if node.op == "call_module":
        module = graph.module.get_submodule(node.target)
        weight_q = getattr(module, "weight_quantizer", None)
        if weight_q is not None:
            weight_bits = int(weight_q.spec.bits)
    source = node.all_input_nodes[0] if node.all_input_nodes else None
    if source is not None and _is_quantizer(graph, source):
        act_bits = int(graph.module.get_submodule(source.target).spec.bits)
    return weight_bits, act_bits


def workload_from_program(program: Any, name: str | None = None) -> Workload:
    """The conv and dense layers of an integer program (a folder from ``kiln lower``), at
    its widths: weights at their bits, activations at their input quantizer's bits.
    Pools, adds, pads and standalone BatchNorms are listed as not costed."""
    from kiln.integer.program import TensorQuant

    shapes: dict[str, tuple[int, ...]] = {program.input_name: tuple(program.input_shape)}
    producers: dict[str, list[str]] = {program.input_name: []}
    layers, not_costed = [], []
    for op in program.ops:
        shape = shapes[op.inputs[0]]
        sources = list(dict.fromkeys(s for i in op.inputs for s in producers.get(i, [])))
        if op.kind in ("conv", "dense"):
            weight = op.arrays["weight"]
            bits = default_precision(int(op.array_bits.get("weight", 8)),
                                     TensorQuant(**op.attrs["in_quant"]).bits)
            if op.kind == "conv":
                channels, height, width = shape
                k_out, c_group, fy, fx = weight.shape
                groups = op.attrs["groups"]
                (py, px), (sy, sx) = op.attrs["padding"], op.attrs["stride"]
                dy, dx = op.attrs["dilation"]
                oy = (height + 2 * py - dy * (fy - 1) - 1) // sy + 1
                ox = (width + 2 * px - dx * (fx - 1) - 1) // sx + 1
                layer = _conv_layer(op.name, batch=1, groups=groups, k=k_out // groups,
                                    c=c_group, oy=oy, ox=ox, fy=fy, fx=fx, stride=(sy, sx),
                                    dilation=(dy, dx), in_hw=(height, width), precision=bits)
                shapes[op.output] = (k_out, oy, ox)
            else:
                layer = _gemm_layer(op.name, rows=1, c=weight.shape[1], k=weight.shape[0],
                                    precision=bits)
                shapes[op.output] = (weight.shape[0],)
            layer.inputs_from = sources
            layers.append(layer)
            producers[op.output] = [op.name]
            continue
        not_costed.append((op.name, op.kind))
        producers[op.output] = sources
        shapes[op.output] = _program_shape(op, shape)
    return Workload(name or program.name, layers, not_costed)


def _program_shape(op: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of a program op that carries no MACs."""
    if op.kind == "flatten":
        return tuple(op.attrs["shape"])
    if op.kind == "pad":
        top, left, bottom, right = op.attrs["padding"]
        return (shape[0], shape[1] + top + bottom, shape[2] + left + right)
    if op.kind in ("maxpool", "avgpool"):
        (ky, kx), (sy, sx) = op.attrs["kernel"], op.attrs["stride"]
        py, px = op.attrs.get("padding", [0, 0])
        ceil = op.attrs.get("ceil_mode", False)

        def size(length: int, kernel: int, stride: int, pad: int) -> int:
            span = length + 2 * pad - kernel
            out = (-(-span // stride) if ceil else span // stride) + 1
            return out - 1 if ceil and (out - 1) * stride >= length + pad else out

        return (shape[0], size(shape[1], ky, sy, py), size(shape[2], kx, sx, px))
    return shape


def load_workload(spec: str, dataset: str | None = None, *,
                  input_shape: tuple[int, ...] | None = None, weights: Any = None,
                  quant_config: Any = None) -> Workload:
    """A workload from a zoo name, a checkpoint or model file, an ONNX file, a ZigZag
    workload YAML, a program folder from ``kiln lower`` (at its widths), or a user's
    ``file.py:Name`` module; ``quant_config`` (a config or file) sets per-layer widths."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise ConfigError(f"{path}: a folder, but not a program from 'kiln lower' "
                              "(no manifest.json)")
        from kiln.integer.program import IntegerProgram

        return workload_from_program(IntegerProgram.load(path), name=path.name)
    if path.suffix in (".yaml", ".yml") and quant_config is None:
        if not path.is_file():
            raise ConfigError(f"workload file not found: {path}")
        return workload_from_zigzag_yaml(path)
    if path.suffix == ".onnx" and quant_config is None:
        if not path.is_file():
            raise ModelFormatError(f"ONNX file not found: {path}")
        return workload_from_onnx(path)
    from kiln.models.checkpoints import resolve_model

    graph, _ = resolve_model(spec, dataset=dataset, pretrained=False, input_shape=input_shape,
                             weights=weights)
    if quant_config is not None:
        from kiln.graph.shapes import probing_shapes
        from kiln.quant import QuantConfig, quantize

        if isinstance(quant_config, (str, Path)):
            quant_config = QuantConfig.load(quant_config)
        graph = quantize(graph, quant_config)  # only the widths are read: no calibration
        with probing_shapes():  # uncalibrated quantizers pass values through
            return workload_from_graph(graph, name=path.stem if path.suffix else spec)
    return workload_from_graph(graph, name=path.stem if path.suffix else spec)
