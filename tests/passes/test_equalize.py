"""Cross-layer equalization: the function is unchanged, the ranges are equal, and it
recovers per-tensor weights on the shipped convnet."""

from __future__ import annotations

import torch
from torch import nn

from kiln.data import load_dataset
from kiln.graph import from_torch
from kiln.models import evaluate, resolve_model
from kiln.passes.equalize import equalizable_pairs, equalize
from kiln.passes.fuse import fuse_batchnorm
from kiln.quant import calibrate, quantize, uniform_config


class Chain(nn.Module):
    """conv -> ReLU -> max pool -> conv -> flatten -> linear, and a ReLU6 chain end."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.flatten(torch.relu(self.conv2(x)), 1)
        return self.out(nn.functional.relu6(self.fc(x)))


def test_function_kept_and_ranges_equal():
    torch.manual_seed(0)
    network = Chain()
    with torch.no_grad():  # channels of very different ranges
        network.conv1.weight *= torch.logspace(-2, 1, 6).reshape(6, 1, 1, 1)
        network.conv2.weight *= torch.logspace(1, -1, 4).reshape(4, 1, 1, 1)
    x = torch.randn(16, 3, 10, 10)
    graph = from_torch(network, x[:1])
    pairs = equalizable_pairs(graph)
    # conv1 -> conv2, conv2 -> fc (through the flatten: 4 features per channel); fc -> out
    # ends at the ReLU6
    assert [(p.first.weight.shape[0], p.second.weight.shape[1], p.block) for p in pairs] == [
        (6, 6, 1), (4, 16, 4)]
    equalized = equalize(graph)
    assert torch.allclose(equalized.module(x), graph.module(x), rtol=1e-4, atol=1e-5)
    conv1, conv2 = equalized.module.conv1, equalized.module.conv2
    out_range = conv1.weight.reshape(6, -1).abs().amax(1)
    in_range = conv2.weight.transpose(0, 1).reshape(6, -1).abs().amax(1)
    assert torch.allclose(out_range, in_range, rtol=0.01)
    before = network.conv1.weight.reshape(6, -1).abs().amax(1)
    assert before.max() / before.min() > 100 > out_range.max() / out_range.min()
    assert torch.equal(graph.module.conv1.weight, network.conv1.weight)  # input untouched


def test_it_recovers_per_tensor_3_bit_weights():
    # The convnet's BN-folded first conv has channels ~30x apart: one 3-bit step per tensor
    # leaves the narrow ones nothing (64.90%); equalized, 80.87% (measured).
    fashion = load_dataset("fashion-mnist")
    convnet = resolve_model("convnet", pretrained=True)[0]
    config = uniform_config(3, 8, weight={"granularity": "tensor", "range": "minmax"})
    plain = evaluate(calibrate(quantize(convnet, config), fashion), fashion)
    config = uniform_config(3, 8, weight={"granularity": "tensor", "range": "minmax"},
                            equalize=True)
    equalized = evaluate(calibrate(quantize(convnet, config), fashion), fashion)
    assert equalized >= plain + 0.08
    assert len(equalizable_pairs(fuse_batchnorm(convnet))) == 3
