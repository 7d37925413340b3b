import pytest
import torch
from torch import nn

from kiln.errors import ConfigError, KilnError
from kiln.graph import from_torch
from kiln.models import build_graph
from kiln.passes import count, layer_summary, propagate


def test_propagate_returns_new_graph_and_leaves_input_untouched():
    g = from_torch(nn.Sequential(nn.Linear(6, 2)), torch.zeros(1, 6))
    before = g.node("_0")
    bigger = propagate(g, torch.zeros(9, 6))
    assert bigger.node("_0").output_shape == (9, 2)
    assert g.node("_0") == before and g.node("_0").output_shape == (1, 2)
    assert bigger.module is not g.module


def test_counts_and_weight_bytes():
    g = build_graph("convnet")
    totals = count(g, weight_bits=4, activation_bits=8)
    assert totals.params == g.total_params == 105_914
    assert totals.weight_bytes == pytest.approx(105_914 * 4 / 8)
    assert totals.compute_layers == 4
    assert totals.peak_activation_elements == 16 * 28 * 28
    assert totals.activation_bytes == totals.activation_elements


def test_layer_summary_rows():
    rows = layer_summary(build_graph("lenet5"))
    conv = rows[0]
    assert conv["op"] == "conv2d" and conv["output_shape"] == [1, 6, 28, 28]
    assert conv["loops"]["FY"] == 5 and conv["loops"]["padding"] == (2, 2)
    assert sum(r["macs"] for r in rows) == build_graph("lenet5").total_macs


def test_bad_bit_width_is_rejected():
    with pytest.raises(ConfigError, match="weight_bits"):
        count(build_graph("jsc-tiny"), weight_bits=0)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(KilnError, match=r"fails on an input of shape \[1, 3\]"):
        propagate(build_graph("jsc-tiny"), torch.zeros(1, 3))
