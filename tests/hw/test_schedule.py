"""Multi-core scheduling: systems, tile dependencies, schedules and their validator,
allocation search, bad inputs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from kiln.errors import ConfigError, KilnError, ModelFormatError
from kiln.hw.schedule.allocate import default_plan, exhaustive, layer_options, nsga2
from kiln.hw.schedule.costs import TileCoster
from kiln.hw.schedule.figures import schedule_figures
from kiln.hw.schedule.graph import Graph, Node, graph_from_onnx
from kiln.hw.schedule.inputs import first_layer_copies, plan_from_stream_mapping
from kiln.hw.schedule.run import schedule
from kiln.hw.schedule.scheduler import DoesNotFitError, schedule_tiles
from kiln.hw.schedule.system import load_system
from kiln.hw.schedule.tiles import Plan, make_tiles
from kiln.hw.schedule.validate import check_schedule
from kiln.hw.workload import _conv_layer, default_precision

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ROOT / "examples" / "hardware" / "multicore"


def write_two_conv(path: Path) -> Path:
    """Two 3x3 convolutions, 8 -> 16 -> 32 channels on 32 x 32 (the shapes of Stream's 2-conv
    test model), built here so the tests need no outside file."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 32, 32])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 32, 32, 32])
    weights = [helper.make_tensor("weights_1", TensorProto.FLOAT, [16, 8, 3, 3],
                                  [0.0] * (16 * 8 * 9)),
               helper.make_tensor("weights_2", TensorProto.FLOAT, [32, 16, 3, 3],
                                  [0.0] * (32 * 16 * 9))]
    nodes = [helper.make_node("Conv", ["input", "weights_1"], ["conv1_out"], name="Conv1",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["conv1_out", "weights_2"], ["output"], name="Conv2",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "two_conv", [x], [y], weights)), path)
    return path


TWO_CONV = write_two_conv(Path(tempfile.mkdtemp(prefix="kiln-2conv-")) / "two_conv.onnx")


@pytest.fixture(scope="module")
def dual():
    return load_system(SYSTEMS / "dual_core_simd.yaml")


@pytest.fixture(scope="module")
def coster(dual):
    return TileCoster(dual)


