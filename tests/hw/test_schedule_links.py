"""Links and buses in multi-core schedules: a link is full duplex (as in Stream), a bus is
shared by every transfer on it, and a SIMD core's output read by several cores goes over a
bus to all of them at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from kiln.hw.schedule.allocate import default_plan
from kiln.hw.schedule.costs import TileCoster
from kiln.hw.schedule.figures import schedule_figures
from kiln.hw.schedule.graph import graph_from_onnx
from kiln.hw.schedule.records import Transfer
from kiln.hw.schedule.routing import Network
from kiln.hw.schedule.run import schedule
from kiln.hw.schedule.scheduler import schedule_tiles
from kiln.hw.schedule.system import load_system
from kiln.hw.schedule.validate import check_schedule

SYSTEMS = Path(__file__).resolve().parents[2] / "examples" / "hardware" / "multicore"


def write_residual_block(path: Path, channels: int = 16, size: int = 24) -> Path:
    """conv → relu → conv → add (the block's input) → relu: the SIMD core's outputs feed
    convolutions split over every compute core."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [channels, channels, 3, 3],
                                  [0.01] * (channels * channels * 9)) for i in (1, 2)]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "input"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["output"], name="relu2")]
    graph = helper.make_graph(nodes, "block", [x], [y], weights)
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.fixture(scope="module")
def quad():
    return load_system(SYSTEMS / "quad_core_heterogeneous.yaml")


@pytest.fixture(scope="module")
def block_schedule(quad, tmp_path_factory):
    graph = graph_from_onnx(write_residual_block(tmp_path_factory.mktemp("block") / "b.onnx"))
    plan = default_plan(graph, quad)  # convolutions split over the four compute cores
    plan.rows = {node.name: 2 for node in graph.nodes}
    plan.groups = [[node.name for node in graph.nodes]]
    plan.routes = "links"  # core-to-core data on the point-to-point links where there are any
    return schedule_tiles(graph, quad, plan, TileCoster(quad))


def _link(system, a: int, b: int):
    return next(link for link in system.links if link.kind == "link" and
                set(link.cores) == {a, b})


def test_a_link_has_a_channel_per_direction_and_a_bus_has_one(quad):
    link = _link(quad, 0, 4)
    assert link.channel(0) != link.channel(4)
    bus = next(link for link in quad.links if link.kind == "bus")
    assert bus.channel(0) == bus.channel(4)
    channels = quad.channels()
    assert len(channels) == 2 * sum(1 for k in quad.links if k.kind == "link") + 1
    # A two-hop route names the direction of each hop.
    route = (_link(quad, 1, 2), _link(quad, 2, 3))
    assert quad.route_channels(1, 3, route) == ["link 1 1>2", "link 2 2>3"]
    assert quad.route_channels(3, 1, route[::-1]) == ["link 2 3>2", "link 1 2>1"]


def test_the_validator_allows_both_directions_of_a_link_at_full_rate(block_schedule, quad):
    schedule = block_schedule
    assert check_schedule(schedule) == []
    link = _link(quad, 0, 4)
    after = schedule.latency + 10
    bits = int(link.bandwidth * 100)

    def transfer(source, target, resource, start=after):
        return Transfer(("slice", -1, -1), source, target, bits, start, start + 100,
                        (resource,), 0.0, "input", link.bandwidth)

    there, back = transfer(0, 4, link.channel(0)), transfer(4, 0, link.channel(4))
    schedule.transfers += [there, back]
    try:
        assert check_schedule(schedule) == []
        schedule.transfers.append(transfer(0, 4, link.channel(0), after + 50))
        assert any("carries" in p for p in check_schedule(schedule))
        schedule.transfers.pop()
        schedule.transfers.append(transfer(0, 4, link.channel(4), after + 500))
        assert any("not a route" in p for p in check_schedule(schedule))
        schedule.transfers.pop()
        bus = next(k for k in quad.links if k.kind == "bus")
        both = [Transfer(("slice", -1, -1), a, b, bits, after + 1000, after + 1100,
                         (bus.channel(a),), 0.0, "input", bus.bandwidth)
                for a, b in ((0, 1), (1, 0))]
        schedule.transfers += both
        assert any("carries" in p for p in check_schedule(schedule))
    finally:
        schedule.transfers[:] = [t for t in schedule.transfers if t.item != ("slice", -1, -1)]


