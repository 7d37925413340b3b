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
from tests.hw.conftest import zigzag_fixed_mapping, zigzag_inputs


def test_gemm_l1_128_cube_matches_zigzag_published_numbers(tmp_path):
    # ZigZag 3.9.1, gemm_l1 hardware and mapping (D1 innermost, then D2, then D0):
    # 511,349.76 pJ and 8,191 cycles.
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
    hw = load_accelerator(zigzag_inputs() / "hardware" / "gemm_l1.yaml")
    layer = load_workload(str(workload)).layers[0]
    mapping = load_zigzag_mapping(zigzag_inputs() / "mapping" / "gemm_l1.yaml")
    result = map_layer(layer, hw, "latency", constraints_for(layer, mapping))
    assert result.cost.energy_pj == pytest.approx(511_349.76, rel=1e-3)
    assert result.cost.latency_cycles == pytest.approx(8_191, rel=1e-2)
    assert result.temporal.ordering == [("D1", 16), ("D2", 16), ("D0", 16)]


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