def conv_node(name, inputs, channels_in, channels_out, size_in, kernel, stride, pad,
              dilation=1):
    size_out = (size_in + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    layer = _conv_layer(name, batch=1, groups=1, k=channels_out, c=channels_in, oy=size_out,
                        ox=size_out, fy=kernel, fx=kernel, stride=(stride, stride),
                        dilation=(dilation, dilation), in_hw=(size_in, size_in),
                        precision=default_precision())
    return Node(name, "Conv", inputs, channels_out, size_out, size_out, channels_in, size_in,
                size_in, kernel_rows=kernel, stride_rows=stride, pad_top=pad,
                dilation_rows=dilation, layer=layer,
                weight_count=channels_out * channels_in * kernel * kernel)


def random_chain(rng: random.Random, layers: int = 4) -> Graph:
    """Convolutions and pools of random kernel, stride, padding and dilation."""
    nodes, size, channels, previous = [], rng.choice([17, 23, 30]), 3, []
    for index in range(layers):
        kernel = rng.choice([1, 2, 3, 5, 7])
        stride = rng.choice([1, 1, 2, 3])
        dilation = rng.choice([1, 1, 2]) if kernel > 1 else 1
        pad = rng.randint(0, (kernel - 1) * dilation // 2)
        if (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 < 2:
            kernel, stride, pad, dilation = 1, 1, 0, 1
        if rng.random() < 0.3 and index:
            out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            node = Node(f"pool{index}", "MaxPool", previous, channels, out, out, channels,
                        size, size, kernel_rows=kernel, stride_rows=stride, pad_top=pad,
                        dilation_rows=dilation, channelwise=True, ops_per_output=kernel ** 2)
        else:
            out_channels = rng.choice([5, 8, 13])
            node = conv_node(f"conv{index}", previous, channels, out_channels, size, kernel,
                             stride, pad, dilation)
            channels = out_channels
        nodes.append(node)
        size, previous = node.out_rows, [node.name]
    return Graph("chain", nodes)


def test_example_systems_load_with_stream_keys():
    for name in ("quad_core_homogeneous", "quad_core_heterogeneous", "dual_core_simd"):
        system = load_system(SYSTEMS / f"{name}.yaml")
        kinds = [core.kind for core in system.cores.values()]
        assert kinds.count("offchip") == 1 and "simd" in kinds
        assert system.offchip.bandwidth == 64
        for core in system.compute_cores:  # every core reaches DRAM
            assert system.route(core.id, system.offchip_core_id)
    hetero = load_system(SYSTEMS / "quad_core_heterogeneous.yaml")
    arrays = {tuple(c.accelerator.array_sizes.values()) for c in hetero.compute_cores
              if c.kind == "compute"}
    assert len(arrays) == 4


def _write_system(tmp_path: Path, connectivity: str, offchip: int = 2) -> Path:
    text = (SYSTEMS / "dual_core_simd.yaml").read_text()
    head = text.split("core_connectivity:")[0].replace("offchip_core_id: 3",
                                                        f"offchip_core_id: {offchip}")
    path = tmp_path / "system.yaml"
    path.write_text(head.replace("array_32x32.yaml", str(SYSTEMS / "cores" / "array_32x32.yaml"))
                    .replace("simd.yaml", str(SYSTEMS / "cores" / "simd.yaml"))
                    .replace("dram.yaml", str(SYSTEMS / "cores" / "dram.yaml"))
                    + "core_connectivity:\n" + connectivity)
    return path


def test_bad_systems_name_file_and_path(tmp_path):
    path = _write_system(tmp_path, "  - {type: link, cores: [0, 7], bandwidth: 64}\n", 3)
    with pytest.raises(ConfigError, match=r"system.yaml: core_connectivity\[0\]\.cores\[1\]: "
                                          r"core 7 does not exist"):
        load_system(path)
    path = _write_system(tmp_path, "  - {type: bus, cores: [0, 1, 2, 3], bandwidth: 64}\n", 2)
    with pytest.raises(ConfigError, match="offchip_core_id: core 2 is not an offchip core"):
        load_system(path)
    path = _write_system(tmp_path, "  - {type: link, cores: [0, 1], bandwidth: 0}\n", 3)
    with pytest.raises(ConfigError, match=r"core_connectivity\[0\]\.bandwidth: must be > 0"):
        load_system(path)
    path = _write_system(tmp_path, "  - {type: link, cores: [0, 1], bandwidth: 8}\n", 3)
    with pytest.raises(ConfigError, match="no link connects core 0"):
        load_system(path)  # nothing reaches the DRAM


@pytest.mark.parametrize("seed", range(6))
def test_dependencies_are_exactly_the_rows_read(seed):
    """Differential: each tile's producer tiles are those holding a row its window reads."""
    rng = random.Random(seed)
    graph = random_chain(rng)
    plan = Plan({n.name: (0, 1) for n in graph.nodes},
                rows={n.name: rng.choice([1, 2, 3, 5]) for n in graph.nodes},
                split={n.name: rng.choice(["K", "OY"]) for n in graph.nodes})
    tiles = make_tiles(graph, plan)
    by_id = {t.id: t for t in tiles}
    for tile in tiles:
        node = graph.node(tile.node)
        read = set()
        for row in range(*tile.rows):
            for tap in range(node.kernel_rows):
                source = row * node.stride_rows - node.pad_top + tap * node.dilation_rows
                if 0 <= source < node.in_rows:
                    read.add(source)
        expected = set()
        for producer in node.inputs:
            for other in tiles:
                if other.node != producer:
                    continue
                rows_hit = read & set(range(*other.rows))
                channels_hit = not node.channelwise or (
                    other.channels[0] < tile.channels[1] and tile.channels[0] < other.channels[1])
                if rows_hit and channels_hit:
                    expected.add(other.id)
        assert set(tile.deps) == expected, tile.label
        for dep in tile.deps:  # the order is topological
            assert by_id[dep].order < tile.order


@pytest.mark.parametrize("seed", range(4))
def test_random_networks_schedule_and_validate(seed, dual, coster):
    rng = random.Random(100 + seed)
    graph = random_chain(rng, layers=5)
    options = layer_options(graph, dual)
    plan = Plan({n.name: rng.choice(options[n.name]).cores for n in graph.nodes},
                rows={n.name: rng.choice([1, 2, 4]) for n in graph.nodes},
                groups=[[n.name for n in graph.nodes]] if seed % 2 else [])
    result = schedule_tiles(graph, dual, plan, coster)
    assert check_schedule(result) == []
    figures = schedule_figures(result)
    assert figures["latency_cycles"] >= figures["lower_bound"]["cycles"] - 1e-6
    assert figures["energy_pj"] > 0


def test_validator_rejects_broken_schedules(dual, coster):
    graph = graph_from_onnx(TWO_CONV)
    plan = default_plan(graph, dual)
    plan.rows = {n.name: 8 for n in graph.nodes}
    plan.groups = [[n.name for n in graph.nodes]]
    result = schedule_tiles(graph, dual, plan, coster)
    assert check_schedule(result) == []
    consumer = next(e for e in result.tiles if e.tile.deps and e.tile.chunk == 0)

    early = consumer.start, consumer.end
    consumer.start, consumer.end = 0.0, consumer.end - early[0]
    problems = check_schedule(result)
    assert any(consumer.tile.label in p and "starts before" in p for p in problems)
    consumer.start, consumer.end = early

    first, second = [e for e in result.tiles if e.tile.core == 0][:2]
    saved = second.start, second.end
    second.start, second.end = first.start, first.start + (saved[1] - saved[0])
    assert any("core 0 runs two tiles" in p for p in check_schedule(result))
    second.start, second.end = saved

    capacity = dual.cores[0].memory_bits
    dual.cores[0].memory_bits = 1000
    try:
        assert any("core 0 holds" in p for p in check_schedule(result))
    finally:
        dual.cores[0].memory_bits = capacity

    result.transfers.append(result.transfers[0])  # the same transfer twice: over bandwidth
    assert any("carries" in p for p in check_schedule(result))
    result.transfers.pop()

    finals = [t for t in result.transfers if t.reason == "output"]
    for transfer in finals:
        result.transfers.remove(transfer)
    assert any("never reaches DRAM" in p for p in check_schedule(result))


def test_exhaustive_finds_the_optimum_and_nsga2_reaches_it(dual, coster):
    graph = graph_from_onnx(TWO_CONV)
    base = default_plan(graph, dual)
    best = exhaustive(graph, dual, base, coster)
    options = layer_options(graph, dual)
    latencies = []
    for first in options["Conv1"]:
        for second in options["Conv2"]:
            plan = base.copy()
            for name, option in (("Conv1", first), ("Conv2", second)):
                plan.allocation[name] = option.cores
                plan.split[name] = option.split
            latencies.append(schedule_tiles(graph, dual, plan, coster).latency)
    assert best.evaluated == len(latencies) == 16
    assert best.schedule.latency == min(latencies)
    runs = [nsga2(graph, dual, base, coster, trials=60, seed=3, study_name=f"t{i}")
            for i in range(2)]
    assert runs[0].schedule.latency == runs[1].schedule.latency == min(latencies)
    assert runs[0].plan.allocation == runs[1].plan.allocation  # seeded: deterministic


def test_lab4_fusion_and_independence(tmp_path):
    system = load_system(SYSTEMS / "quad_core_heterogeneous.yaml")
    plan = Plan({f"conv1_{i}": (2,) for i in range(4)})
    chain, free = first_layer_copies(True), first_layer_copies(False)
    coster = TileCoster(system)
    by_layer = schedule_tiles(chain, system, plan, coster)
    independent = schedule_tiles(free, system, plan, coster)
    fused_plan = plan.copy()
    fused_plan.rows = {name: 8 for name in plan.allocation}
    fused_plan.groups = [list(plan.allocation)]
    fused = schedule_tiles(chain, system, fused_plan, coster)
    for result in (by_layer, independent, fused):
        assert check_schedule(result) == []
    peak = {name: schedule_figures(r)["peak_memory_bits_max"]
            for name, r in (("layer", by_layer), ("fused", fused))}
    # Fused on rows, a layer's output is consumed a few rows at a time: each of the four
    # layers keeps two or three 8-row tiles (0.46 Mbit each) instead of a whole 6.4 Mbit map.
    assert peak["fused"] < 0.6 * peak["layer"]
    # On one core the four layers run back to back either way; what independence changes
    # is that no layer waits for another's output to arrive.
    assert independent.latency <= by_layer.latency


def test_bad_inputs_are_clear_errors(tmp_path, dual):
    graph = graph_from_onnx(TWO_CONV)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("layers:\n  - name: Conv1\n    core_allocation: [[2]]\n")
    plan, _ = plan_from_stream_mapping(mapping, graph, dual, default_plan(graph, dual))
    with pytest.raises(ConfigError, match=r"layer 'Conv1': core 2 \(simd_64\) cannot run Conv"):
        schedule_tiles(graph, dual, plan)
    mapping.write_text("layers:\n  - name: Conv9\n    core_allocation: [[0]]\n")
    with pytest.raises(ConfigError, match=r"map.yaml: layers\[0\]: no layer 'Conv9'"):
        plan_from_stream_mapping(mapping, graph, dual)

    tiny = load_system(SYSTEMS / "dual_core_simd.yaml")
    for core in tiny.compute_cores:
        core.memory_bits = 4096
    with pytest.raises(DoesNotFitError, match="Conv1.*needs .* bits of memory .* holds 4,096"):
        schedule_tiles(graph, tiny, default_plan(graph, tiny))

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["a"], ["y"], name="out")]
    cyclic = tmp_path / "cyclic.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "cyclic", [x], [y])), cyclic)
    with pytest.raises(ModelFormatError, match="cycle"):
        graph_from_onnx(cyclic)


def test_schedule_api_and_cli(tmp_path):
    result = schedule(str(TWO_CONV), SYSTEMS / "dual_core_simd.yaml", granularity="rows=8",
                      allocate="fixed")
    assert result.figures["latency_cycles"] == result.schedule.latency > 0
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kiln", "schedule", str(TWO_CONV), "--system",
               str(SYSTEMS / "dual_core_simd.yaml"), "--granularity", "rows=4", "--allocate",
               "greedy", "--out", str(out), "--json", "--trace", "--single-route"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    data = json.loads(done.stdout)
    assert data["validated"] and data["figures"]["latency_cycles"] > 0
    assert data["plan"]["split_transfers"] is False
    for name in ("schedule.json", "timeline.png", "memory.png", "trace.json"):
        assert (out / name).stat().st_size > 0
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("ph") == "X" and e["pid"] == 1 for e in trace["traceEvents"])
    clash = tmp_path / "file"
    clash.write_text("keep")
    command[command.index("--out") + 1] = str(clash)
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode == 2 and "is a file" in failed.stderr
    assert clash.read_text() == "keep"
    with pytest.raises(KilnError, match="granularity rows=0"):
        schedule(str(TWO_CONV), SYSTEMS / "dual_core_simd.yaml", granularity="rows=0")


