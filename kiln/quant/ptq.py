"""What post-training quantization does after calibration: learned rounding when asked,
otherwise bias correction (by default when weights are narrower than 8 bits). ``kiln
quantize``, ``kiln.quantize`` and the flow's PTQ all end here."""

from __future__ import annotations

from typing import Any

from kiln.errors import ConfigError
from kiln.graph import Graph
from kiln.quant.adaround import adaround as learn_rounding
from kiln.quant.bias_correction import correct_bias, corrects_by_default


def refine_weights(quantized: Graph, data: Any, *, batches: int = 8,
                   bias_correction: bool | None = None, adaround: bool = False
                   ) -> tuple[Graph, bool]:
    """``(graph, biases corrected)`` for a quantized, calibrated graph and its calibration
    data. AdaRound replaces the float weights with the rounding it chose, so bias correction
    after it has nothing to correct: asking for both is an error.

    >>> refined, corrected = refine_weights(calibrated, dataset)   # doctest: +SKIP
    """
    if adaround:
        if bias_correction:
            raise ConfigError("AdaRound chooses the rounding that bias correction would "
                              "correct: use one of them")
        return learn_rounding(quantized, data, batches=batches), False
    if bias_correction is None:
        bias_correction = corrects_by_default(quantized)
    if bias_correction:
        quantized = correct_bias(quantized, data, batches=batches)
    return quantized, bias_correction
