"""``lower(graph)``: a quantized (fake-quant) graph to an :class:`IntegerProgram`.

Every tensor between quantizers becomes integers. A conv/linear layer (BatchNorm already
folded by ``quantize``), a standalone BatchNorm, an average pool or a residual add
produces an accumulator that is *pending* until the next activation quantizer gives its
output scale and zero point; ReLU/ReLU6/Clip in between become the requantization's
saturation bounds, and max pools and flattens in between run on the requantized
integers (quantization is monotone, so they commute with it exactly).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.errors import KilnError
from kiln.graph.core import Graph
from kiln.graph.metadata import OpKind
from kiln.integer.arith import (
    ROUNDING_MODES,
    Rounding,
    accumulator_bits,
    float32_multiplier,
    quantize_multipliers,
)
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.layers import QuantConv2d, QuantLinear

AFFINE_WEIGHT = 127


@dataclass
class _Quantized:
    name: str
    quant: TensorQuant


@dataclass
class _Pending:
    op: IntOp
    acc_scale: np.ndarray  # real value of one accumulator unit, per output channel
    in_quant: TensorQuant
    low: float = -math.inf  # real-valued clamp from ReLU / ReLU6 / Clip
    high: float = math.inf
    deferred: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)


def _tensor_quant(quantizer: FakeQuantize, where: str) -> TensorQuant:
    spec = quantizer.spec
    if spec.format != "int":
        raise KilnError(f"{where}: {spec.format} activations cannot be lowered to integers")
    if quantizer.scale.numel() != 1:
        raise KilnError(f"{where}: per-channel activation quantization cannot be lowered; use "
                        "per-tensor activations")
    if not quantizer.calibrated:
        raise KilnError(f"{where}: activation quantizer is not calibrated",
                        hint="run kiln.quant.calibrate before lower")
    return TensorQuant(float(quantizer.scale.reshape(())), int(quantizer.zero_point.reshape(())),
                       spec.bits, spec.signed)


def _pad_attrs(attrs: dict[str, Any], quant: TensorQuant) -> dict[str, Any]:
    """A pad's integer fill: real 0 is the zero point, -inf the lowest integer."""
    fill = quant.qmin if attrs["fill"] == -math.inf else int(quant.quantize(np.array([0.0]))[0])
    return {"padding": attrs["padding"], "value": fill}


def _clamp_bounds(quant: TensorQuant, low: float, high: float) -> tuple[int, int]:
    lo, hi = quant.qmin, quant.qmax
    if low > -math.inf:
        lo = max(lo, int(quant.quantize(np.array([low]))[0]))
    if high < math.inf:
        hi = min(hi, int(quant.quantize(np.array([high]))[0]))
    return lo, hi