def test_the_scheduler_uses_both_directions_of_a_link_at_once(tmp_path):
    """With the convolutions on core 0 and a narrow link to the SIMD core, rows go into the
    SIMD core while earlier rows come back over the same link."""
    shutil.copytree(SYSTEMS, tmp_path / "systems")
    path = tmp_path / "systems" / "quad_core_heterogeneous.yaml"
    text = path.read_text()
    assert "{type: link, cores: [0, 4], bandwidth: 64}" in text
    path.write_text(text.replace("{type: link, cores: [0, 4], bandwidth: 64}",
                                 "{type: link, cores: [0, 4], bandwidth: 2}"))
    quad = load_system(path)
    graph = graph_from_onnx(write_residual_block(tmp_path / "b.onnx"))
    plan = default_plan(graph, quad)
    plan.allocation.update({"conv1": (0,), "conv2": (0,)})
    plan.rows = {node.name: 2 for node in graph.nodes}
    plan.groups = [[node.name for node in graph.nodes]]
    plan.routes = "links"
    schedule = schedule_tiles(graph, quad, plan, TileCoster(quad))
    assert check_schedule(schedule) == []
    link = _link(quad, 0, 4)
    into = [t for t in schedule.transfers if link.channel(0) in t.resources and
            (t.source, t.target) == (0, 4)]
    out = [t for t in schedule.transfers if link.channel(4) in t.resources and
           (t.source, t.target) == (4, 0)]
    assert into and out
    assert any(a.start < b.end and b.start < a.end for a in into for b in out)


def test_a_simd_output_read_by_every_core_goes_over_the_bus_once(block_schedule, quad):
    pushes = [t for t in block_schedule.transfers if t.reason == "push" and t.also_to]
    assert pushes, "no SIMD output was sent to several cores at once"
    bus = next(k for k in quad.links if k.kind == "bus")
    for push in pushes:
        assert push.source == 4 and bus.channel(4) in push.resources
        receivers = {push.target, *push.also_to}
        assert len(receivers) >= 2 and 4 not in receivers
        for receiver in receivers:  # each one holds the copy from the moment it arrives
            assert any(b.core == receiver and b.item == push.item and b.ready >= push.end
                       for b in block_schedule.buffers)
    pushes[0].also_to = (*pushes[0].also_to, 99)
    try:
        assert any("reaches core 99" in p for p in check_schedule(block_schedule))
    finally:
        pushes[0].also_to = pushes[0].also_to[:-1]


def test_energy_by_kind_counts_dram_once_and_every_bus_receiver(block_schedule, quad):
    figures = schedule_figures(block_schedule)
    dram = quad.offchip
    expected_dram = sum(
        t.bits * (dram.read_pj_per_bit if t.source == quad.offchip_core_id
                  else dram.write_pj_per_bit)
        for t in block_schedule.transfers if quad.offchip_core_id in (t.source, t.target))
    assert figures["energy_breakdown_pj"]["dram"] == pytest.approx(expected_dram, rel=1e-9)
    channels = quad.channels()
    expected_links = sum(
        channels[r].pj_per_bit * t.bits * (1 + len(t.also_to))
        for t in block_schedule.transfers for r in t.resources if r in channels)
    assert figures["energy_breakdown_pj"]["links"] == pytest.approx(expected_links, rel=1e-9)


def _network(system, graph, multipath=True):
    return Network(system, default_plan(graph, system), multipath=multipath)


def test_a_long_transfer_is_split_over_routes_without_a_common_link(quad, tmp_path):
    """Core 0 to core 2 (no direct link): the bus (its 64 bits/cycle left beside DRAM) and
    the two-hop routes through cores 1, 3 and the SIMD core 4 (64 each) carry a share each
    and finish together, four times sooner than the best single route."""
    graph = graph_from_onnx(write_residual_block(tmp_path / "b.onnx"))
    network = _network(quad, graph)
    bits = 64 * 4 * 10_000
    parts = network.split_routes(0, 2, bits, ready=100.0)
    single = network.best_route(0, 2, bits, 100.0)
    assert len(parts) == 4
    assert sum(sum(piece[2] for piece in part[4]) for part in parts) == bits
    channels = [set(part[1]) for part in parts]
    for first in range(4):
        for second in range(first + 1, 4):
            assert not channels[first] & channels[second]
    finish = max(part[0] for part in parts)
    assert finish == pytest.approx(100 + bits / (4 * 64), abs=2)
    assert single[0] == pytest.approx(100 + bits / 64, abs=2)
    # Short transfers and DRAM transfers stay on one route; so does everything without
    # multipath.
    assert len(network.split_routes(0, 2, 64 * 100, 0.0)) == 1
    assert len(network.split_routes(0, 5, bits, 0.0)) == 1
    assert len(_network(quad, graph, multipath=False).split_routes(0, 2, bits, 0.0)) == 1


