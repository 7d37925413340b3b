"""Networks whose tensors branch: a layer's output read raw and through a ReLU, two layers
reading one input, a residual add that ends the network before a pool. Each lowers, the
engine agrees with the fake-quant model, and ONNX Runtime with the engine to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kiln.data import load_dataset
from kiln.graph import from_torch
from kiln.integer import export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx
from kiln.quant import calibrate, quantize, uniform_config
from kiln.training import predict


class RawAndRelu(nn.Module):
    """The stem's output goes raw into the add and through a ReLU into the body; the add,
    max-pooled, is the network's output (no layer after it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 10, 3, padding=1)
        self.body = nn.Conv2d(10, 10, 3, padding=1)
        self.pool = nn.MaxPool2d(28)

    def forward(self, x):
        h = self.stem(x)
        return self.pool(h + self.body(torch.relu(h))).flatten(1)


class TwoReadersOfTheInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(784, 10)
        self.b = nn.Linear(784, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) + self.b(x)


class FunctionalPools(nn.Module):
    """Pools called as functions in forward (no pool module): a user's ResPool broke the
    lowering with "'function' object has no attribute 'split'"."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(self.c2(y)) + y
        pooled = torch.nn.functional.max_pool2d(z, 3, stride=2, padding=1)  # 28 -> 14
        pooled = torch.nn.functional.avg_pool2d(pooled, kernel_size=(3, 3), stride=3)  # -> 4
        return self.fc(pooled.flatten(1))


@pytest.mark.parametrize("network", [RawAndRelu, TwoReadersOfTheInput, FunctionalPools])
def test_branching_networks_lower_and_agree(network, tmp_path):
    torch.manual_seed(0)
    dataset = load_dataset("fashion-mnist")
    graph = from_torch(network(), torch.randn(1, 1, 28, 28))
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=2)
    program = lower(quantized, rounding="float32")
    x = dataset.x_test[:256]
    ours = run(program, program.input_quant.quantize(x))
    reference = program.output_quant.quantize(predict(quantized, x))
    assert np.abs(ours - reference).max() <= 1  # one rounding step at most
    assert len({op.output for op in program.ops}) == len(program.ops)  # one name each
    if network is FunctionalPools:
        pools = {op.kind: op.attrs for op in program.ops if op.kind.endswith("pool")}
        assert (pools["maxpool"]["kernel"], pools["maxpool"]["stride"],
                pools["maxpool"]["padding"]) == ([3, 3], [2, 2], [1, 1])
        assert (pools["avgpool"]["kernel"], pools["avgpool"]["stride"]) == ([3, 3], [3, 3])
    path = export_onnx(program, tmp_path / "model.onnx", export_format="qdq")
    assert check_onnx(program, path, x).bit_exact


class ResidualThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(28)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.fc(self.pool(h + self.body(h)).flatten(1))


def test_a_config_rule_sets_the_width_of_residual_adds(tmp_path):
    from kiln.errors import ConfigError
    from kiln.quant import QuantConfig

    torch.manual_seed(0)
    dataset = load_dataset("fashion-mnist")
    graph = from_torch(ResidualThenLinear(), torch.randn(1, 1, 28, 28))
    activation = {"bits": 8, "signed": False, "symmetric": False}
    config = {"default": {"weight": {"bits": 8}, "input": activation},
              "rules": [{"match": {"op": ["add"]},
                         "output": {**activation, "bits": 6}},
                        {"match": {"name": ["@last"]}, "output": {"bits": 8}}]}
    quantized = calibrate(quantize(graph, config), dataset, batches=2)
    program = lower(quantized, rounding="float32")
    add = next(op for op in program.ops if op.kind == "add")
    assert add.out_quant.bits == 6  # the rule's width, requantized to 8 for the next layer
    x = dataset.x_test[:256]
    path = export_onnx(program, tmp_path / "model.onnx", export_format="qdq")
    assert check_onnx(program, path, x).bit_exact
    with pytest.raises(ConfigError, match="unknown op 'mul'"):
        QuantConfig.parse({"rules": [{"match": {"op": ["mul"]}, "output": activation}]})


def test_minifloat_and_bfp_weights_are_refused_by_name():
    from kiln.errors import KilnError
    from kiln.models import build_graph

    config = {"default": {"input": {"bits": 8, "signed": False, "symmetric": False}},
              "rules": [{"match": {"op": ["conv"]},
                         "weight": {"format": "minifloat", "preset": "fp8_e4m3"}},
                        {"match": {"name": ["classifier_1"]},
                         "weight": {"format": "bfp", "bits": 4, "block_size": 16}}]}
    quantized = calibrate(quantize(build_graph("convnet"), config),
                          load_dataset("fashion-mnist"), batches=1)
    with pytest.raises(KilnError, match=r"not integers: 'classifier_1' \(bfp\), "
                                        r"'features_0' \(minifloat\)"):
        lower(quantized)


def test_an_average_pool_with_a_divisor_override_is_refused_by_name():
    # the integer program divides by the window; a call's divisor_override was dropped
    from kiln.errors import KilnError

    class Overridden(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 13 * 13, 10)

        def forward(self, x):
            pooled = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2,
                                                    divisor_override=3)
            return self.fc(pooled.flatten(1))

    dataset = load_dataset("fashion-mnist")
    graph = from_torch(Overridden(), torch.randn(1, 1, 28, 28))
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=1)
    with pytest.raises(KilnError, match="divisor_override"):
        lower(quantized)
