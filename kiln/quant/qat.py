"""Quantization-aware training: fine-tune a quantized graph with STE or LSQ."""

from __future__ import annotations

from typing import Literal

from kiln.data import Dataset
from kiln.errors import ConfigError
from kiln.graph.core import Graph
from kiln.models.training import TrainResult, fit
from kiln.quant.quantize import quantizers


def qat(graph: Graph, dataset: Dataset, *, method: Literal["ste", "lsq"] = "ste",
        epochs: int = 2, lr: float = 5e-4, batch_size: int = 128, seed: int = 0,
        **fit_options) -> tuple[Graph, TrainResult]:
    """Fine-tune a quantized (and calibrated) copy of ``graph``; the input is untouched.

    * ``ste``: weights train through the straight-through estimator; weight ranges
      follow the weights, activation ranges stay as calibrated.
    * ``lsq``: every integer quantizer's step size becomes a parameter trained with the
      weights (learned step size quantization, Esser et al. 2020), initialised from the
      current ranges.

    >>> from kiln.quant import quantize, calibrate, uniform_config      # doctest: +SKIP
    >>> tuned, result = qat(calibrate(quantize(g, uniform_config(4, 8)), ds), ds)
    """
    if method not in ("ste", "lsq"):
        raise ConfigError(f"unknown QAT method '{method}': use 'ste' or 'lsq'")
    tuned = graph.copy()
    if method == "lsq":
        with_data = tuned.module
        with_data.eval()
        x = dataset.tensors("train")[0][:2]
        with_data(x)  # weight quantizers derive their starting ranges
        for _, quantizer in quantizers(tuned):
            if quantizer.spec.format == "int":
                quantizer.learn_scale()
    result = fit(tuned, dataset, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 **fit_options)
    return tuned, result
