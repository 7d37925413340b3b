"""Reading accelerators, workloads and mappings; bad inputs get a ConfigError naming where."""

from __future__ import annotations

import copy

import pytest
import yaml

from kiln.errors import ConfigError, KilnError
from kiln.hw import (
    MappingConstraints,
    MappingError,
    SpatialMapping,
    load_accelerator,
    load_workload,
    map_layer,
    parse_accelerator,
)
from kiln.hw.workload import (
    _gemm_layer,
    default_precision,
    layer_from_zigzag,
    layer_to_zigzag,
)
from kiln.hw.workload_sources import workload_from_graph
from tests.hw.conftest import EXAMPLES, zigzag_inputs

BUNDLED = [
    "tpu_like",
    "edge_tpu_like",
    "ascend_like",
    "meta_prototype",
    "tesla_npu_like",
    "gemm_l1",
    "eyeriss_like",
]


@pytest.mark.parametrize("name", BUNDLED)
def test_reads_zigzag_bundled_accelerators_as_is(name):
    # ZigZag's tpu_like.yaml repeats 'ports': read it as ZigZag does (the last one)
    hw = load_accelerator(zigzag_inputs() / "hardware" / f"{name}.yaml", duplicate_keys="last")
    assert hw.total_units > 1
    for op in ("I1", "I2", "O"):
        assert hw.levels(op), f"{name}: no memory for {op}"
    # Every level of every operand has a port that hands data to the level below.
    for memory in hw.memories:
        for op in memory.operands:
            direction = "wr_in_by_low" if op == "O" else "rd_out_to_low"
            assert memory.bandwidth(op, direction) is not None


@pytest.mark.parametrize("name", ["tpu_like", "eyeriss_like", "edge_npu"])
def test_example_accelerators_map_resnet18_layer(name):
    hw = load_accelerator(EXAMPLES / f"{name}.yaml")
    layer = load_workload("resnet18").layers[5]
    result = map_layer(layer, hw, "latency")
    assert 0 < result.cost.utilization <= 1
    assert result.cost.latency_cycles >= result.cost.ideal_cycles
    assert result.cost.energy_pj > result.cost.mac_energy_pj


def _tpu_data() -> dict:
    return yaml.safe_load((EXAMPLES / "tpu_like.yaml").read_text())


