"""The batched cost (every mapping of a search at once) against evaluate, to the last bit,
and the mapper built on it against a plain search that evaluates every mapping in full."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kiln.hw import evaluate, fit_spatial, load_accelerator
from kiln.hw.allocation import MemoryTooSmallError, allocate
from kiln.hw.allocation_batch import allocate_order_batch
from kiln.hw.analysis import analyse_operand, relevancy, spatial_per_level
from kiln.hw.cost import PortActivity, updating_window_union
from kiln.hw.cost_batch import BatchPlan
from kiln.hw.mapper import (
    canonical_key,
    roomy_top_memories,
    search_temporal,
)
from kiln.hw.mapping import temporal_loop_sizes
from kiln.hw.mapping_keys import KeyCoder
from kiln.hw.operand_batch import analyse_orders
from kiln.hw.orders import order_space
from kiln.hw.spatial import spatial_candidates
from kiln.hw.workload import _conv_layer, default_precision
from tests.hw.conftest import BUNDLED_ACCELERATORS, random_conv_layer, zigzag_inputs

ACCELERATORS = BUNDLED_ACCELERATORS


def _random_layer(seed: int):
    layer, hw, _ = random_conv_layer(seed)
    return layer, hw


def _allocated(layer, hw, spatial):
    """Every order's LOMA allocation (those that fit)."""
    rel = relevancy(layer)
    levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
    for order in order_space(temporal_loop_sizes(layer, spatial), None, 6).orders():
        try:
            yield order, allocate(layer, hw, levels, order, rel)
        except MemoryTooSmallError:
            continue


def _every_order(layer, hw, spatial):
    """Every order of the layer's loops, LOMA-allocated together, and the rows that fit."""
    rel = relevancy(layer)
    levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
    orders = list(order_space(temporal_loop_sizes(layer, spatial), None, 6).orders())
    batch = allocate_order_batch(layer, hw, levels, orders, rel)
    fitting = np.array([i for i in range(len(orders)) if batch.reasons[i] is None],
                       dtype=np.int64)
    return batch, fitting, KeyCoder(layer, rel, orders[0]).keys(batch)[2]


def test_batched_cost_equals_evaluate_on_every_order_of_random_layers():
    """Every allocated order of 24 random layers (two spatial mappings each, fractional
    unrollings among them), analysed and costed together as the mapper does: energy and
    latency equal evaluate's, bit for bit."""
    mappings, fractional = 0, 0
    for seed in range(24):
        layer, hw = _random_layer(seed)
        rel = relevancy(layer)
        for user in spatial_candidates(layer, hw, keep=2):
            spatial, spatial_int, limited = fit_spatial(layer, hw, user)
            batch, fitting, shapes = _every_order(layer, hw, spatial)
            if not len(fitting):
                continue
            total_cycles = math.prod(temporal_loop_sizes(layer, spatial).values())
            plan = BatchPlan(layer, hw, rel, limited)
            cache: dict = {}
            energy_rows, latency_rows = {}, {}
            for op in layer.operands:
                moves, moves_int = (
                    analyse_orders(layer, hw, side, op, rel, batch, fitting, shapes[op],
                                   total_cycles, cache) for side in (spatial, spatial_int))
                energy, latency = plan.table_rows(op, moves, moves_int)
                energy_rows[op] = list(plan.energy_tables[op].extend(energy))
                latency_rows[op] = list(plan.latency_tables[op].extend(latency))
            energy, latency = plan.score(energy_rows, latency_rows, total_cycles)
            for k, index in enumerate(fitting):
                cost = evaluate(layer, hw, spatial, batch.temporal(index), spatial_int, limited,
                                rel, cache)
                assert (energy[k], latency[k]) == (cost.energy_pj, cost.latency_cycles), (
                    seed, str(user), batch.orders[index])
            mappings += len(fitting)
            fractional += spatial_int.key() != spatial.key()
    assert mappings > 5000
    assert fractional > 0  # the energy and latency sides differ on some layers


def test_the_window_union_of_many_mappings_equals_one_at_a_time():
    """The per-port union of update windows, for movements that none may use whole
    (the case the batch works out one mapping at a time) and for those that may."""
    rng = random.Random(5)
    activities, rows = [], 60
    for _ in range(3):
        periods = np.array([rng.choice([4, 8, 16]) for _ in range(rows)])
        allowed = np.array([rng.randint(1, int(p)) for p in periods])
        counts = np.array([rng.randint(0, 5) for _ in range(rows)])
        activities.append((counts != 0, None, allowed, periods, counts))
    active = np.array([a[0] for a in activities])
    several = active.sum(axis=0) >= 2
    union = BatchPlan._window_union(activities, active, several)
    checked = 0
    for i in np.nonzero(several)[0]:
        listed = [PortActivity(0, int(a[2][i]), int(a[3][i]), int(a[4][i]), "")
                  for k, a in enumerate(activities) if active[k, i]]
        assert union[i] == updating_window_union(listed)
        checked += not any(a.period == a.allowed for a in listed)
    assert checked > 5