class _Lowering:
    def __init__(self, graph: Graph, rounding: Rounding) -> None:
        self.graph = graph
        self.module = graph.module
        self.rounding = rounding
        self.infos = {info.name: info for info in graph.nodes()}
        self.ops: list[IntOp] = []
        self.state: dict[str, Any] = {}
        self.input_quant: TensorQuant | None = None
        self.output: _Quantized | None = None
        self.finished: dict[str, int] = {}  # layer name -> times its accumulator was finished

    def emit(self, op: IntOp) -> None:
        self.ops.append(op)

    # --- layers --------------------------------------------------------------------
    def weighted_layer(self, node: torch.fx.Node, source: _Quantized) -> _Pending:
        layer = self.module.get_submodule(node.target)
        if not isinstance(layer, (QuantConv2d, QuantLinear)) or layer.weight_quantizer is None:
            raise KilnError(f"layer '{node.name}' has float weights: quantize its weights "
                            "before lowering")
        quantizer = layer.weight_quantizer
        if quantizer.spec.format != "int":
            raise KilnError(f"layer '{node.name}': {quantizer.spec.format} weights cannot be "
                            "lowered to integers")
        with torch.no_grad():
            quantizer(layer.weight)  # refresh the weight's range
            channels = layer.weight.shape[0]
            scale = quantizer.scale.double().reshape(-1).expand(channels).clone()
            zero = quantizer.zero_point.double().reshape(-1).expand(channels).clone()
            shape = [-1] + [1] * (layer.weight.dim() - 1)
            weight = torch.clamp(torch.round(layer.weight.double() / scale.reshape(shape))
                                 + zero.reshape(shape), quantizer.spec.qmin,
                                 quantizer.spec.qmax).to(torch.int64).numpy()
            acc_scale = source.quant.scale * scale.numpy()
            bias = np.zeros(channels, dtype=np.int64)
            if layer.bias is not None:
                bias = np.round(layer.bias.double().numpy() / acc_scale).astype(np.int64)
        weight_zero = zero.numpy().astype(np.int64)
        reduction = int(np.prod(weight.shape[1:]))
        in_range = max(source.quant.qmax - source.quant.zero_point,
                       source.quant.zero_point - source.quant.qmin)
        w_range = int(np.abs(weight - weight_zero.reshape(shape)).max(initial=0))
        acc_bits = accumulator_bits(reduction, in_range, w_range, int(np.abs(bias).max()))
        if acc_bits > 32:
            raise KilnError(
                f"layer '{node.name}': its accumulator needs {acc_bits} bits (K={reduction}, "
                f"{source.quant.bits}-bit inputs, {quantizer.spec.bits}-bit weights) and "
                "would overflow int32", hint="use narrower weights or activations")
        attrs: dict[str, Any] = {"in_quant": source.quant.as_dict(), "acc_bits": acc_bits,
                                 "weight_bits": quantizer.spec.bits,
                                 "weight_scale": scale.tolist()}
        if isinstance(layer, nn.Linear) and len(self.infos[node.name].input_shapes[0]) != 2:
            raise KilnError(f"linear layer '{node.name}' is applied to a rank-"
                            f"{len(self.infos[node.name].input_shapes[0])} tensor (along its "
                            "last axis); the integer program's dense layers take vectors",
                            hint="flatten the input first (nn.Flatten / torch.flatten)")
        if isinstance(layer, nn.Conv2d):
            kind = "conv"
            attrs.update(stride=list(layer.stride), padding=list(layer.padding),
                         dilation=list(layer.dilation), groups=layer.groups)
        else:
            kind = "dense"
        op = IntOp(kind, node.name, [source.name], node.name, attrs,
                   {"weight": weight, "weight_zero": weight_zero, "bias": bias},
                   {"weight": quantizer.spec.bits, "bias": 32})
        return _Pending(op, acc_scale, source.quant)

    def affine(self, node: torch.fx.Node, source: _Quantized) -> _Pending:
        bn = self.module.get_submodule(node.target)
        with torch.no_grad():
            std = torch.sqrt(bn.running_var.double() + bn.eps)
            gamma = bn.weight.double() if bn.affine else torch.ones_like(std)
            beta = bn.bias.double() if bn.affine else torch.zeros_like(std)
            slope = (gamma / std).numpy()
            offset = (beta - gamma * bn.running_mean.double() / std).numpy()
        # Weights of ±127 (8 bits) rather than ±1 make the accumulator unit 127 times
        # finer, so the rounded offset (bias) costs at most 1/254 of an input step.
        magnitude = np.where(slope == 0, 1.0, np.abs(slope))
        acc_scale = magnitude * source.quant.scale / AFFINE_WEIGHT
        bias = np.round(offset / acc_scale).astype(np.int64)
        if np.abs(bias).max(initial=0) >= 2**31:
            raise KilnError(f"BatchNorm '{node.name}': its offset overflows int32 at the "
                            "input's scale")
        op = IntOp("affine", node.name, [source.name], node.name,
                   {"in_quant": source.quant.as_dict()},
                   {"weight": (np.sign(slope) * AFFINE_WEIGHT).astype(np.int64), "bias": bias},
                   {"weight": 8, "bias": 32})
        return _Pending(op, acc_scale, source.quant)

    def finish(self, pending: _Pending, quant: TensorQuant) -> _Quantized:
        op = pending.op
        times = self.finished.get(op.name, 0)
        self.finished[op.name] = times + 1
        if times:
            # the same accumulator requantized again (a layer's output read raw and through
            # a ReLU, say): an op of its own, not the first one changed after it was emitted
            op = IntOp(op.kind, f"{op.name}_{times + 1}", list(op.inputs),
                       f"{op.output}_{times + 1}", dict(op.attrs), dict(op.arrays),
                       dict(op.array_bits))
        multiplier = pending.acc_scale / quant.scale
        try:
            m0, shift = quantize_multipliers(multiplier)
        except KilnError as exc:
            raise KilnError(f"'{op.name}' ({op.kind}): {exc}", hint="calibrate on data that "
                            "exercises every layer, or use wider activations") from None
        lo, hi = _clamp_bounds(quant, pending.low, pending.high)
        op.attrs.update(out_quant=quant.as_dict(), clamp=[lo, hi])
        op.arrays.update(m0=m0, shift=shift)
        op.array_bits.update(m0=32, shift=8)
        if op.kind in ("conv", "dense"):
            op.arrays["multiplier_f32"] = float32_multiplier(
                input_scale=pending.in_quant.scale,
                weight_scale=np.asarray(op.attrs["weight_scale"]), output_scale=quant.scale)
        else:
            op.arrays["multiplier_f32"] = multiplier.astype(np.float32)
        self.emit(op)
        current = _Quantized(op.output, quant)
        for kind, attrs, name in pending.deferred:
            if kind == "pad":
                attrs = _pad_attrs(attrs, quant)
            self.emit(IntOp(kind, name, [current.name], name,
                            {**attrs, "in_quant": quant.as_dict(), "out_quant": quant.as_dict()}))
            current = _Quantized(name, quant)
        return current

    # --- the walk ------------------------------------------------------------------
    def quantized_input(self, node: torch.fx.Node, index: int = 0) -> _Quantized:
        source = node.all_input_nodes[index]
        value = self.state[source.name]
        if isinstance(value, _Quantized):
            return value
        if isinstance(value, _Pending):
            raise KilnError(f"'{node.name}' reads the output of '{value.op.name}' before it is "
                            "quantized", hint="quantize activations at every layer input")
        raise KilnError(f"'{node.name}' computes on float values: the network input is not "
                        "quantized before it", hint="quantize with activation widths "
                        "(e.g. uniform_config(8, 8)) and calibrate")

    def run(self) -> None:
        for node in self.module.graph.nodes:
            info = self.infos[node.name]
            kind = info.op
            if kind is OpKind.INPUT:
                self.state[node.name] = "float"
            elif kind is OpKind.QUANTIZE:
                self.state[node.name] = self.quantizer(node)
            elif kind in (OpKind.CONV, OpKind.LINEAR):
                self.state[node.name] = self.weighted_layer(node, self.quantized_input(node))
            elif kind is OpKind.BATCHNORM:
                self.state[node.name] = self.affine(node, self.quantized_input(node))
            elif kind in (OpKind.RELU, OpKind.RELU6, OpKind.CLIP):
                self.state[node.name] = self.activation(node, kind)
            elif kind in (OpKind.MAXPOOL, OpKind.FLATTEN, OpKind.RESHAPE, OpKind.IDENTITY,
                          OpKind.DROPOUT):
                self.state[node.name] = self.structural(node, kind, info)
            elif kind in (OpKind.AVGPOOL, OpKind.GLOBAL_AVGPOOL):
                self.state[node.name] = self.avgpool(node, info)
            elif kind is OpKind.ADD:
                self.state[node.name] = self.add(node)
            elif kind is OpKind.PAD:
                self.state[node.name] = self.pad(node)
            elif kind is OpKind.OUTPUT:
                self.output = self.quantized_input(node)
            else:
                raise KilnError(f"cannot lower node '{node.name}' ({kind.value}, "
                                f"{info.target}) to integer arithmetic")

    def quantizer(self, node: torch.fx.Node) -> _Quantized:
        quantizer = self.module.get_submodule(node.target)
        quant = _tensor_quant(quantizer, f"quantizer '{node.name}'")
        value = self.state[node.all_input_nodes[0].name]
        if isinstance(value, str):  # the float network input
            if self.input_quant is not None:
                raise KilnError(f"quantizer '{node.name}' quantizes a float tensor a second time")
            self.input_quant = quant
            return _Quantized("input", quant)
        if isinstance(value, _Pending):
            return self.finish(value, quant)
        if value.quant == quant:
            return value
        op = IntOp("requantize", node.name, [value.name], node.name,
                   {"in_quant": value.quant.as_dict()}, {}, {})
        return self.finish(_Pending(op, np.array([value.quant.scale]), value.quant), quant)

    def activation(self, node: torch.fx.Node, kind: OpKind) -> Any:
        module = self.module.get_submodule(node.target) if node.op == "call_module" else None
        if kind is OpKind.RELU:
            low, high = 0.0, math.inf
        elif kind is OpKind.RELU6:
            low, high = 0.0, 6.0
        elif isinstance(module, nn.Hardtanh):
            low, high = float(module.min_val), float(module.max_val)
        else:
            raise KilnError(f"cannot lower clip '{node.name}' without constant bounds")
        value = self.state[node.all_input_nodes[0].name]
        if isinstance(value, _Pending):  # a copy: other readers of the layer see no clamp
            return dataclasses.replace(value, low=max(value.low, low),
                                       high=min(value.high, high),
                                       deferred=list(value.deferred))
        source = self.quantized_input(node)
        lo, hi = _clamp_bounds(source.quant, low, high)
        self.emit(IntOp("clamp", node.name, [source.name], node.name,
                        {"clamp": [lo, hi], "in_quant": source.quant.as_dict(),
                         "out_quant": source.quant.as_dict()}))
        return _Quantized(node.name, source.quant)

    def structural(self, node: torch.fx.Node, kind: OpKind, info: Any) -> Any:
        value = self.state[node.all_input_nodes[0].name]
        if kind in (OpKind.IDENTITY, OpKind.DROPOUT):
            return value
        if kind is OpKind.MAXPOOL:
            pool = _pool_settings(node, self.module)
            if pool["dilation"] != [1, 1]:
                raise KilnError(f"cannot lower dilated max pool '{node.name}'")
            attrs = {key: pool[key] for key in ("kernel", "stride", "padding", "ceil_mode")}
            op_kind = "maxpool"
        else:
            attrs = {"shape": list(info.output_shape[1:])}
            op_kind = "flatten"
        if isinstance(value, _Pending):
            return dataclasses.replace(value, deferred=[*value.deferred,
                                                        (op_kind, attrs, node.name)])
        source = self.quantized_input(node)
        self.emit(IntOp(op_kind, node.name, [source.name], node.name,
                        {**attrs, "in_quant": source.quant.as_dict(),
                         "out_quant": source.quant.as_dict()}))
        return _Quantized(node.name, source.quant)

    def pad(self, node: torch.fx.Node) -> _Quantized:
        """A constant spatial pad (asymmetric 'SAME' padding, explicit pads in ONNX files):
        zeros become the zero point, -inf (before a max pool) the lowest integer."""
        pads = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs.get("pad", []))
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        value = 0.0 if value is None else float(value)
        outer = pads[4:]  # torch order: last dim first; batch and channels must stay
        if mode != "constant" or len(pads) < 2 or any(outer) or (value != 0.0 and
                                                                 value != -math.inf):
            raise KilnError(f"cannot lower pad '{node.name}' (mode {mode}, value {value}): only "
                            "constant zero padding (or -inf before a max pool) of the last "
                            "two dimensions lowers to integers")
        left, right, top, bottom = [*pads, 0, 0][:4]
        attrs = {"padding": [top, left, bottom, right], "fill": value}
        value_state = self.state[node.all_input_nodes[0].name]
        if isinstance(value_state, _Pending):
            # Quantizing commutes with the pad (0 -> the zero point, -inf -> qmin):
            # pad the requantized integers.
            return dataclasses.replace(value_state, deferred=[*value_state.deferred,
                                                              ("pad", attrs, node.name)])
        source = self.quantized_input(node)
        self.emit(IntOp("pad", node.name, [source.name], node.name,
                        {**_pad_attrs(attrs, source.quant), "in_quant": source.quant.as_dict(),
                         "out_quant": source.quant.as_dict()}))
        return _Quantized(node.name, source.quant)

    def avgpool(self, node: torch.fx.Node, info: Any) -> _Pending:
        source = self.quantized_input(node)
        in_shape = info.input_shapes[0]
        if info.op is OpKind.GLOBAL_AVGPOOL:
            kernel, stride = [in_shape[2], in_shape[3]], [1, 1]
        else:
            pool = _pool_settings(node, self.module)
            if pool["padding"] != [0, 0] or pool["ceil_mode"]:
                raise KilnError(f"cannot lower padded or ceil-mode average pool '{node.name}'")
            kernel, stride = pool["kernel"], pool["stride"]
        count = kernel[0] * kernel[1]
        op = IntOp("avgpool", node.name, [source.name], node.name,
                   {"kernel": kernel, "stride": stride, "in_quant": source.quant.as_dict()})
        return _Pending(op, np.array([source.quant.scale / count]), source.quant)

    def add(self, node: torch.fx.Node) -> _Pending:
        if len(node.all_input_nodes) != 2:
            raise KilnError(f"cannot lower add '{node.name}' of a tensor and a constant")
        a, b = self.quantized_input(node, 0), self.quantized_input(node, 1)
        op = IntOp("add", node.name, [a.name, b.name], node.name,
                   {"a_quant": a.quant.as_dict(), "b_quant": b.quant.as_dict(),
                    "in_quant": a.quant.as_dict()})
        # Each input gets its own multiplier to the output scale (set in ``finish``).
        pending = _Pending(op, np.array([a.quant.scale]), a.quant)
        pending.op.attrs["b_over_a"] = b.quant.scale / a.quant.scale
        return pending


