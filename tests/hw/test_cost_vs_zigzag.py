"""The cost model against zigzag-dse 3.9.1 on fixed mappings (ZigZag runs here, in-process)."""

from __future__ import annotations

import pytest
import yaml

from kiln.hw import (
    MappingConstraints,
    SpatialMapping,
    constraints_for,
    evaluate,
    fit_spatial,
    load_accelerator,
    load_workload,
    load_zigzag_mapping,
    map_layer,
)
from tests.hw.conftest import (
    random_conv_layer,
    zigzag_fixed_mapping,
    zigzag_inputs,
    zigzag_search,
)


@pytest.mark.parametrize("name", ["gemm_l1", "gemm_l1_l3"])
def test_star_orderings_are_position_constraints_as_in_zigzag(tmp_path, name):
    # ZigZag's gemm mappings give [D1, *], [D2, *], [D0, *]: the three innermost loops are
    # *some* D1, D2 and D0 loop, the rest is searched (not "all of D1, then all of D2").
    workload = tmp_path / "gemm.yaml"
    workload.write_text(
        yaml.safe_dump(
            [
                {
                    "id": 0,
                    "operator_type": "Gemm",
                    "equation": "O[d0][d1]+=I[d0][d2]*W[d2][d1]",
                    "loop_dims": ["D0", "D1", "D2"],
                    "loop_sizes": [128, 128, 128],
                    "operand_precision": {"W": 8, "I": 8, "O": 32, "O_final": 32},
                }
            ]
        )
    )
    hw_path = zigzag_inputs() / "hardware" / f"{name}.yaml"
    mapping_path = zigzag_inputs() / "mapping" / f"{name}.yaml"
    layer = load_workload(str(workload)).layers[0]
    mapping = load_zigzag_mapping(mapping_path)
    result = map_layer(layer, load_accelerator(hw_path), "latency", constraints_for(layer, mapping))
    assert [dim for dim, _ in result.temporal.ordering[:3]] == ["D1", "D2", "D0"]
    assert result.orderings > 1  # searched, not one fixed order
    energy, latency = zigzag_search(tmp_path, workload, hw_path, mapping_path)["Layer0"]
    assert result.cost.energy_pj == pytest.approx(energy, rel=1e-12)
    assert result.cost.latency_cycles == pytest.approx(latency, rel=1e-12)


def test_resnet18_first_layer_on_tpu_like_with_its_fixed_ordering(tmp_path, resnet18_onnx):
    hw_path = zigzag_inputs() / "hardware" / "tpu_like.yaml"
    hw = load_accelerator(hw_path, duplicate_keys="last")  # ZigZag's files, as ZigZag reads
    layer = load_workload(str(resnet18_onnx)).layers[0]
    # The tpu_like mapping's example entry: C on D1, K on D2, OX 112, OY 112, FX, FY, K 2.
    spatial = {"D1": {"C": 32}, "D2": {"K": 32}}
    ordering = [("OX", 112), ("OY", 112), ("FX", 7), ("FY", 7), ("K", 2)]
    constraints = MappingConstraints(SpatialMapping(spatial), [(d, s) for d, s in ordering])
    ours = map_layer(layer, hw, "latency", constraints)
    energy, latency = zigzag_fixed_mapping(tmp_path, layer, hw_path, spatial, ordering)
    assert ours.cost.energy_pj == pytest.approx(energy, rel=1e-3)
    assert ours.cost.latency_cycles == pytest.approx(latency, rel=1e-2)
    assert energy == pytest.approx(
        365_599_232.768, rel=1e-6
    )  # what ZigZag gave when this was written


CASES = [
    # (accelerator, layer index in resnet18.onnx, spatial mapping)
    (
        "edge_tpu_like",
        7,
        {"D1": {"K": 8}, "D2": {"C": 8}, "D3": {"OX": 4}, "D4": {"OY": 4}},
    ),  # 1x1 stride 2
    (
        "meta_prototype",
        5,
        {"D1": {"K": 32}, "D2": {"C": 2}, "D3": {"OX": 4}, "D4": {"OY": 4}},
    ),  # 3x3 s2
    ("ascend_like", 20, {"D1": {"K": 16}, "D2": {"C": 16}}),  # fully connected
    ("tesla_npu_like", 0, {"D1": {"K": 32}, "D2": {"OX": 8}, "D3": {"OY": 4}}),  # 7x7 s2, C=3
    ("tpu_like", 12, {"D1": {"K": 32}, "D2": {"C": 32}}),  # 1x1 downsample, 14x14
]


@pytest.mark.parametrize(("hw_name", "index", "spatial"), CASES, ids=[c[0] for c in CASES])
def test_fixed_mappings_agree_with_zigzag(tmp_path, resnet18_onnx, hw_name, index, spatial):
    hw_path = zigzag_inputs() / "hardware" / f"{hw_name}.yaml"
    hw = load_accelerator(hw_path, duplicate_keys="last")  # ZigZag's files, as ZigZag reads
    layer = load_workload(str(resnet18_onnx)).layers[index]
    spatial = {oa: {d: f for d, f in m.items() if d in layer.sizes} for oa, m in spatial.items()}
    # kiln's best order under this spatial mapping, then both tools cost that one order.
    found = map_layer(layer, hw, "latency", MappingConstraints(SpatialMapping(spatial)))
    ordering = found.temporal.ordering
    energy, latency = zigzag_fixed_mapping(tmp_path, layer, hw_path, spatial, ordering)
    fractional, integer, limited = fit_spatial(layer, hw, SpatialMapping(spatial))
    ours = evaluate(layer, hw, fractional, found.temporal, integer, limited)
    assert ours.energy_pj == pytest.approx(energy, rel=1e-3)
    assert ours.latency_cycles == pytest.approx(latency, rel=1e-2)


@pytest.mark.parametrize("seed", range(32))
def test_random_layers_agree_with_zigzag(tmp_path, seed):
    """Shapes nobody picked: odd sizes, non-square kernels, strides, dilation, padding, on a
    random bundled accelerator; kiln's best mapping costed by both tools."""
    layer, hw, hw_path = random_conv_layer(seed)
    found = map_layer(layer, hw, "latency", lpf_limit=6, spatial_keep=1)
    spatial = {oa: {d: int(f) for d, f in m.items()}
               for oa, m in found.spatial.unrollings.items()}
    energy, latency = zigzag_fixed_mapping(tmp_path, layer, hw_path, spatial,
                                           found.temporal.ordering)
    assert found.cost.energy_pj == pytest.approx(energy, rel=1e-9), (hw.name, layer.sizes)
    assert found.cost.latency_cycles == pytest.approx(latency, rel=1e-9), (hw.name, layer.sizes)