def _plain_search(layer, hw, user, objective):
    """The search as it was before batching: every distinct mapping evaluated in full,
    the best by (objective, energy, latency, mapping text)."""
    rel = relevancy(layer)
    spatial, spatial_int, limited = fit_spatial(layer, hw, user)
    roomy = roomy_top_memories(layer, hw, rel)
    seen, best, cache = set(), None, {}
    for _, temporal in _allocated(layer, hw, spatial):
        key = canonical_key(temporal, rel, roomy)
        if key in seen:
            continue
        seen.add(key)
        cost = evaluate(layer, hw, spatial, temporal, spatial_int, limited, rel, cache)
        primary = {"latency": cost.latency_cycles, "energy": cost.energy_pj,
                   "edp": cost.edp}[objective]
        rank = ((primary, cost.energy_pj, cost.latency_cycles), str(temporal.as_dict()))
        if best is None or rank < best[0]:
            best = (rank, cost, temporal)
    return best, len(seen)


@pytest.mark.parametrize("objective", ["latency", "energy", "edp"])
def test_the_batched_search_picks_what_a_full_evaluation_of_every_mapping_picks(objective):
    for seed in range(30, 38):
        layer, hw = _random_layer(seed)
        user = spatial_candidates(layer, hw, keep=1)[0]
        found = search_temporal(layer, hw, user, objective)
        (_, cost, temporal), distinct = _plain_search(layer, hw, user, objective)
        assert found.temporal == temporal, (seed, objective)
        assert (found.cost.energy_pj, found.cost.latency_cycles) == (
            cost.energy_pj, cost.latency_cycles)
        assert found.evaluated == distinct


@pytest.mark.parametrize("hw_name", ACCELERATORS)
def test_double_buffering_of_many_mappings_equals_one_at_a_time(hw_name):
    """Shared memories filled at random (random layers rarely fill one past half while
    another operand leaves room, the case where one operand's second buffer takes the
    room): the batch's double-buffering flags equal double_buffered's, mapping by mapping."""
    from kiln.hw.analysis import Analysis
    from kiln.hw.cost import double_buffered, utilization

    layer, _ = _random_layer(0)
    hw = load_accelerator(zigzag_inputs() / "hardware" / f"{hw_name}.yaml",
                          duplicate_keys="last")
    plan = BatchPlan(layer, hw, relevancy(layer), spatial_candidates(layer, hw, keep=1)[0])
    rng = random.Random(hw_name)
    rows = 400
    bits = {op: [[rng.randint(0, int(m.size_bits)) for m in plan.memories[op]]
                 for _ in range(rows)] for op in plan.ops}
    energy_of = {}
    for op in plan.ops:
        table = plan.energy_tables[op]
        array = np.zeros((rows, len(table.columns)))
        for m, memory in enumerate(plan.memories[op]):
            array[:, table.columns[("effective", m)]] = [row[m] / memory.size_bits
                                                         for row in bits[op]]
        energy_of[op] = array
    flags = plan._double_buffered(energy_of)
    took_room = 0
    for i in range(rows):
        effective = {op: [0] + bits[op][i] for op in plan.ops}
        analysis = Analysis(levels=plan.levels, total_cycles=1, unit_count={},
                            data_bits_unrolled=effective, effective_bits=effective,
                            movement={})
        expected = double_buffered(layer, hw, analysis)
        assert {op: [bool(f[i]) for f in flags[op]] for op in plan.ops} == expected
        _, _, alone, shared = utilization(layer, hw, analysis)
        took_room += any(shared[op][lv] > 0.5 and alone[op][lv] <= 1 - shared[op][lv]
                         for op in plan.ops for lv in range(plan.levels[op]))
    if plan.groups:
        assert took_room > 0


def _split_top_accelerator(tmp_path, weight_top_bits: int, sram_bits: int):
    """Weights with a top memory of their own (so that it alone can run out of room), and
    inputs and outputs sharing an SRAM (so that tiles can fail to fit together)."""
    import yaml

    from tests.hw.test_mapper import TINY, _memory, _port

    spec = {**TINY, "name": "split_top", "memories": dict(TINY["memories"])}
    spec["memories"] = {
        "w_reg": TINY["memories"]["w_reg"],
        "o_reg": TINY["memories"]["o_reg"],
        "sram": {**TINY["memories"]["sram"], "size": sram_bits},
        "w_top": _memory(weight_top_bits, 9.0, 9.0, ["I2"], ["D1", "D2"],
                         [_port("r", "read", 16, "I2, tl"), _port("w", "write", 16, "I2, fh")]),
        "dram": _memory(1_000_000, 50.0, 60.0, ["I1", "O"], ["D1", "D2"], [
            _port("rw", "read_write", 16, "I1, fh", "I1, tl", "O, fh", "O, tl", "O, fl",
                  "O, th")]),
    }
    path = tmp_path / f"split_top_{weight_top_bits}_{sram_bits}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_accelerator(path)