def test_stream_mapping_is_read_as_stream_writes_it(tmp_path, dual, coster):
    """Stream's Conv dims: D2 = OY, D6 = K; a fused group's OY tile becomes rows per tile."""
    graph = graph_from_onnx(TWO_CONV)
    mapping = tmp_path / "stream.yaml"
    mapping.write_text(
        "layers:\n"
        "  - name: Conv1\n    core_allocation: [[0, 1]]\n"
        "    inter_core_tiling: [[{dim: D2, split: 2}]]\n"
        "  - name: Conv2\n    core_allocation: [[0, 1]]\n"
        "    inter_core_tiling: [[{dim: D6, split: 2}]]\n"
        "fused_groups:\n  - name: g\n    layers: [Conv1, Conv2]\n"
        "    intra_core_tiling: [{dim: Conv1.D2, tile: 8}, {dim: Conv2.D6, tile: 16}]\n")
    plan, notes = plan_from_stream_mapping(mapping, graph, dual)
    assert plan.split == {"Conv1": "OY"} and plan.allocation["Conv2"] == (0, 1)
    assert plan.rows == {"Conv1": 8, "Conv2": 8} and plan.groups == [["Conv1", "Conv2"]]
    assert any("Conv2.K by 16 is not applied" in note for note in notes)
    result = schedule_tiles(graph, dual, plan, coster)
    assert check_schedule(result) == []
    conv1 = [e.tile for e in result.tiles if e.tile.node == "Conv1"]
    # Row tiles dealt to the two cores in turn, each with every output channel.
    assert {t.core for t in conv1} == {0, 1} and all(t.channels == (0, 16) for t in conv1)
    # Both cores run Conv1 by rows with the same weights: loaded from DRAM once (a
    # multicast over the bus) rather than once per core.
    loads = [t for t in result.transfers if t.item[0] == "w" and t.item[1] == "Conv1"]
    assert sum(t.bits for t in loads if t.source == dual.offchip_core_id) == 16 * 8 * 9 * 8
    assert any(t.also_to for t in loads)


