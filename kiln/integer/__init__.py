"""Integer-only inference (Jacob et al. 2018): arithmetic, lowering, engine, ONNX export.

>>> from kiln.integer import lower, run_float, IntegerProgram      # doctest: +SKIP
>>> program = lower(quantized_graph, rounding="nearest")
>>> program.save("out/convnet-int8")
>>> logits = run_float(IntegerProgram.load("out/convnet-int8"), images)
"""

from kiln.integer.arith import (
    accumulator_bits,
    quantize_multiplier,
    requantize,
)
from kiln.integer.engine import run, run_float
from kiln.integer.lower import lower
from kiln.integer.onnx_export import export_onnx
from kiln.integer.ops import im2col, qconv2d, qmatmul
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant

__all__ = [
    "IntOp",
    "IntegerProgram",
    "TensorQuant",
    "accumulator_bits",
    "export_onnx",
    "im2col",
    "lower",
    "qconv2d",
    "qmatmul",
    "quantize_multiplier",
    "requantize",
    "run",
    "run_float",
]
