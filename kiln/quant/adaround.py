"""Learned rounding (AdaRound, Nagel et al. 2020): round each weight up or down so that the
layer's output, not each weight, stays closest to the float layer's.

Rounding to nearest minimizes each weight's own error, but a layer's output error is a sum
over its weights, and choosing the rounding direction per weight can cancel errors. For
each quantized conv/linear layer in network order (earlier layers already rounded), on the
inputs the quantized network gives it over the calibration data, AdaRound optimizes a
continuous variable V per weight: the soft integer is floor(w / s) + h(V), with h a
rectified sigmoid in [0, 1], and the loss is the squared error of the layer's output
against the float weights' output on the same inputs plus a regularizer
sum(1 - |2 h(V) - 1|^beta) that pushes every h to 0 or 1 as beta anneals from 20 to 2.
Then each weight is rounded up where h(V) >= 0.5.

The result: weights exactly on their quantizer's grid, with the quantizer's scale and zero
point frozen (its range no longer follows the weights), so that lowering produces exactly
the chosen integers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kiln.graph import Graph
from kiln.quant.fake_quant import channel_view
from kiln.quant.layers import QuantConv2d, QuantLinear
from kiln.quant.quantize import calibration_batches, layer_inputs

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)


def _soft(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround(graph: Graph, data: Any, *, iterations: int = 1000, batches: int = 8,
             batch_size: int = 256, step_batch: int = 128, regularization: float = 0.01,
             seed: int = 0) -> Graph:
    """A copy of a quantized, calibrated ``graph`` whose integer weights are rounded by
    AdaRound (see the module's docstring); ``data`` as :func:`~kiln.quant.calibrate` takes.

    >>> from kiln.quant import calibrate, quantize, uniform_config      # doctest: +SKIP
    >>> rounded = adaround(calibrate(quantize(graph, uniform_config(4, 4)), ds), ds)
    """
    result = graph.copy()
    module = result.module
    chunks = calibration_batches(data, batches=batches, batch_size=batch_size, seed=seed)
    layers = [m for m in module.modules()
              if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer is not None
              and m.weight_quantizer.spec.format == "int"]
    generator = torch.Generator().manual_seed(seed)
    was_training = module.training
    module.eval()
    try:
        for layer in layers:
            quantizer = layer.weight_quantizer
            x_all = layer_inputs(module, layer, chunks)
            weight = layer.weight.detach()
            with torch.no_grad():
                quantizer(weight)  # the grid: the quantizer's range for these weights
                target_all = layer.output_with(x_all, weight)
            axis = quantizer.spec.axis if quantizer.spec.granularity == "channel" else 0
            scale = channel_view(quantizer.scale, weight, axis).detach()
            zero = channel_view(quantizer.zero_point, weight, axis).detach()
            qmin, qmax = quantizer.spec.qmin, quantizer.spec.qmax
            floor = torch.floor(weight / scale)
            rest = weight / scale - floor
            v = torch.log((rest - GAMMA) / (ZETA - rest)).clamp(-10, 10).requires_grad_()
            optimizer = torch.optim.Adam([v], lr=1e-2)
            warmup = iterations // 5
            for step in range(iterations):
                pick = torch.randint(0, x_all.shape[0], (min(step_batch, x_all.shape[0]),),
                                     generator=generator)
                integers = torch.clamp(floor + _soft(v) + zero, qmin, qmax)
                output = layer.output_with(x_all[pick], scale * (integers - zero))
                loss = (output - target_all[pick]).square().sum(dim=1).mean()
                if step >= warmup:
                    progress = (step - warmup) / max(iterations - warmup, 1)
                    beta = 2 + 18 * (1 + math.cos(math.pi * progress)) / 2  # 20 -> 2
                    loss = loss + regularization * (
                        1 - (2 * _soft(v) - 1).abs().pow(beta)).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                integers = torch.clamp(floor + (v >= 0).float() + zero, qmin, qmax)
                layer.weight.copy_(scale * (integers - zero))
            quantizer.frozen = True  # the grid stays where the rounding was chosen
    finally:
        module.train(was_training)
    return result
