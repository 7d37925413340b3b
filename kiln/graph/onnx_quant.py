"""Pre-quantized ONNX models in: QDQ (QuantizeLinear / DequantizeLinear, as ONNX Runtime's
quantizer and kiln's own export write them) and QONNX ``Quant`` nodes (Brevitas, FINN).

They become a quantized Graph with the file's scales and zero points, so ``lower`` takes
them without calibrating again:

* a constant passed through DequantizeLinear or Quant (weights) is folded to its real
  values, and the conv or linear layer using it gets a *fixed* weight quantizer with the
  file's scale, zero point and width (per channel where the file has a scale per output
  channel);
* QuantizeLinear, or Quant, on a computed tensor becomes a fixed activation quantizer
  (:meth:`FakeQuantize.fixed`); the DequantizeLinear that reads it back is the identity
  in a float graph. Between the two, integer Clip and Pad bounds are turned into real
  values; MaxPool, Reshape, Flatten, Transpose and Identity pass through;
* a 32-bit bias through DequantizeLinear is folded to real values; ``lower`` rounds it
  back to the same integers at the accumulator's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kiln.errors import UnsupportedOperatorError

QONNX_DOMAINS = frozenset({"qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general"})
#: Ops that move integers around without changing them (valid between Q and DQ).
INTEGER_PASS_THROUGH = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Identity",
                                  "Squeeze", "Unsqueeze"})
_WIDTHS = {2: (8, False), 3: (8, True), 4: (16, False), 5: (16, True), 6: (32, True)}  # ONNX types


@dataclass
class QuantParams:
    """How a tensor's integers map to real values: real = scale · (q − zero_point)."""

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    signed: bool
    axis: int | None = None  # the per-channel axis, None per tensor
    narrow: bool = False

    def real(self, integer: float) -> float:
        """The real value of an integer (per-tensor parameters)."""
        return float((integer - float(self.zero_point.reshape(-1)[0])) *
                     float(self.scale.reshape(-1)[0]))


def _element_width(elem_type: int) -> tuple[int, bool]:
    if elem_type not in _WIDTHS:
        raise UnsupportedOperatorError(f"quantized ONNX element type {elem_type} (kiln reads "
                                       "int8, uint8, int16, uint16 and int32)")
    return _WIDTHS[elem_type]