def test_the_validator_allows_one_hop_more_than_the_shortest_route_and_no_more(
        block_schedule, quad):
    schedule = block_schedule
    after = schedule.latency + 10
    two_hops = ("link 0 0>1", "link 1 1>2")  # 0 -> 2 over cores 1: the bus is one hop
    three_hops = ("link 3 0>3", "link 2 3>2", "link 1 2>1")  # 0 -> 1 has a direct link
    assert quad.route_channels(0, 2, (_link(quad, 0, 1), _link(quad, 1, 2))) == list(two_hops)
    try:
        schedule.transfers.append(Transfer(("slice", -1, -1), 0, 2, 6400, after, after + 100,
                                           two_hops, 0.0, "input", 64))
        assert check_schedule(schedule) == []
        schedule.transfers.append(Transfer(("slice", -1, -1), 0, 1, 6400, after, after + 100,
                                           three_hops, 0.0, "input", 64))
        assert any("not a route" in p for p in check_schedule(schedule))
    finally:
        schedule.transfers[:] = [t for t in schedule.transfers if t.item != ("slice", -1, -1)]


def test_single_route_moves_each_transfer_over_one_route(quad, tmp_path):
    """``single_route`` (``--single-route``), as Stream moves data: no item crosses between two
    cores over two routes; by default some long ones do, and the schedule is no slower."""
    path = write_residual_block(tmp_path / "b.onnx", channels=64, size=56)

    def routes_per_move(result) -> int:
        seen: dict[tuple, set] = {}
        for transfer in result.schedule.transfers:
            key = (transfer.item, transfer.source, transfer.target)
            seen.setdefault(key, set()).add(transfer.resources)
        return max(len(resources) for resources in seen.values())

    options = {"granularity": "rows=8", "allocate": "fixed", "precision": "onnx"}
    split = schedule(str(path), quad, **options)
    single = schedule(str(path), quad, single_route=True, **options)
    assert single.plan.describe()["split_transfers"] is False
    assert routes_per_move(single) == 1
    assert routes_per_move(split) > 1
    assert split.schedule.latency <= single.schedule.latency


@pytest.mark.parametrize("seed", range(4))
def test_the_fastest_route_is_the_best_of_all_routes(quad, tmp_path, seed):
    """``Network.fastest`` skips routes that cannot win; on busy channels (random bursts
    reserved) it must still pick what evaluating every candidate route picks. A split over
    several routes moves every bit on channels no two parts share, and finishes sooner."""
    import random

    rng = random.Random(seed)
    graph = graph_from_onnx(write_residual_block(tmp_path / "b.onnx"))
    for routes in ("share", "links"):
        network = _network(quad, graph)
        network.plan.routes = routes
        for name in sorted(network.timelines):  # random traffic: fragmented on some
            timeline = network.timelines[name]
            for _ in range(rng.choice([0, 5, 60])):
                rate = rng.choice([r for r in (8, 16, 32, 64) if r <= timeline.capacity])
                start = rng.randrange(0, 8_000)
                timeline.reserve(start, start + rng.randrange(10, 400), rate)
        for _ in range(60):
            source, target = rng.sample([0, 1, 2, 3, 4, 5], 2)
            bits, ready = rng.choice([64, 4096, 100_000, 400_000]), rng.randrange(0, 8_000)
            network.candidates.clear()
            candidates = network.candidate_routes(source, target)
            every = [network.on_route(source, target, r, bits, ready) for r in candidates]
            expected = min(range(len(every)), key=lambda i: (every[i][0], i))
            found, route = network.fastest(source, target, bits, ready)
            assert found[0] == every[expected][0]
            assert route == candidates[expected]
            # A split moves every bit, over channels no two parts share, and is sooner.
            parts = network.split_routes(source, target, bits, ready)
            assert sum(piece[2] for part in parts for piece in part[4]) == bits
            channels = [set(part[1]) for part in parts]
            assert sum(len(c) for c in channels) == len(set().union(*channels))
            assert max(part[0] for part in parts) <= found[0]
            if len(parts) > 1:
                assert max(part[0] for part in parts) < found[0]
