"""ZigZag's input files read as ZigZag 3.9.1 reads them, checked against ZigZag in-process
where it accepts the input; where kiln deliberately differs, the difference is named."""

from __future__ import annotations

import pytest
import yaml

from kiln.errors import ConfigError
from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
from kiln.hw.workload_mapper import map_workload
from tests.hw.conftest import zigzag_inputs, zigzag_search

LINKS = {"O": "O", "W": "I2", "I": "I1"}
PRECISION = {"W": 8, "I": 8, "O": 16, "O_final": 8}


def _conv(layer_id: int, k: int, c: int, size: int, source: int, name: str | None = None) -> dict:
    layer = {"id": layer_id, "operator_type": "Conv",
             "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
             "dimension_relations": ["ix=1*ox+1*fx", "iy=1*oy+1*fy"],
             "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
             "loop_sizes": [1, k, c, size, size, 3, 3],
             "operand_precision": dict(PRECISION), "operand_source": {"I": source, "W": layer_id}}
    return layer | ({"name": name} if name else {})


def _residual_workload(path) -> None:
    """conv → max pool → conv → add (the pool's output and the conv's), unnamed layers."""
    pool = {"id": 1, "operator_type": "Pooling",
            "equation": "O[b][g][oy][ox]+=W[fx][fy]*I[b][g][iy][ix]",
            "dimension_relations": ["ix=2*ox+1*fx", "iy=2*oy+1*fy"],
            "loop_dims": ["B", "G", "OY", "OX", "FX", "FY"], "loop_sizes": [1, 16, 6, 6, 2, 2],
            "operand_precision": {"I": 8, "W": 0, "O": 16, "O_final": 8},
            "operand_source": {"I": 0, "W": 1}}
    add = {"id": 3, "operator_type": "Add",
           "equation": "O[b][g][oy][ox]=W[b][g][oy][ox]+I[b][g][oy][ox]",
           "loop_dims": ["B", "G", "OY", "OX"], "loop_sizes": [1, 16, 6, 6],
           "operand_precision": dict(PRECISION), "operand_source": {"W": 1, "I": 2}}
    path.write_text(yaml.safe_dump([_conv(0, 16, 8, 12, 0), pool, _conv(2, 16, 16, 6, 1), add],
                                   sort_keys=False))


def test_unnamed_layers_are_layer_id_and_pooling_and_add_are_kept_not_costed(tmp_path):
    workload_path = tmp_path / "residual.yaml"
    _residual_workload(workload_path)
    workload = load_workload(str(workload_path))
    assert [layer.name for layer in workload.layers] == ["Layer0", "Layer2"]
    assert workload.not_costed == [("Layer1", "Pooling"), ("Layer3", "Add")]
    # A mapping entry named 'Layer0' is found for the unnamed first layer, as in ZigZag:
    # the two tools agree on that layer (and on the other, under 'default').
    mapping_path = tmp_path / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump([
        {"name": "default", "spatial_mapping": {"D1": ["K, 16"], "D2": ["C, 16"]},
         "memory_operand_links": LINKS},
        {"name": "Layer0", "spatial_mapping": {"D1": ["K, 16"], "D2": ["OX, 12"]},
         "memory_operand_links": LINKS},
        {"name": "Pooling", "spatial_mapping": {"D1": ["G, 16"]}, "memory_operand_links": LINKS},
        {"name": "Add", "spatial_mapping": {"D1": ["G, 16"]}, "memory_operand_links": LINKS},
    ], sort_keys=False))
    hw_path = zigzag_inputs() / "hardware" / "tpu_like.yaml"
    hw = load_accelerator(hw_path, duplicate_keys="last")
    result = map_workload(workload, hw, "latency", load_zigzag_mapping(mapping_path))
    assert str(result.layers[0].spatial) == str(load_zigzag_mapping(mapping_path)["Layer0"].spatial)
    assert result.as_dict()["not_costed"] == [{"name": "Layer1", "op": "Pooling"},
                                              {"name": "Layer3", "op": "Add"}]
    peer = zigzag_search(tmp_path, workload_path, hw_path, mapping_path)
    # ZigZag prices the pool and the add as MAC layers on a digital array; kiln does not.
    assert {"Layer1", "Layer3"} <= set(peer)
    for mapped in result.layers:
        energy, latency = peer[mapped.layer]
        assert mapped.cost.latency_cycles == pytest.approx(latency, rel=1e-12)
        assert mapped.cost.energy_pj == pytest.approx(energy, rel=1e-12)