def test_system_errors_reach_the_cli_as_exit_2(tmp_path):
    system = _write_system(tmp_path, "  - {type: link, cores: [0, 9], bandwidth: 64}\n", 3)
    done = subprocess.run([sys.executable, "-m", "kiln", "schedule", str(TWO_CONV), "--system",
                           str(system), "--out", str(tmp_path / "o")], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "core_connectivity[0].cores[1]: core 9 does not exist" in done.stderr
    assert not (tmp_path / "o").exists()


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["light_resnet50.onnx", "light_densenet121.onnx",
                                  "light_inception_v1.onnx"])
def test_outside_models_schedule_and_validate(name, dual, coster):
    """Files kiln did not write: weights made by ConstantOfShape, BatchNormalization, Sum,
    concatenations of four branches; fused on 3-row tiles, split by rows where maps
    outweigh weights."""
    graph = graph_from_onnx(LIGHT / name)
    assert not any(node.op_type == "ConstantOfShape" for node in graph.nodes)
    plan = default_plan(graph, dual, split="auto")
    plan.rows = {node.name: 3 for node in graph.nodes}
    plan.groups = [[node.name for node in graph.nodes]]
    result = schedule_tiles(graph, dual, plan, coster)
    assert check_schedule(result) == []
    assert {e.tile.node for e in result.tiles} == {node.name for node in graph.nodes}