def _error(data, tmp_path) -> str:
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_accelerator(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_memories_listed_top_down_are_rejected(tmp_path):
    data = _tpu_data()
    data["memories"] = dict(reversed(list(data["memories"].items())))
    assert "list memories from the array upwards" in _error(data, tmp_path)


def test_memory_of_size_zero_is_rejected_with_its_path(tmp_path):
    data = _tpu_data()
    data["memories"]["unified_buffer"]["size"] = 0
    assert "memories.unified_buffer.size" in _error(data, tmp_path)


def test_operand_served_by_no_memory_is_rejected(tmp_path):
    data = _tpu_data()
    for memory in data["memories"].values():
        if "I2" in memory["operands"]:
            memory["operands"] = [op for op in memory["operands"] if op != "I2"]
            for port in memory["ports"]:
                port["allocation"] = [a for a in port["allocation"] if not a.startswith("I2")]
    data["memories"] = {k: v for k, v in data["memories"].items() if v["operands"]}
    assert "operand 'I2' is held by no memory" in _error(data, tmp_path)


def test_yaml_typo_in_a_key_is_named(tmp_path):
    data = _tpu_data()
    data["memories"]["dram"]["r_cots"] = data["memories"]["dram"].pop("r_cost")
    message = _error(data, tmp_path)
    assert "memories.dram.r_cots" in message and "unknown key" in message


def test_port_allocation_to_a_foreign_operand_is_named(tmp_path):
    data = _tpu_data()
    data["memories"]["weight_reg"]["ports"][0]["allocation"] = ["I1, tl"]
    assert "memories.weight_reg.ports[0].allocation[0]" in _error(data, tmp_path)


def test_unknown_served_dimension_is_named(tmp_path):
    data = _tpu_data()
    data["memories"]["accumulator"]["served_dimensions"] = ["D7"]
    assert "unknown dimension 'D7'" in _error(data, tmp_path)


def test_spatial_mapping_larger_than_the_array_is_reduced_as_zigzag_reduces_it():
    hw = load_accelerator(EXAMPLES / "tpu_like.yaml")
    layer = load_workload("resnet18").layers[5]
    def mapped(factor: int):
        spatial = SpatialMapping({"D1": {"K": factor}, "D2": {"C": 32}})
        return map_layer(layer, hw, constraints=MappingConstraints(spatial))

    reduced, fits = mapped(64), mapped(32)
    assert reduced.spatial.unrollings == {"D1": {"K": 32}, "D2": {"C": 32}}
    assert reduced.cost.latency_cycles == fits.cost.latency_cycles
    assert reduced.cost.energy_pj == fits.cost.energy_pj
    with pytest.raises(ConfigError, match="does not have"):
        map_layer(layer, hw, constraints=MappingConstraints(SpatialMapping({"D9": {"K": 4}})))


def test_mapping_that_overflows_a_buffer_is_rejected_with_the_reason():
    data = yaml.safe_load((EXAMPLES / "tpu_like.yaml").read_text())
    small = copy.deepcopy(data)
    # DRAM no larger than the unified buffer: a 4096^3 GEMM's weights (128 Mbit) do not fit.
    small["memories"]["dram"]["size"] = small["memories"]["unified_buffer"]["size"]
    hw = parse_accelerator(small, "small.yaml")
    layer = _gemm_layer("big", rows=4096, c=4096, k=4096, precision=default_precision())
    with pytest.raises(MappingError, match="dram") as info:
        map_layer(layer, hw, "latency")
    assert isinstance(info.value, KilnError)


def test_fixed_ordering_that_overflows_the_registers_is_rejected_not_crashed():
    hw = load_accelerator(EXAMPLES / "eyeriss_like.yaml")
    layer = load_workload("resnet18").layers[5]
    spatial = SpatialMapping({"D1": {"OX": 14}, "D2": {"C": 12}})
    # FY FX innermost (fits the filter scratchpad), then everything else: the accumulator
    # cannot hold all of K and OY, the order is still allocated upwards, never a crash.
    ordering = [("FX", 3), ("FY", 3), ("K", 128), ("OY", 28), ("C", 6), ("OX", 2)]
    result = map_layer(layer, hw, constraints=MappingConstraints(spatial, ordering))
    assert result.cost.latency_cycles > 0
    tiny = yaml.safe_load((EXAMPLES / "eyeriss_like.yaml").read_text())
    tiny["memories"]["global_buffer"]["size"] = 768  # room for a few words only
    with pytest.raises(MappingError, match="global_buffer"):
        map_layer(
            layer,
            parse_accelerator(tiny, "tiny.yaml"),
            constraints=MappingConstraints(spatial, ordering),
        )


def test_zigzag_workload_yaml_round_trip(tmp_path):
    layer = load_workload("resnet18").layers[5]
    again = layer_from_zigzag(layer_to_zigzag(layer), "round trip")
    assert again.sizes == layer.sizes
    assert again.relations == layer.relations and again.pr_sizes == layer.pr_sizes
    assert again.operand_dims == layer.operand_dims and again.precision == layer.precision


def test_workload_yaml_errors_name_the_layer_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "id": 0,
                    "operator_type": "Gemm",
                    "equation": "O[d][k]+=I[d][c]*W[c][k]",
                    "loop_dims": ["D", "C", "K"],
                    "loop_sizes": [4, 4, 4],
                    "operand_precision": {"W": 0, "I": 8, "O": 16, "O_final": 8},
                }
            ]
        )
    )
    with pytest.raises(
        ConfigError, match=r"layer\[0\]\.operand_precision\.W: bit width must be >= 1"
    ):
        load_workload(str(path))