def _compare_allocations(layer, hw, lpf_limit, refused):
    rel = relevancy(layer)
    compared = 0
    for user in spatial_candidates(layer, hw, keep=2):
        spatial, _, _ = fit_spatial(layer, hw, user)
        levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
        orders = list(order_space(temporal_loop_sizes(layer, spatial), None,
                                  lpf_limit).orders())
        batch = allocate_order_batch(layer, hw, levels, orders, rel)
        for index, order in enumerate(orders):
            reason = batch.reasons[index]
            got = reason if reason is not None else batch.temporal(index)
            try:
                expected = allocate(layer, hw, levels, order, rel)
            except MemoryTooSmallError as error:
                expected = str(error).split(" (")[0]
                refused.add("together" if "together" in expected else
                            "below" if "below" in expected else "top")
            assert got == expected, (layer.name, str(user), order)
            compared += 1
    return compared


def test_allocating_many_orders_at_once_equals_one_at_a_time(tmp_path):
    """Every order of random layers, allocated together and one by one: the same levels,
    or the same reason for not fitting. On the bundled accelerators (lpf limits 4–7), then
    on small memories where every kind of refusal happens: the tile below, the tiles
    together, the top memory's loops."""
    compared, refused = 0, set()
    for seed in range(40, 50):
        layer, hw = _random_layer(seed)
        compared += _compare_allocations(layer, hw, random.Random(seed).choice([4, 6, 7]),
                                         refused)
    assert compared > 2000 and not refused
    for seed in range(8):
        rng = random.Random(seed)
        oy, ox, fy, fx = (rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 3),
                          rng.randint(1, 3))
        layer = _conv_layer(f"small{seed}", batch=1, groups=1, k=rng.randint(1, 12),
                            c=rng.randint(1, 12), oy=oy, ox=ox, fy=fy, fx=fx, stride=(1, 1),
                            dilation=(1, 1), in_hw=(oy + fy - 1, ox + fx - 1),
                            precision=default_precision())
        weights = layer.sizes["K"] * layer.sizes["C"] * layer.sizes["FY"] * layer.sizes["FX"]
        for fraction, sram_bits in ((0.3, 2048), (1.0, 2048), (1.0, rng.choice([64, 128]))):
            hw = _split_top_accelerator(tmp_path, max(16, int(weights * 8 * fraction)),
                                        sram_bits)
            compared += _compare_allocations(layer, hw, 6, refused)
    assert refused == {"below", "together", "top"}, refused


def test_keys_of_many_orders_group_them_as_the_keys_of_one_mapping_do():
    """Operand and mapping keys worked out for every order at once put the orders in the
    same groups as operand_key and canonical_key do, mapping by mapping: on LOMA's
    allocations and on every allocation of some orders (where irrelevant loops sit at the
    bottom of levels and move down), roomy top memories included."""
    import itertools

    from kiln.hw.allocation import all_allocations
    from kiln.hw.allocation_batch import OrderBatch
    from kiln.hw.analysis import operand_key

    def groups(keys: dict) -> list:
        found: dict = {}
        for index, key in keys.items():
            found.setdefault(key, []).append(index)
        return sorted(found.values())

    compared, merged, roomy_seen = 0, 0, 0
    for seed in range(60, 72):
        layer, hw = _random_layer(seed)
        rel = relevancy(layer)
        roomy = roomy_top_memories(layer, hw, rel)
        roomy_seen += bool(roomy)
        for user in spatial_candidates(layer, hw, keep=2):
            spatial, _, _ = fit_spatial(layer, hw, user)
            levels = {op: spatial_per_level(layer, hw, spatial, op) for op in layer.operands}
            orders = list(order_space(temporal_loop_sizes(layer, spatial), None, 6).orders())
            every = [t for order in orders[::29]
                     for t in itertools.islice(all_allocations(layer, hw, levels, order, rel),
                                               32)]
            batches = [allocate_order_batch(layer, hw, levels, orders, rel)]
            if every:
                batches.append(OrderBatch.from_temporals(layer, every))
            for batch in batches:
                coder = KeyCoder(layer, rel, orders[0], roomy)
                operand_keys, mapping_keys, _ = coder.keys(batch)
                fitting = [i for i in range(len(batch.orders)) if batch.reasons[i] is None]
                temporals = {i: batch.temporal(i) for i in fitting}
                for op in layer.operands:
                    expected = groups({i: operand_key(t.loops[op], rel.r[op], rel.ir[op])
                                       for i, t in temporals.items()})
                    assert groups({i: operand_keys[op][i] for i in fitting}) == expected
                expected = groups({i: canonical_key(t, rel, roomy)
                                   for i, t in temporals.items()})
                assert groups({i: mapping_keys[i] for i in fitting}) == expected
                compared += len(fitting)
                merged += len(fitting) - len(expected)
    assert compared > 2000 and merged > 500 and roomy_seen