def test_two_layers_with_one_name_are_rejected(tmp_path):
    path = tmp_path / "twins.yaml"
    path.write_text(yaml.safe_dump([_conv(0, 8, 8, 6, 0, name="conv"),
                                    _conv(1, 8, 8, 6, 0, name="conv")]))
    with pytest.raises(ConfigError, match=r"layer\[1\]: layer name 'conv' is also layer\[0\]"):
        load_workload(str(path))


def test_two_mapping_entries_with_one_name_are_rejected_with_both_places(tmp_path):
    path = tmp_path / "mapping.yaml"
    entry = {"name": "default", "spatial_mapping": {"D1": ["K, 8"]}, "memory_operand_links": LINKS}
    path.write_text(yaml.safe_dump([entry, {"name": "conv"}, dict(entry)]))
    with pytest.raises(ConfigError, match=r"mapping.yaml: \[2\]: entry name 'default' is also "
                                          r"entry \[0\]'s") as caught:
        load_zigzag_mapping(path)
    assert "first" in caught.value.hint  # says what ZigZag would do instead


def test_a_dimension_no_layer_has_is_named_with_file_entry_and_layer(tmp_path):
    workload_path = tmp_path / "w.yaml"
    workload_path.write_text(yaml.safe_dump([_conv(0, 8, 8, 6, 0)]))
    mapping_path = tmp_path / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump([
        {"name": "default", "spatial_mapping": {"D1": ["K, 8"]},
         "temporal_ordering": [["OX", 6], ["Q", 2]], "memory_operand_links": LINKS}]))
    hw = load_accelerator(zigzag_inputs() / "hardware" / "tpu_like.yaml", duplicate_keys="last")
    with pytest.raises(ConfigError) as caught:
        map_workload(load_workload(str(workload_path)), hw, "latency",
                     load_zigzag_mapping(mapping_path))
    message = caught.value.message
    assert "mapping.yaml: [0] 'default'" in message and "dimension Q" in message
    assert "layer 'Layer0'" in message


def test_a_mapping_that_cannot_work_names_the_layer_and_the_entry(tmp_path):
    workload_path = tmp_path / "w.yaml"
    workload_path.write_text(yaml.safe_dump([_conv(0, 8, 8, 6, 0, name="conv1")]))
    mapping_path = tmp_path / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump([
        {"name": "conv1", "spatial_mapping": {"D1": ["K, 8"]},
         "temporal_ordering": [["OX", 4]], "memory_operand_links": LINKS}]))
    hw = load_accelerator(zigzag_inputs() / "hardware" / "tpu_like.yaml", duplicate_keys="last")
    with pytest.raises(ConfigError) as caught:
        map_workload(load_workload(str(workload_path)), hw, "latency",
                     load_zigzag_mapping(mapping_path))
    assert caught.value.message.startswith(f"layer 'conv1', mapping {mapping_path}: [0] 'conv1'")
    assert "OX 4 does not divide" in caught.value.message


@pytest.mark.parametrize(("name", "kind"), [("dimc", "a digital"), ("aimc", "an analog")])
def test_in_memory_computing_accelerators_are_refused_by_name(name, kind):
    with pytest.raises(ConfigError, match=f"operational_array: {kind} in-memory-computing "
                                          "array .* not supported"):
        load_accelerator(zigzag_inputs() / "hardware" / f"{name}.yaml")


def test_order_space_reads_positions_as_zigzag_does():
    from kiln.hw.orders import order_space

    sizes = {"K": 4, "C": 6, "OX": 2}
    inner = order_space(sizes, [("C", None), ("K", 2)], lpf_limit=6)
    orders = list(inner.orders())
    assert orders and all(o[0][0] == "C" and o[1] == ("K", 2) for o in orders)
    outer = order_space(sizes, [("*", None), ("OX", None)], lpf_limit=6)
    assert all(o[-1] == ("OX", 2) for o in outer.orders())
    # A fixed size is one loop that the lpf limit never merges: K 4 stays whole.
    fixed = order_space({"K": 8, "C": 6}, [("K", 4)], lpf_limit=3)
    assert sorted(fixed.lpfs) == [("C", 6), ("K", 2), ("K", 4)]
    complete = order_space(sizes, [("K", 4), ("C", 6), ("OX", 2)], lpf_limit=6)
    assert list(complete.orders()) == [[("K", 4), ("C", 6), ("OX", 2)]]
    with pytest.raises(ConfigError, match="K 3 does not divide"):
        order_space(sizes, [("K", 3)], lpf_limit=6)


