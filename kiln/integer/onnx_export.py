"""Export an :class:`IntegerProgram` to ONNX, in QOperator or QDQ form.

**QOperator**: QuantizeLinear at the input; QLinearConv for convolutions; a linear layer
is MatMulInteger + int32 bias Add + the requantization written out (Cast, Mul by the
float32 multiplier, QuantizeLinear with scale 1, which rounds half to even and
saturates); integer MaxPool, Pad, Reshape and Clip;
DequantizeLinear at the output. **QDQ**: float Conv/Gemm between QuantizeLinear /
DequantizeLinear pairs, with int8 weights and int32 biases, which ONNX Runtime fuses
into QLinearConv / QGemm when it loads the model.

Every activation travels as **uint8** in the exported graph, whatever its signedness in
the program: a signed tensor q with zero point z is stored as q + 128 with zero point
z + 128, which is the same real value and the same integers shifted, so every layer's
input and output have one type. ONNX Runtime's QDQ fusion requires exactly that (its
Conv and Gemm selectors refuse an int8 input with a uint8 output or the reverse, and
on x86-64 refuse int8 convolution inputs altogether), and its QLinearConv kernels take
no mixed input/output types. Clamps (ReLU, ReLU6, narrow widths) are integer Clips after
the QuantizeLinear, not float Relus before it, so nothing stands between the float
operator and its QuantizeLinear. Use :func:`kiln.integer.onnx_check.check_onnx` to see
what ONNX Runtime actually made of a file on this CPU.

The graph has two outputs: the dequantized float output (``output``) and the program's
output integers (``output_q``, int8 or uint8 as the program says). In the program's
``float32`` rounding mode ONNX Runtime reproduces the engine bit for bit; programs in
``floor`` or ``nearest`` mode export too, but ONNX Runtime then rounds its own way
(half to even on a float product).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from kiln.errors import KilnError
from kiln.integer.engine import run
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant

ExportFormat = Literal["qoperator", "qdq"]
IR_VERSION = 10  # onnxruntime 1.31 reads IR versions up to 13; onnx writes 14 by default
OPSET = 13


def uint8_offset(quant: TensorQuant) -> int:
    """What the export adds to a tensor's integers to carry them as uint8 (0 or 128)."""
    return 128 if quant.signed else 0


