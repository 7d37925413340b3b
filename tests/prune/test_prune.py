import pytest
import torch

from kiln.data import load_dataset
from kiln.errors import ConfigError
from kiln.models import build_graph, fit
from kiln.passes import model_size
from kiln.prune import (
    apply_masks,
    prune_channels,
    prune_filters,
    prune_magnitude,
    shrink,
    sparsity,
)
from kiln.quant import quantize, uniform_config


def _randomize_bn(graph):
    with torch.no_grad():
        for module in graph.module.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-0.2, 0.2)
    return graph


@pytest.mark.parametrize("name", ["convnet", "resnet18-cifar", "mobilenetv2-cifar",
                                  "jsc-three-linear"])
@pytest.mark.parametrize("method", [prune_filters, prune_channels])
def test_shrink_equals_masked_model(name, method):
    graph = _randomize_bn(build_graph(name))
    pruned = method(graph, fraction=0.5)
    small = shrink(pruned)
    assert small.total_params < graph.total_params
    x = torch.randn(3, *graph.input_shape[1:])
    with torch.no_grad():
        assert (pruned(x) - small(x)).abs().max() <= 1e-5
    assert pruned.total_params == graph.total_params  # masks only, until shrink


def test_filter_pruning_shrinks_conv_bn_conv_and_flatten_linear():
    small = shrink(prune_filters(build_graph("convnet"), fraction=0.5))
    convs = [i for i in small.layers() if i.loops is not None]
    assert [(i.loops.C, i.loops.K) for i in convs] == [(1, 8), (8, 16), (784, 32), (32, 10)]
    assert small.total_params == 26_722


def test_residual_adds_keep_consistent_channels():
    graph = build_graph("resnet18-cifar")
    small = shrink(prune_filters(graph, fraction=0.5))
    with torch.no_grad():
        small(torch.randn(2, 3, 32, 32))  # runs: every add has matching channels
    adds = [i for i in small.layers() if i.op.value == "add"]
    assert all(len({s[1] for s in i.input_shapes}) == 1 for i in adds)


def test_magnitude_pruning_and_masks_survive_training():
    graph = build_graph("jsc-three-linear", (16,), 26)
    pruned = prune_magnitude(graph, fraction=0.6)
    assert sparsity(pruned.module) == pytest.approx(0.6, abs=0.01)
    global_pruned = prune_magnitude(graph, fraction=0.6, scope="global")
    assert sparsity(global_pruned.module) == pytest.approx(0.6, abs=0.01)
    fit(pruned, load_dataset("letter"), epochs=1, after_step=apply_masks)
    assert sparsity(pruned.module) >= 0.6 - 0.01
    by_threshold = prune_magnitude(graph, threshold=0.1)
    weights = [m.weight for m in by_threshold.module.modules() if hasattr(m, "weight_mask")]
    assert all(((w == 0) | (w.abs() > 0.1)).all() for w in weights)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_fractions(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        prune_filters(build_graph("convnet"), fraction=fraction)


def test_size_accounting():
    graph = build_graph("convnet")
    assert model_size(graph).total_bytes == 4 * graph.total_params
    int4 = quantize(graph, uniform_config(4))
    layer = model_size(int4).layers[0]  # conv 1->16 3x3, per-channel int4, bias 16
    assert layer.weight_bits_total == 144 * 4
    assert layer.overhead_bits_total == 16 * 32 + 16 * 32  # scales + int32 bias
    sparse = prune_magnitude(int4, fraction=0.75)
    csr = model_size(sparse, sparse_format="csr").layers[2]  # 64 x 1568
    nonzeros = csr.nonzeros
    assert csr.index_bits_total == nonzeros * 11 + 65 * 32
    bitmap = model_size(sparse, sparse_format="bitmap").layers[2]
    assert bitmap.index_bits_total == 64 * 1568
    assert model_size(sparse, sparse_format="auto").total_bytes < model_size(sparse).total_bytes


def test_a_quantized_mlp_that_starts_with_a_flatten_shrinks():
    """After QAT an input quantizer sits between the flatten and the first linear layer;
    pruning must see through it (it used to pin every channel: nothing shrank)."""
    from torch import nn

    from kiln.graph import from_torch
    from kiln.quant import calibrate

    module = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32),
                           nn.ReLU(), nn.Linear(32, 10))
    graph = from_torch(module, torch.randn(1, 1, 28, 28))
    quantized = calibrate(quantize(graph, uniform_config(4, 8)), load_dataset("fashion-mnist"),
                          batches=1)
    pruned = prune_filters(quantized, fraction=0.25)
    small = shrink(pruned)
    widths = [layer.loops.K for layer in small.layers() if layer.loops is not None]
    assert widths == [48, 24, 10]  # 25% of each hidden layer's filters gone
    # the consumers' per-channel weight scales now span only the kept columns: the
    # outputs move by a few steps of the output quantizer, the decisions hardly at all
    x = torch.as_tensor(load_dataset("fashion-mnist").x_test[:512])
    with torch.no_grad():
        agreement = (pruned(x).argmax(1) == small(x).argmax(1)).float().mean()
    assert agreement >= 0.97
