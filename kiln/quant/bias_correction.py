"""Empirical bias correction: remove the mean error that weight quantization adds.

Rounding a layer's weights shifts the mean of its outputs: E[W_q x] - E[W x] = (W_q - W) E[x]
per output channel, which is not zero when the rounding errors of a channel's weights
do not cancel against its inputs' means (few levels, inputs that are all positive after a
ReLU). Nagel et al. (2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction") subtract that shift from the bias; this is the empirical form (as in NNCF's
and Brevitas's bias correction): for each quantized layer in network order, run the
calibration inputs through the network as quantized so far (earlier layers already
corrected), and, on the layer's own input, take the mean over the batch and the spatial
positions of (output with quantized weights) - (output with float weights) per channel.

Only the float bias changes: the integer lowering quantizes it as any other bias, so the
integer program stays bit-exact with its fake-quant graph. A layer without a bias gets none
(a new parameter would change the graph's structure).
"""

from __future__ import annotations

from typing import Any

import torch

from kiln.graph import Graph
from kiln.quant.layers import QuantConv2d, QuantLinear
from kiln.quant.quantize import calibration_batches, layer_inputs

#: Bias correction is on by default when some layer's weights are narrower than this.
CORRECT_BELOW_BITS = 8


def corrects_by_default(graph: Graph) -> bool:
    """Whether ``kiln quantize`` corrects biases of this quantized graph when not told:
    when some layer has integer weights narrower than 8 bits. Measured (benchmarks/
    compression_defaults.py): convnet W4A8 per-channel 90.31% -> 91.37%, W3A8 76.49% ->
    84.76%, W4A4 89.80% -> 91.07%; jsc-three-linear W4A8 49.10% -> 53.15%; at W8A8 the
    shift is below the noise (convnet 91.99% -> 91.83%, jsc 55.35% -> 55.30%).
    """
    return any(layer.weight_quantizer.spec.format == "int"
               and layer.weight_quantizer.spec.bits < CORRECT_BELOW_BITS
               for layer in graph.module.modules()
               if isinstance(layer, (QuantConv2d, QuantLinear))
               and layer.weight_quantizer is not None)


def correct_bias(graph: Graph, data: Any, *, batches: int = 8, batch_size: int = 256,
                 seed: int = 0) -> Graph:
    """A copy of a quantized, calibrated ``graph`` whose layers' biases absorb the mean
    output shift their weight quantization causes (see the module's docstring).

    ``data`` is what :func:`~kiln.quant.calibrate` takes (a dataset or a tensor of inputs);
    use the same calibration data.

    >>> from kiln.quant import calibrate, quantize, uniform_config      # doctest: +SKIP
    >>> q = calibrate(quantize(graph, uniform_config(4, 8)), dataset)
    >>> corrected = correct_bias(q, dataset)
    """
    result = graph.copy()
    module = result.module
    chunks = calibration_batches(data, batches=batches, batch_size=batch_size, seed=seed)
    layers = [m for m in module.modules()
              if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer is not None
              and m.bias is not None]
    was_training = module.training
    module.eval()
    try:
        for layer in layers:
            x = layer_inputs(module, layer, chunks)
            with torch.no_grad():
                difference = (layer(x) - layer.output_with(x, layer.weight)).double()
                # the mean over everything but the channels: dim 1 of a conv's [N, C, ...],
                # the last of a linear layer's [..., C]
                channel = difference.dim() - 1 if isinstance(layer, QuantLinear) else 1
                others = [d for d in range(difference.dim()) if d != channel]
                layer.bias -= difference.mean(dim=others).to(layer.bias.dtype)
    finally:
        module.train(was_training)
    return result
