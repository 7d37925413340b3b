"""Quantization: number formats, quantizers, calibration and quantization-aware training.

>>> from kiln.models import resolve_model
>>> from kiln.data import load_dataset
>>> from kiln.quant import quantize, calibrate, uniform_config
>>> graph, _ = resolve_model("convnet", pretrained=True)
>>> q = calibrate(quantize(graph, uniform_config(8, 8)), load_dataset("fashion-mnist"))
"""

from kiln.quant.config import LayerQuant, QuantConfig, uniform_config
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.qat import qat
from kiln.quant.quantize import UnmatchedRuleWarning, calibrate, quantize, quantizers
from kiln.quant.spec import QuantSpec

__all__ = [
    "FakeQuantize",
    "LayerQuant",
    "QuantConfig",
    "QuantSpec",
    "UnmatchedRuleWarning",
    "calibrate",
    "qat",
    "quantize",
    "quantizers",
    "uniform_config",
]