class _Builder:
    def __init__(self, program: IntegerProgram) -> None:
        self.program = program
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def constant(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        from onnx import helper

        output = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    # --- typed constants (activations are uint8, see the module docstring) ----------
    def zero_point(self, quant: TensorQuant) -> str:
        return self.constant("zero_point", np.array(quant.zero_point + uint8_offset(quant),
                                                    dtype=np.uint8))

    def scale(self, value: float | np.ndarray) -> str:
        return self.constant("scale", np.asarray(value, dtype=np.float32))

    def saturate(self, x: str, quant: TensorQuant, lo: int, hi: int) -> str:
        """Clip to the program's [lo, hi] where that is narrower than uint8's [0, 255]."""
        offset = uint8_offset(quant)
        lo, hi = lo + offset, hi + offset
        if lo <= 0 and hi >= 255:
            return x
        return self.node("Clip", [x, self.constant("lo", np.array(lo, np.uint8)),
                                  self.constant("hi", np.array(hi, np.uint8))], "clip")

    def requantize_int32(self, acc: str, multiplier: np.ndarray, quant: TensorQuant,
                         shape: list[int]) -> str:
        """int32 accumulator -> output integers: round(float32(acc) · M) + zp, saturated."""
        as_float = self.node("Cast", [acc], "acc_float", to=1)
        scaled = self.node("Mul", [as_float, self.constant(
            "multiplier", np.asarray(multiplier, np.float32).reshape(shape))], "scaled")
        return self.node("QuantizeLinear", [scaled, self.scale(1.0), self.zero_point(quant)],
                         "requantized")

    def weights(self, op: IntOp, weight: np.ndarray) -> tuple[str, str]:
        """The layer's weight integers and zero points, int8 where they fit, else uint8."""
        zero = op.arrays["weight_zero"]
        lowest = min(int(weight.min(initial=0)), int(zero.min(initial=0)))
        highest = max(int(weight.max(initial=0)), int(zero.max(initial=0)))
        if lowest >= -128 and highest <= 127:
            dtype: type = np.int8
        elif lowest >= 0 and highest <= 255:
            dtype = np.uint8
        else:
            raise KilnError(f"layer '{op.name}': its weight integers ({lowest}..{highest}) "
                            "fit neither int8 nor uint8")
        return (self.constant("weight", weight.astype(dtype)),
                self.constant("weight_zero", zero.astype(dtype)))


def _check_program(program: IntegerProgram, export_format: str) -> None:
    if export_format not in ("qoperator", "qdq"):
        raise KilnError(f"unknown ONNX export format '{export_format}': use qoperator or qdq")
    for op in program.layers():
        if op.attrs.get("weight_bits", 8) > 8:
            raise KilnError(f"layer '{op.name}': ONNX export supports weights of at most 8 bits")
    quants = [program.input_quant] + [op.out_quant for op in program.ops]
    for quant, where in zip(quants, ["the input"] + [f"'{op.name}'" for op in program.ops],
                            strict=True):
        if quant.bits > 8:
            raise KilnError(f"{where}: ONNX export supports activations of at most 8 bits, "
                            f"not {quant.bits}")


def _conv_qoperator(b: _Builder, op: IntOp, x: str) -> str:
    in_q, out_q = TensorQuant(**op.attrs["in_quant"]), op.out_quant
    weight, weight_zero = b.weights(op, op.arrays["weight"])
    weight_scale = b.scale(np.asarray(op.attrs["weight_scale"], np.float32))
    pads = list(op.attrs["padding"]) * 2
    y = b.node("QLinearConv", [x, b.scale(in_q.scale), b.zero_point(in_q), weight, weight_scale,
                               weight_zero, b.scale(out_q.scale), b.zero_point(out_q),
                               b.constant("bias", op.arrays["bias"].astype(np.int32))],
               op.name, strides=list(op.attrs["stride"]), pads=pads,
               dilations=list(op.attrs["dilation"]), group=op.attrs["groups"])
    return b.saturate(y, out_q, *op.attrs["clamp"])


def _dense_qoperator(b: _Builder, op: IntOp, x: str) -> str:
    """MatMulInteger, the int32 bias (if any), and the requantization written out with the
    engine's own float32 operations: one form for every linear layer."""
    in_q, out_q = TensorQuant(**op.attrs["in_quant"]), op.out_quant
    weight, weight_zero = b.weights(op, op.arrays["weight"].T)
    acc = b.node("MatMulInteger", [x, weight, b.zero_point(in_q), weight_zero],
                 op.name + "_acc")
    if op.arrays["bias"].any():
        acc = b.node("Add", [acc, b.constant("bias", op.arrays["bias"].astype(np.int32))],
                     op.name + "_bias")
    y = b.requantize_int32(acc, op.arrays["multiplier_f32"], out_q, [-1])
    return b.saturate(y, out_q, *op.attrs["clamp"])


def _centered_int32(b: _Builder, x: str, quant: TensorQuant) -> str:
    as_int = b.node("Cast", [x], "as_int32", to=6)
    zero = quant.zero_point + uint8_offset(quant)
    return b.node("Sub", [as_int, b.constant("zero", np.array(zero, np.int32))], "centered")


def _affine(b: _Builder, op: IntOp, x: str, rank: int) -> str:
    shape = [-1] + [1] * (rank - 2)
    centered = _centered_int32(b, x, TensorQuant(**op.attrs["in_quant"]))
    acc = b.node("Mul", [centered, b.constant("weight", op.arrays["weight"].astype(
        np.int32).reshape(shape))], op.name + "_mul")
    acc = b.node("Add", [acc, b.constant("bias", op.arrays["bias"].astype(np.int32).reshape(
        shape))], op.name + "_bias")
    y = b.requantize_int32(acc, op.arrays["multiplier_f32"], op.out_quant, shape)
    return b.saturate(y, op.out_quant, *op.attrs["clamp"])


def _requantize(b: _Builder, op: IntOp, x: str) -> str:
    centered = _centered_int32(b, x, TensorQuant(**op.attrs["in_quant"]))
    y = b.requantize_int32(centered, op.arrays["multiplier_f32"], op.out_quant, [])
    return b.saturate(y, op.out_quant, *op.attrs["clamp"])


def _avgpool(b: _Builder, op: IntOp, x: str, channels: int) -> str:
    in_q = TensorQuant(**op.attrs["in_quant"])
    kernel = op.attrs["kernel"]
    ones = np.ones((channels, 1, *kernel), dtype=np.uint8)
    sums = b.node("ConvInteger", [x, b.constant("ones", ones), b.zero_point(in_q)],
                  op.name + "_sum", group=channels, strides=list(op.attrs["stride"]))
    y = b.requantize_int32(sums, op.arrays["multiplier_f32"], op.out_quant, [])
    return b.saturate(y, op.out_quant, *op.attrs["clamp"])


def _add(b: _Builder, op: IntOp, x: str, y: str) -> str:
    terms = []
    for name, key, multiplier in ((x, "a_quant", "multiplier_f32"),
                                  (y, "b_quant", "multiplier_b_f32")):
        centered = _centered_int32(b, name, TensorQuant(**op.attrs[key]))
        as_float = b.node("Cast", [centered], "as_float", to=1)
        terms.append(b.node("Mul", [as_float, b.constant("multiplier",
                                                          op.arrays[multiplier][0])], "term"))
    total = b.node("Add", terms, op.name)
    out = b.node("QuantizeLinear", [total, b.scale(1.0), b.zero_point(op.out_quant)], "add_q")
    return b.saturate(out, op.out_quant, *op.attrs["clamp"])


def _structural(b: _Builder, op: IntOp, x: str) -> str:
    if op.kind == "maxpool":
        pads = list(op.attrs["padding"]) * 2
        return b.node("MaxPool", [x], op.name, kernel_shape=op.attrs["kernel"],
                      strides=op.attrs["stride"], pads=pads,
                      ceil_mode=int(op.attrs["ceil_mode"]))
    if op.kind == "pad":
        top, left, bottom, right = op.attrs["padding"]
        pads = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        fill = np.array(op.attrs["value"] + uint8_offset(op.out_quant), np.uint8)
        return b.node("Pad", [x, b.constant("pads", pads), b.constant("fill", fill)], op.name,
                      mode="constant")
    if op.kind == "flatten":
        return b.node("Reshape", [x, b.constant("shape", np.array([0, *op.attrs["shape"]],
                                                                   np.int64))], op.name)
    lo, hi = op.attrs["clamp"]
    offset = uint8_offset(op.out_quant)
    return b.node("Clip", [x, b.constant("lo", np.array(lo + offset, np.uint8)),
                           b.constant("hi", np.array(hi + offset, np.uint8))], op.name)


def _weighted_qdq(b: _Builder, op: IntOp, x: str) -> str:
    """DQ(x), DQ(weights), DQ(int32 bias) -> Conv/Gemm -> Q: fused by ONNX Runtime."""
    in_q, out_q = TensorQuant(**op.attrs["in_quant"]), op.out_quant
    weight_scale = np.asarray(op.attrs["weight_scale"], np.float32)
    x_float = b.node("DequantizeLinear", [x, b.scale(in_q.scale), b.zero_point(in_q)], "dq")
    weight, weight_zero = b.weights(op, op.arrays["weight"])
    w_float = b.node("DequantizeLinear", [weight, b.scale(weight_scale), weight_zero],
                     "dq_weight", axis=0)
    bias_scale = (np.float32(in_q.scale) * weight_scale).astype(np.float32)
    bias_float = b.node("DequantizeLinear", [
        b.constant("bias", op.arrays["bias"].astype(np.int32)), b.scale(bias_scale),
        b.constant("bias_zero", np.zeros(len(weight_scale), np.int32))], "dq_bias", axis=0)
    if op.kind == "conv":
        y = b.node("Conv", [x_float, w_float, bias_float], op.name,
                   strides=list(op.attrs["stride"]), pads=list(op.attrs["padding"]) * 2,
                   dilations=list(op.attrs["dilation"]), group=op.attrs["groups"])
    else:
        y = b.node("Gemm", [x_float, w_float, bias_float], op.name, transB=1)
    # A ReLU is the integer Clip below (Q(relu(y)) = max(Q(y), Q(0))): a float Relu
    # between the operator and its Q would stop ONNX Runtime's fusion unless the
    # zero point were the type's minimum.
    q = b.node("QuantizeLinear", [y, b.scale(out_q.scale), b.zero_point(out_q)], "q")
    return b.saturate(q, out_q, *op.attrs["clamp"])


def _output_integers(b: _Builder, final: str, quant: TensorQuant) -> None:
    """``output_q``: the program's integers (uint8 back to int8 for a signed output)."""
    from onnx import helper

    if not quant.signed:
        b.nodes.append(helper.make_node("Identity", [final], ["output_q"], name="output_q"))
        return
    as_int = b.node("Cast", [final], "output_int32", to=6)
    shifted = b.node("Sub", [as_int, b.constant("offset", np.array(128, np.int32))],
                     "output_signed")
    b.nodes.append(helper.make_node("Cast", [shifted], ["output_q"], name="output_q", to=3))


def export_onnx(program: IntegerProgram, path: str | Path, *,
                export_format: ExportFormat = "qoperator") -> Path:
    """Write ``program`` as an ONNX model (see the module docstring for the two forms).

    >>> export_onnx(program, "convnet-int8.onnx", export_format="qdq")   # doctest: +SKIP
    """
    import onnx
    from onnx import TensorProto, helper

    _check_program(program, export_format)
    b = _Builder(program)
    in_q = program.input_quant
    quantized_input = b.node("QuantizeLinear", [
        "input", b.scale(in_q.scale), b.zero_point(in_q)], "input_q")
    # QuantizeLinear saturates to uint8; an input narrower than 8 bits saturates further.
    names = {program.input_name: b.saturate(quantized_input, in_q, in_q.qmin, in_q.qmax)}
    shapes: dict[str, int] = {program.input_name: len(program.input_shape) + 1}
    channels: dict[str, int] = {program.input_name: program.input_shape[0]}
    for op in program.ops:
        x = names[op.inputs[0]]
        rank = shapes[op.inputs[0]]
        if op.kind in ("conv", "dense") and export_format == "qdq":
            y = _weighted_qdq(b, op, x)
        elif op.kind == "conv":
            y = _conv_qoperator(b, op, x)
        elif op.kind == "dense":
            y = _dense_qoperator(b, op, x)
        elif op.kind == "affine":
            y = _affine(b, op, x, rank)
        elif op.kind == "requantize":
            y = _requantize(b, op, x)
        elif op.kind == "avgpool":
            y = _avgpool(b, op, x, channels[op.inputs[0]])
        elif op.kind == "add":
            y = _add(b, op, x, names[op.inputs[1]])
        else:
            y = _structural(b, op, x)
        names[op.output] = y
        if op.kind == "flatten":
            shapes[op.output] = 1 + len(op.attrs["shape"])
        elif op.kind == "dense":
            shapes[op.output] = 2
        else:
            shapes[op.output] = rank
        if op.kind in ("conv", "dense"):
            channels[op.output] = op.arrays["weight"].shape[0]
        elif op.kind == "flatten":
            channels[op.output] = op.attrs["shape"][0]
        else:
            channels[op.output] = channels[op.inputs[0]]
    out_q = program.output_quant
    final = names[program.output_name]
    _output_integers(b, final, out_q)
    b.nodes.append(helper.make_node("DequantizeLinear", [
        final, b.scale(out_q.scale), b.zero_point(out_q)], ["output"], name="output"))
    elem = TensorProto.INT8 if out_q.signed else TensorProto.UINT8

    probe = np.full((1, *program.input_shape), in_q.zero_point, dtype=np.int64)
    out_shape = ["batch", *run(program, probe).shape[1:]]
    graph = helper.make_graph(
        b.nodes, f"{program.name}_{export_format}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       ["batch", *program.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape),
         helper.make_tensor_value_info("output_q", elem, out_shape)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kiln")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