def test_workload_from_onnx_matches_the_graph_and_lists_what_is_not_costed(resnet18_onnx):
    from_onnx = load_workload(str(resnet18_onnx))
    from_zoo = load_workload("resnet18")
    assert len(from_onnx.layers) == len(from_zoo.layers) == 21
    assert from_onnx.macs == from_zoo.macs == 1_814_073_344
    kinds = {op for _, op in from_onnx.not_costed}
    assert {"Relu", "MaxPool", "Add"} <= kinds


def test_quantized_widths_become_operand_precisions():
    from kiln.models import build_graph
    from kiln.quant import quantize

    graph = quantize(
        build_graph("convnet"), {"default": {"weight": {"bits": 4}, "input": {"bits": 6}}}
    )
    layers = workload_from_graph(graph).layers
    assert layers[0].precision["W"] == 4
    assert layers[1].precision["I"] == 6 and layers[1].precision["O_final"] == 6
    float_layers = workload_from_graph(build_graph("convnet")).layers
    assert float_layers[0].precision["W"] == 8


def test_workload_edges_follow_the_graph_through_non_mac_layers(resnet18_onnx):
    layers = {layer.name: layer for layer in load_workload("resnet18").layers}
    assert layers["layers_0_conv1"].inputs_from == ["stem_0"]  # through BN, ReLU, max pool
    assert set(layers["layers_1_conv1"].inputs_from) == {"layers_0_conv2", "stem_0"}  # residual
    onnx_layers = load_workload(str(resnet18_onnx)).layers
    assert onnx_layers[1].inputs_from == [onnx_layers[0].name]


def test_a_key_given_twice_is_rejected_with_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys; kiln refuses, naming the key and lines."""
    from kiln.errors import ConfigError
    from kiln.hw import load_accelerator
    from kiln.quant import QuantConfig

    text = (EXAMPLES / "edge_npu.yaml").read_text()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if "unit_energy" in line)
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines.insert(index + 1, f"{indent}unit_energy: 4.0")
    path = tmp_path / "twice.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"key 'unit_energy' appears twice in one mapping "
                                          rf"\(lines {index + 1} and {index + 2}\)"):
        load_accelerator(path)
    config = tmp_path / "quant.yaml"
    config.write_text("default:\n  weight: {bits: 8}\n  weight: {bits: 4}\n")
    with pytest.raises(ConfigError, match="key 'weight' appears twice"):
        QuantConfig.load(config)
    as_json = tmp_path / "quant.json"
    as_json.write_text('{"default": {"weight": {"bits": 8}, "weight": {"bits": 4}}}')
    with pytest.raises(ConfigError, match="key 'weight' appears twice"):
        QuantConfig.load(as_json)


def test_breakdown_colours_are_distinct_and_layer_labels_whole():
    """17 memory/operand categories got 10 cycling colours, and layer names were cut."""
    from kiln.hw.compare import _label, breakdown_colours

    keys = [(f"mem{m}", op) for m in range(9) for op in ("I", "W")]
    colours = breakdown_colours(keys)
    assert len(set(colours.values())) == len(keys) == 18
    assert _label("layers_6_shortcut_0") == "layers_6_shortcut_0"
    long = "/model/backbone/stage4/block2/conv_pointwise/Conv"
    assert _label(long).startswith("model/backbone") and _label(long).endswith("pointwise/Conv")


def test_zigzags_own_tpu_like_repeats_a_key_and_is_read_as_zigzag_reads_it_on_request():
    from kiln.hw import load_accelerator
    from kiln.strict_yaml import DuplicateKeyWarning

    path = zigzag_inputs() / "hardware" / "tpu_like.yaml"
    with pytest.raises(ConfigError, match="key 'ports' appears twice"):
        load_accelerator(path)
    with pytest.warns(DuplicateKeyWarning, match="keeping the last, as ZigZag does"):
        hw = load_accelerator(path, duplicate_keys="last")
    assert hw.name