def dequantize_constant(node: Any, inputs: list[np.ndarray | None], attrs: dict[str, Any]
                        ) -> tuple[np.ndarray, QuantParams]:
    """A DequantizeLinear or QONNX Quant of a constant: its real values and parameters."""
    values = np.asarray(inputs[0])
    if node.op_type == "DequantizeLinear":
        scale = np.asarray(inputs[1], dtype=np.float32)
        zero = np.asarray(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else \
            np.zeros((), values.dtype)
        bits, signed = {np.dtype(np.int8): (8, True), np.dtype(np.uint8): (8, False),
                        np.dtype(np.int16): (16, True), np.dtype(np.uint16): (16, False),
                        np.dtype(np.int32): (32, True)}.get(values.dtype, (0, False))
        if not bits:
            raise UnsupportedOperatorError(f"DequantizeLinear of {values.dtype} values")
        axis = int(attrs.get("axis", 1)) if scale.size > 1 else None
        params = QuantParams(scale, zero.astype(np.int64), bits, signed, axis)
        real = (values.astype(np.float64) - _along(params.zero_point, values, axis)) * \
            _along(scale.astype(np.float64), values, axis)
        return real.astype(np.float32), params
    # QONNX Quant(x, scale, zeropt, bitwidth): real values quantized to integers, then back
    params = qonnx_params(inputs, attrs, values.ndim)
    integers = _qonnx_integers(values, params)
    real = (integers - _along(params.zero_point, values, params.axis)) * \
        _along(params.scale.astype(np.float64), values, params.axis)
    return real.astype(np.float32), params


def _along(values: np.ndarray, like: np.ndarray, axis: int | None) -> np.ndarray:
    values = np.asarray(values)
    if axis is None or values.size == 1:
        return values.reshape(())
    shape = [1] * like.ndim
    shape[axis] = -1
    return values.reshape(shape)


def qonnx_params(inputs: list[Any], attrs: dict[str, Any], rank: int) -> QuantParams:
    scale = np.asarray(inputs[1], dtype=np.float32)
    zero = np.asarray(inputs[2], dtype=np.float32)
    bits_value = float(np.asarray(inputs[3]).reshape(-1)[0])
    if bits_value != int(bits_value) or not 2 <= bits_value <= 16:
        raise UnsupportedOperatorError(f"QONNX Quant with bit width {bits_value} (kiln "
                                       "lowers integer widths of 2 to 16)")
    if np.any(zero != np.round(zero)):
        raise UnsupportedOperatorError("QONNX Quant with a fractional zero point")
    rounding = attrs.get("rounding_mode", b"ROUND")
    rounding = rounding.decode() if isinstance(rounding, bytes) else rounding
    if rounding.upper() not in ("ROUND", "HALF_EVEN"):
        raise UnsupportedOperatorError(f"QONNX Quant with rounding mode {rounding} (kiln "
                                       "rounds half to even, QONNX's ROUND)")
    axis = None
    if scale.size > 1:
        nontrivial = [i for i, size in enumerate(scale.shape) if size > 1]
        axis = nontrivial[0] - (scale.ndim - rank) if len(nontrivial) == 1 else None
        if axis is None:
            raise UnsupportedOperatorError("QONNX Quant scales along several axes")
    return QuantParams(scale.reshape(-1) if axis is not None else scale.reshape(()),
                       zero.reshape(-1).astype(np.int64) if zero.size > 1 else
                       zero.reshape(()).astype(np.int64), int(bits_value),
                       bool(attrs.get("signed", 1)), axis, bool(attrs.get("narrow", 0)))


def _qonnx_integers(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """QONNX's order: divide, add the zero point, clip, round half to even. (For a tensor
    computed at run time kiln's quantizer rounds first and adds the zero point after, as
    ONNX QuantizeLinear does: the two differ only on an exact tie with an odd zero point.)
    """
    lo, hi = integer_range(params)
    scaled = values.astype(np.float64) / _along(params.scale.astype(np.float64), values,
                                                params.axis)
    return np.rint(np.clip(scaled + _along(params.zero_point, values, params.axis), lo, hi))


def integer_range(params: QuantParams) -> tuple[int, int]:
    if params.signed:
        low, high = -(2 ** (params.bits - 1)), 2 ** (params.bits - 1) - 1
        return (low + 1 if params.narrow else low), high
    return 0, 2**params.bits - 1 - (1 if params.narrow else 0)


class QuantizerFactory(Protocol):
    """What the importer needs from kiln.quant to build a pre-quantized graph (the graph
    room sits below kiln.quant, so it is handed these rather than importing them):
    :data:`kiln.quant.onnx_quantizers.ONNX_QUANTIZERS` is kiln's."""

    def activation(self, params: QuantParams, rank: int) -> tuple[Any, Any]:
        """A fixed activation quantizer module, and a clamp module (or None) before it."""

    def layer(self, layer: Any, params: QuantParams, channel_axis_in_file: int | None) -> Any:
        """``layer`` (nn.Conv2d / nn.Linear) with the file's weight quantization, fixed."""


def quantize_node(imp: Any, node: Any, params: QuantParams) -> list[Any]:
    """A QuantizeLinear / Quant on a computed tensor: the fixed fake quantizer."""
    x = imp.dynamic(node.input[0], node)
    rank = imp.example(x).dim()
    quantizer, clamp = imp.quantizers_for(node).activation(params, rank)
    if clamp is not None:
        x = imp.call_module(f"{node.name or node.output[0]}_narrow", clamp, x)
    out = imp.call_module(f"{node.name or node.output[0]}_quant", quantizer, x)
    imp.quant_params[node.output[0]] = params
    return [out]


def linear_params(imp: Any, node: Any, kind: str) -> QuantParams:
    """The quantization a QuantizeLinear (or DequantizeLinear) node names."""
    scale = imp.require_constant(node, 1, f"the {kind} scale")
    zero = imp.require_constant(node, 2, f"the {kind} zero point")
    if zero is None:
        zero, elem_type = np.zeros((), np.uint8), 2
    else:
        elem_type = {np.dtype(np.int8): 3, np.dtype(np.uint8): 2, np.dtype(np.int16): 5,
                     np.dtype(np.uint16): 4, np.dtype(np.int32): 6}.get(zero.dtype, 0)
    bits, signed = _element_width(elem_type)
    scale = np.asarray(scale, np.float32)
    return QuantParams(scale if scale.size > 1 else scale.reshape(()),
                       np.asarray(zero).astype(np.int64), bits, signed,
                       None if scale.size == 1 else int(imp.attrs_of(node).get("axis", 1)))


def same_params(a: QuantParams, b: QuantParams) -> bool:
    return (a.bits == b.bits and a.signed == b.signed and
            np.allclose(a.scale, b.scale, rtol=0, atol=0) and
            np.array_equal(a.zero_point, b.zero_point))