def test_pytorch_pads_fold_into_the_convolution(tmp_path, dual, coster):
    # F.pad exports as a Pad whose pads a constant subgraph computes: ONNX shape inference
    # alone leaves every shape after it unknown.
    import torch
    from torch import nn

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, (5, 3), stride=2)  # not square: FY 5, FX 3

        def forward(self, x):
            return self.conv(nn.functional.pad(x, (0, 2, 3, 1)))  # left, right, top, bottom

    path = tmp_path / "padded.onnx"
    torch.onnx.export(Padded().eval(), (torch.zeros(1, 2, 9, 8),), str(path), dynamo=False)
    graph = graph_from_onnx(path)
    (conv,) = graph.nodes
    assert (conv.in_rows, conv.in_cols, conv.pad_top) == (9, 8, 3)
    assert (conv.out_rows, conv.out_cols) == (5, 4)  # (9+3+1-5)//2+1, (8+2-3)//2+1
    assert (conv.layer.sizes["FY"], conv.layer.sizes["FX"]) == (5, 3)
    assert conv.rows_read(0, 1) == [0, 1]  # rows -3..1 of which 0 and 1 exist
    result = schedule_tiles(graph, dual, Plan({conv.name: [0]}, rows={conv.name: 1},
                                              groups=[[conv.name]]), coster)
    assert check_schedule(result) == []