def _pool_settings(node: torch.fx.Node, module: nn.Module) -> dict[str, Any]:
    """A 2-D pool's kernel, stride, padding, dilation and ceil mode (each a pair), from
    its module (``nn.MaxPool2d``) or its call (``F.max_pool2d(x, 2)`` in a user's forward)."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    if node.op == "call_module":
        pool = module.get_submodule(node.target)
        given = {name: getattr(pool, name, None) for name in (*names, "divisor_override")}
    else:  # F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
        # F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
        # divisor_override)
        order = names if node.target is torch.nn.functional.max_pool2d else (
            "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
            "divisor_override")
        given = {**dict(zip(order, node.args[1:], strict=False)), **node.kwargs}
    if given.get("divisor_override") is not None:
        raise KilnError(f"cannot lower average pool '{node.name}' with divisor_override: the "
                        "integer program divides by the window size")

    def pair(value: Any, default: int) -> list[int]:
        value = default if value is None else value
        return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2

    kernel = pair(given["kernel_size"], 1)
    return {"kernel": kernel, "stride": pair(given.get("stride") or kernel, 1),
            "padding": pair(given.get("padding"), 0), "dilation": pair(given.get("dilation"), 1),
            "ceil_mode": bool(given.get("ceil_mode") or False)}


def lower(graph: Graph, *, rounding: Rounding = "nearest") -> IntegerProgram:
    """Lower a quantized, calibrated graph to an :class:`IntegerProgram`.

    >>> from kiln.quant import quantize, calibrate, uniform_config   # doctest: +SKIP
    >>> program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset))
    """
    if rounding not in ROUNDING_MODES:
        raise KilnError(f"unknown rounding mode '{rounding}': use {', '.join(ROUNDING_MODES)}")
    if not any(isinstance(m, FakeQuantize) for m in graph.module.modules()):
        raise KilnError(f"graph '{graph.name}' is not quantized: run kiln.quant.quantize "
                        "(with weight and activation widths) and calibrate first")
    other_formats = sorted({f"'{(name.rpartition('.')[0] or name).replace('.', '_')}' "
                            f"({module.spec.format})"
                            for name, module in graph.module.named_modules()
                            if isinstance(module, FakeQuantize) and module.spec.format != "int"})
    if other_formats:
        raise KilnError(f"graph '{graph.name}' quantizes with formats that are not integers: "
                        + ", ".join(other_formats),
                        hint="minifloat and block floating point are simulated (accuracy, "
                             "size); the integer program takes integer formats only")
    lowering = _Lowering(graph, rounding)
    lowering.run()
    _finish_adds(lowering.ops)
    if lowering.input_quant is None or lowering.output is None:
        raise KilnError(f"graph '{graph.name}': found no quantized input or output")
    return IntegerProgram(graph.name, tuple(graph.input_shape[1:]), lowering.input_quant,
                          lowering.output.quant, rounding, lowering.ops,
                          output_name=lowering.output.name)


def _finish_adds(ops: list[IntOp]) -> None:
    """Give each residual add a second multiplier, for its second input."""
    for op in ops:
        if op.kind == "add":
            scale_b = op.attrs["b_over_a"] * TensorQuant(**op.attrs["a_quant"]).scale
            multiplier = scale_b / op.out_quant.scale
            m0, shift = quantize_multipliers(np.array([multiplier]))
            op.arrays.update(m0_b=m0, shift_b=shift,
                             multiplier_b_f32=np.array([multiplier], dtype=np.float32))
