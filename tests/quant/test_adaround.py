"""AdaRound: learned rounding beats rounding to nearest where rounding matters, the weights
it leaves are on their quantizer's grid (so lowering gives exactly the chosen integers),
and a model file keeps that grid."""

from __future__ import annotations

import numpy as np
import torch

from kiln.data import load_dataset
from kiln.integer import export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx
from kiln.models import evaluate, resolve_model
from kiln.models.artifacts import load_model, quantize_step, save_model
from kiln.quant import calibrate, quantize, uniform_config
from kiln.quant.adaround import adaround
from kiln.training import predict


def test_learned_rounding_recovers_3_bit_weights_and_lowers_exactly(tmp_path):
    # The convnet at W3A8 (per-channel): 76.49% rounding to nearest, 90.71% measured with
    # AdaRound (500 steps a layer); 150 steps here.
    fashion = load_dataset("fashion-mnist")
    convnet, info = resolve_model("convnet", pretrained=True)
    config = uniform_config(3, 8, weight={"range": "minmax"})  # the grid rounding matters on
    nearest = calibrate(quantize(convnet, config), fashion)
    rounded = adaround(nearest, fashion, iterations=150, batches=2)
    assert evaluate(rounded, fashion) >= evaluate(nearest, fashion) + 0.05
    layer = rounded.module.get_submodule("features.4")
    quantizer = layer.weight_quantizer
    assert quantizer.frozen
    steps = layer.weight / quantizer.scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # on the grid
    assert steps.abs().max() <= 4  # 3-bit signed
    # the engine against the fake-quant graph: as rounding to nearest at 3 bits (a few
    # outputs 2 LSB apart where float and integer requantization round differently), and
    # ONNX Runtime against the engine to the bit
    program = lower(rounded, rounding="float32")
    x = fashion.x_test[:256]
    ours = run(program, program.input_quant.quantize(x))
    reference = program.output_quant.quantize(predict(rounded, x))
    assert (np.abs(ours - reference) <= 1).mean() >= 0.99
    onnx_path = export_onnx(program, tmp_path / "model.onnx", export_format="qdq")
    assert check_onnx(program, onnx_path, x).bit_exact
    path = save_model(rounded, tmp_path / "ada.pt",
                      {**info.recipe, "steps": [quantize_step(config)]},
                      dataset="fashion-mnist")
    reloaded, _ = load_model(path)
    x = torch.as_tensor(x)
    with torch.no_grad():
        assert torch.equal(reloaded.module(x), rounded.module(x))
