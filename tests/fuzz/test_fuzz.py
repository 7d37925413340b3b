"""Random networks through every stage (a small seeded sample; the large run is
benchmarks/fuzz_networks.py), the shrinker, and every bug the fuzzer found, kept as the
shrunk network that exposed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.fuzz import NetworkSpec, check_network, fuzz, random_network
from kiln.fuzz.differential import CaseResult, StageFailure
from kiln.fuzz.networks import build_module
from kiln.fuzz.shrink import shrink

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_found_bug_stays_fixed(case):
    data = json.loads(case.read_text())
    spec = NetworkSpec.from_json(json.dumps(data["network"]))
    result = check_network(spec, tuple(data["stages"]), vectors=2)
    assert result.ok, f"{data['bug']}\n{result.failure}"
    assert set(result.passed) == set(data["stages"])


def test_a_seeded_sample_passes_lower_engine_and_onnx():
    report = fuzz(count=24, seed=424_242, stages=("lower", "engine", "onnx"))
    assert report.ok, report.failures
    assert report.passed == {"lower": 24, "engine": 24, "onnx": 24}


def test_a_seeded_sample_passes_rtl_on_verilator():
    report = fuzz(count=2, seed=90_210, stages=("lower", "engine", "rtl"), vectors=2)
    assert report.ok, report.failures
    assert report.passed["rtl"] == 2


def test_generator_is_seeded_and_covers_what_the_stages_claim():
    assert random_network(5) == random_network(5)
    assert random_network(5) != random_network(6)
    specs = [random_network(seed) for seed in range(300)]
    layers = [layer for spec in specs for layer in spec.layers]
    convs = [layer for layer in layers if layer["op"] == "conv"]
    assert {k for layer in convs for k in layer["kernel"]} == set(range(1, 8))
    assert {layer["stride"] for layer in convs} == {1, 2, 3}
    assert {p for layer in convs for p in layer["padding"]} == {0, 1, 2, 3}
    assert any(len(set(layer["padding"])) > 1 for layer in convs)  # asymmetric
    assert {layer["dilation"] for layer in convs} == {1, 2}
    assert {layer["op"] for layer in layers} >= {"maxpool", "avgpool", "residual", "flatten",
                                                  "global_avgpool", "linear"}
    assert any(layer.get("ceil") for layer in layers if layer["op"] == "maxpool")
    assert {spec.weight["bits"] for spec in specs} == set(range(2, 9))
    assert {spec.rounding for spec in specs} == {"floor", "nearest", "float32"}
    assert any(spec.activation["signed"] for spec in specs)
    assert any(spec.via_onnx for spec in specs)
    for spec in specs[:40]:  # every drawn network builds and runs
        module = build_module(spec)
        assert module(__import__("torch").zeros(2, *spec.input_shape)).shape[0] == 2


def test_rtl_networks_are_only_what_the_emitter_takes():
    from kiln.fuzz.differential import rtl_supported

    assert all(rtl_supported(random_network(seed, rtl=True)) is None for seed in range(100))


def test_shrinker_finds_the_smallest_network_that_fails_the_same_way():
    """A synthetic bug (any conv with a kernel of 3 or more) shrinks to one such conv."""
    def buggy(spec: NetworkSpec) -> CaseResult:
        result = CaseResult(spec)
        if any(layer["op"] == "conv" and max(layer["kernel"]) >= 3 for layer in spec.layers):
            result.failure = StageFailure("engine", "kernel too large: 3")
        return result

    spec = next(s for s in (random_network(seed) for seed in range(100))
                if sum(layer["op"] == "conv" for layer in s.layers) >= 3 and
                any(layer["op"] == "conv" and max(layer["kernel"]) >= 3 for layer in s.layers))
    small, result, tried = shrink(spec, buggy(spec), stages=("engine",), check=buggy)
    convs = [layer for layer in small.layers if layer["op"] == "conv"]
    assert result.failure is not None and tried > 0
    assert len(convs) == 1 and max(convs[0]["kernel"]) == 3 and convs[0]["out"] == 1
    assert len(small.layers) < len(spec.layers)


def test_unknown_stage_and_empty_count_are_user_errors():
    with pytest.raises(KilnError, match="unknown fuzz stage"):
        fuzz(count=1, stages=("lower", "bitstream"))
    with pytest.raises(KilnError, match="at least 1"):
        fuzz(count=0)


def test_int8_gemm_with_a_reduction_of_one_is_exact():
    from kiln.integer.ops import qmatmul

    x = np.array([[3], [-4], [7]], dtype=np.int8)
    weight = np.array([[-102], [-127]], dtype=np.int8)  # [out, in]: its .T has strides (1, 1)
    got = qmatmul(x, weight.T, 0, 0, 0, 1 << 30, -1, qmin=-10_000, qmax=10_000)
    assert got.tolist() == (x.astype(np.int64) @ weight.T.astype(np.int64)).tolist()


def test_linear_layer_on_a_feature_map_is_refused_by_name():
    import torch

    from kiln.graph import from_torch
    from kiln.integer import lower
    from kiln.quant import calibrate, quantize, uniform_config

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Linear(4, 3))
    graph = from_torch(net, torch.zeros(1, 1, 4, 4))
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), torch.rand(16, 1, 4, 4))
    with pytest.raises(KilnError, match="linear layer '_1' is applied to a rank-4 tensor"):
        lower(quantized)


def test_dilated_one_wide_kernel_on_a_one_wide_map_does_not_crash():
    """Every (kx=1, dilation 2, width 1, padding, stride >= 2) case crashed PyTorch's
    channels-last convolution (a segfault of the whole process)."""
    from kiln.fuzz.reference import _conv
    from kiln.integer.ops import conv_accumulate
    from kiln.integer.program import IntOp

    rng = np.random.default_rng(0)
    for ky, stride, padding in ((1, 2, 1), (3, 2, 1), (2, 3, 2)):
        x = rng.integers(0, 255, (8, 4, 5, 1)).astype(np.uint8)
        weight = rng.integers(-100, 100, (5, 4, ky, 1))
        bias = rng.integers(-1000, 1000, 5)
        acc = conv_accumulate(x, weight, bias, x_zero=3, w_zero=0, stride=(stride, stride),
                              padding=(padding, padding), dilation=(2, 2), groups=1)
        op = IntOp("conv", "c", ["x"], "y", {
            "in_quant": {"scale": 1.0, "zero_point": 3, "bits": 8, "signed": False},
            "out_quant": {"scale": 1.0, "zero_point": 0, "bits": 32, "signed": True},
            "padding": [padding, padding], "stride": [stride, stride], "dilation": [2, 2],
            "groups": 1, "clamp": [-2**31, 2**31 - 1]},
            {"weight": weight, "weight_zero": np.zeros(5, np.int64), "bias": bias,
             "m0": np.full(5, 1 << 30), "shift": np.full(5, -1)})
        assert np.array_equal(np.asarray(acc, dtype=np.int64), _conv(op, x, "floor"))


def test_a_seeded_sample_schedules_on_the_example_systems():
    # PyTorch's own ONNX exports (asymmetric padding as a Pad fed by a constant subgraph,
    # ceil-mode pools, residual adds, global pools, 1x1 tiles) on kiln's example systems.
    report = fuzz(count=20, seed=1_000, stages=("lower", "schedule"))
    assert report.ok, report.failures
    assert report.passed["schedule"] + report.skipped["schedule"] == 20
    assert report.passed["schedule"] >= 16
    assert len(report.skips) == sum(report.skipped.values())


def test_every_skip_is_recorded_with_its_seed_and_reason():
    from kiln.fuzz.runner import FuzzReport, _count

    stages = ("lower", "schedule")
    report = FuzzReport(seed=40, count=2, stages=stages, passed=dict.fromkeys(stages, 0),
                        skipped=dict.fromkeys(stages, 0))
    _count(report, CaseResult(random_network(40), passed={"lower": True, "schedule": True}),
           stages)
    _count(report, CaseResult(random_network(41), passed={"lower": True},
                              skipped={"schedule": "no core runs LRN"}), stages)
    assert report.skipped == {"lower": 0, "schedule": 1}
    assert report.skips == [{"seed": 41, "stage": "schedule", "reason": "no core runs LRN",
                             "network": random_network(41).describe()}]
    assert report.as_dict()["skip_reasons"] == {"schedule: no core runs LRN": 1}


def test_the_schedule_stage_catches_a_tiler_that_drops_rows(monkeypatch):
    import kiln.hw.schedule.tiles as tiles

    real = tiles.row_ranges
    monkeypatch.setattr(tiles, "row_ranges", lambda node, step: real(node, step)[:-1] or
                        real(node, step))
    failures = [check_network(random_network(seed), ("lower", "schedule")).failure
                for seed in range(1_000, 1_010)]
    caught = [f for f in failures if f is not None]
    assert caught and all(f.stage == "schedule" for f in caught)
    assert any("rows" in f.message for f in caught)