def _constrained_conv(tmp_path, ordering):
    workload_path = tmp_path / "w.yaml"
    workload_path.write_text(yaml.safe_dump([_conv(0, 64, 32, 14, 0, name="conv")]))
    mapping_path = tmp_path / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump([
        {"name": "default", "spatial_mapping": {"D1": ["K, 32"], "D2": ["C, 16"]},
         "temporal_ordering": ordering, "memory_operand_links": LINKS}]))
    hw_path = zigzag_inputs() / "hardware" / "tpu_like.yaml"
    hw = load_accelerator(hw_path, duplicate_keys="last")
    result = map_workload(load_workload(str(workload_path)), hw, "latency",
                          load_zigzag_mapping(mapping_path)).layers[0]
    return result, (workload_path, hw_path, mapping_path)


@pytest.mark.parametrize("ordering", [
    [["OX", "*"], ["K", "*"]],                       # innermost some OX, then some K
    [["FX", 3], ["FY", 3], ["C", "*"]],              # sizes and a star
])
def test_constrained_orders_give_zigzags_mapping(tmp_path, ordering):
    result, inputs = _constrained_conv(tmp_path, ordering)
    energy, latency = zigzag_search(tmp_path, *inputs)["conv"]
    assert result.cost.latency_cycles == pytest.approx(latency, rel=1e-12)
    assert result.cost.energy_pj == pytest.approx(energy, rel=1e-12)
    assert [dim for dim, _ in result.temporal.ordering[:len(ordering)]] == [
        dim for dim, _ in ordering]


def test_entries_after_star_star_count_from_the_outermost_loop(tmp_path):
    # Deliberate difference: ZigZag 3.9.1 documents ["*", "*"] as "what follows is
    # outermost", but drops the entry as "not a layer dimension" before reading the
    # constraints, so there K lands second innermost. kiln keeps the documented meaning.
    result, inputs = _constrained_conv(tmp_path, [["OX", "*"], ["*", "*"], ["K", "*"]])
    assert result.temporal.ordering[0][0] == "OX" and result.temporal.ordering[-1][0] == "K"
    energy, latency = zigzag_search(tmp_path, *inputs)["conv"]
    assert result.cost.latency_cycles <= latency  # a different, constrained space


def test_a_partial_spatial_mapping_is_completed_as_zigzag_completes_it(tmp_path):
    # edge_tpu_like has four array dimensions; the mapping names two. ZigZag searches
    # unrollings for D3 and D4; leaving them idle would halve the array twice over.
    workload_path = tmp_path / "w.yaml"
    workload_path.write_text(yaml.safe_dump([_conv(0, 32, 16, 14, 0, name="conv")]))
    mapping_path = tmp_path / "mapping.yaml"
    mapping_path.write_text(yaml.safe_dump([
        {"name": "default", "spatial_mapping": {"D1": ["K, 8"], "D2": ["C, 8"]},
         "memory_operand_links": LINKS}]))
    hw_path = zigzag_inputs() / "hardware" / "edge_tpu_like.yaml"
    result = map_workload(load_workload(str(workload_path)), load_accelerator(hw_path),
                          "latency", load_zigzag_mapping(mapping_path)).layers[0]
    unrolled = result.spatial.unrollings
    assert unrolled["D1"] == {"K": 8} and unrolled["D2"] == {"C": 8}
    assert set(unrolled) == {"D1", "D2", "D3", "D4"}  # the free dimensions were filled
    energy, latency = zigzag_search(tmp_path, workload_path, hw_path, mapping_path)["conv"]
    assert result.cost.latency_cycles == pytest.approx(latency, rel=1e-12)
    assert result.cost.energy_pj <= energy * (1 + 1e-12)


def test_an_unrolling_larger_than_the_array_is_reduced_as_in_zigzag(tmp_path):
    # ZigZag's default mapping (K 32, C 32) on eyeriss_like (a 14 x 12 array).
    workload_path = tmp_path / "w.yaml"
    workload_path.write_text(yaml.safe_dump([_conv(0, 64, 64, 28, 0, name="conv")]))
    mapping_path = zigzag_inputs() / "mapping" / "default.yaml"
    hw_path = zigzag_inputs() / "hardware" / "eyeriss_like.yaml"
    result = map_workload(load_workload(str(workload_path)), load_accelerator(hw_path),
                          "latency", load_zigzag_mapping(mapping_path)).layers[0]
    assert result.spatial.unrollings == {"D1": {"K": 14}, "D2": {"C": 12}}
    energy, latency = zigzag_search(tmp_path, workload_path, hw_path, mapping_path)["conv"]
    assert result.cost.latency_cycles == pytest.approx(latency, rel=1e-12)
    assert result.cost.energy_pj == pytest.approx(energy, rel=1e-12)