def test_a_tile_of_one_output_maps_on_one_unit(dual, coster):
    layer = _conv_layer("one", batch=1, groups=1, k=1, c=1, oy=1, ox=1, fy=1, fx=1,
                        stride=(1, 1), dilation=(1, 1), in_hw=(1, 1),
                        precision=default_precision())
    node = Node("one", "Conv", [], 1, 1, 1, 1, 1, 1, layer=layer, weight_count=1)
    graph = Graph("one", [node])
    result = schedule_tiles(graph, dual, Plan({"one": [0]}), coster)
    assert check_schedule(result) == [] and result.latency >= 1


def test_grouped_convolution_tiles_hold_the_layers_macs(tmp_path, dual, coster):
    import torch
    from torch import nn

    from kiln.hw.schedule.costs import tile_layer

    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4),   # ResNeXt-style
                          nn.Conv2d(16, 16, 3, padding=1, groups=16))  # depthwise
    path = tmp_path / "grouped.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 8, 10, 10),), str(path), dynamo=False)
    graph = graph_from_onnx(path)
    expected = [16 * 10 * 10 * 2 * 9, 16 * 10 * 10 * 1 * 9]
    for rows in (None, 3):
        plan = default_plan(graph, dual)
        if rows:
            plan.rows = {node.name: rows for node in graph.nodes}
            plan.groups = [[node.name for node in graph.nodes]]
        result = schedule_tiles(graph, dual, plan, coster)
        assert check_schedule(result) == []
        macs = [sum(tile_layer(node, entry.tile).macs for entry in result.tiles
                    if entry.tile.node == node.name) for node in graph.nodes]
        assert macs == expected, rows


def test_a_grouped_convolution_tile_waits_only_for_its_groups(tmp_path, dual, coster):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4))
    path = tmp_path / "grouped.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    graph = graph_from_onnx(path)
    first, second = graph.nodes
    assert second.groups == 4 and second.input_channels_for((0, 4)) == (0, 4)
    plan = default_plan(graph, dual)  # both layers split over the compute cores by channels
    tiles = make_tiles(graph, plan)
    by_id = {tile.id: tile for tile in tiles}
    grouped = [tile for tile in tiles if tile.node == second.name]
    assert len({tile.channels for tile in grouped}) > 1
    for tile in grouped:
        read = second.input_channels_for(tile.channels)
        producers = [by_id[d] for d in tile.deps]
        assert producers and all(p.channels[0] < read[1] and p.channels[1] > read[0]
                                 for p in producers), (tile.label, read)
    result = schedule_tiles(graph, dual, plan, coster)
    assert check_schedule(result) == []


@pytest.mark.parametrize("channels", [2048, 1499])
def test_a_global_pool_whose_input_outgrows_the_simd_core_is_cut_by_channels(tmp_path, dual,
                                                                            channels):
    """A global average pool must read all 7 rows at once; in 32 bits its input (7 x 7 x
    channels) is larger than the SIMD core's memory, so one tile cannot hold it. Its
    channels are cut instead, each tile reading only its own, and the schedule validates."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64, 7, 7])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 1, 1])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [channels, 64, 1, 1],
                                 [0.01] * (channels * 64))
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["output"], name="pool")]
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "pool", [x], [y], [weights])), path)
    simd = next(core for core in dual.compute_cores if core.kind == "simd")
    assert 7 * 7 * channels * 32 > simd.memory_bits
    result = schedule(str(path), dual, granularity="layer", allocate="fixed", precision="onnx")
    parts = result.plan.channel_parts["pool"]
    pool = [e.tile for e in result.schedule.tiles if e.tile.node == "pool"]
    assert len(pool) == parts > 1 and {t.core for t in pool} == {simd.id}
    assert sorted(t.channels for t in pool)[0][0] == 0
    assert sum(t.channels[1] - t.channels[0] for t in pool) == channels
    for tile in pool:  # only its own channels of the convolution's output
        assert sum(tile.dep_bits) == 7 * 7 * (tile.channels[1] - tile.channels[0]) * 32
    assert check_schedule(result.schedule) == []