def test_unconstrained_orders_come_in_the_constrained_walks_order():
    """The next-permutation walk (no constraints) yields every distinct order once, in the
    lexicographic order the constrained walk yields (a constraint past the last position
    forces that walk without ruling anything out)."""
    from kiln.hw.orders import count_orderings, unique_orderings

    for seed in range(200):
        rng = random.Random(seed)
        loops = [(rng.choice("KCXY"), rng.choice([2, 3, 5])) for _ in range(rng.randint(0, 7))]
        fast = list(unique_orderings(loops))
        walked = list(unique_orderings(loops, {len(loops): ("K", None)}))
        assert fast == walked
        assert len(fast) == count_orderings(loops) == len({tuple(o) for o in fast})


def test_operand_analyses_of_many_orders_equal_one_at_a_time():
    """Every operand of every allocated order of random layers (stride, dilation, padding:
    the input's sliding windows; fractional unrollings: both spatial sides), analysed for
    all orders at once: data held and every movement figure equal analyse_operand's."""
    compared, fractional = 0, 0
    for seed in range(80, 92):
        layer, hw = _random_layer(seed)
        rel = relevancy(layer)
        for user in spatial_candidates(layer, hw, keep=2):
            spatial, spatial_int, _ = fit_spatial(layer, hw, user)
            fractional += spatial_int.key() != spatial.key()
            batch, fitting, shapes = _every_order(layer, hw, spatial)
            total_cycles = math.prod(temporal_loop_sizes(layer, spatial).values())
            cache: dict = {}
            for op in layer.operands:
                for side in (spatial, spatial_int):
                    if not len(fitting):
                        continue
                    moves = analyse_orders(layer, hw, side, op, rel, batch, fitting,
                                           shapes[op], total_cycles, cache)
                    for k, index in enumerate(fitting):
                        part = analyse_operand(layer, hw, side, op,
                                               batch.temporal(index).loops[op], total_cycles,
                                               rel, cache)
                        assert [b[k] for b in moves.data_bits] == part.data_bits_unrolled
                        assert [b[k] for b in moves.effective_bits] == part.effective_bits
                        for m, move in enumerate(part.movement):
                            for name in ("amount", "precision", "period", "count", "bw_avg",
                                         "window"):
                                got = {d: getattr(moves, name)[m][d][k] for d in move.amount}
                                assert got == getattr(move, name), (seed, op, m, name)
                        compared += 1
    assert compared > 10000 and fractional > 0


@pytest.mark.parametrize("hw_name", ACCELERATORS)
def test_spatial_scores_without_the_full_grid_equal_the_full_grid(hw_name):
    """Spatial candidates scored with the largest array dimension kept out of the grid
    equal those scored over the whole grid: the same kept combinations and scores, for
    random layers, with and without a partial user mapping (meta_prototype's 4-D array
    is the one that made the grid large)."""
    from kiln.hw import spatial as mapper
    from kiln.hw.mapping import SpatialMapping

    hw = load_accelerator(zigzag_inputs() / "hardware" / f"{hw_name}.yaml",
                          duplicate_keys="last")
    def on_the_grid(layer, per_oa, total_units, keep=None):
        sizes, tables = mapper._option_tables(layer, per_oa)
        return mapper._score_spatial_grid(per_oa, tables, sizes, total_units, keep)

    compared = 0
    for seed in range(8):
        layer, _ = _random_layer(100 + seed)
        first_oa = next(iter(hw.array_sizes))
        partial = SpatialMapping({first_oa: {"K": 2}}) if seed % 3 == 0 else None
        for keep in (1, 3, None):
            for mixed in (False, True) if keep == 1 and seed == 0 else (False,):
                fast = spatial_candidates(layer, hw, mixed=mixed, keep=keep, fixed=partial)
                original = mapper._score_spatial
                mapper._score_spatial = on_the_grid
                try:
                    full = spatial_candidates(layer, hw, mixed=mixed, keep=keep, fixed=partial)
                finally:
                    mapper._score_spatial = original
                assert [str(m) for m in fast] == [str(m) for m in full], (seed, keep, mixed)
                compared += len(fast)
    assert compared > 50
