"""kiln cost / map / compare as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import kiln

HW = Path(__file__).resolve().parents[2] / "examples" / "hardware"


def test_map_json_gives_every_layer_and_totals(tmp_path):
    result = kiln(
        "map",
        "convnet",
        "-a",
        str(HW / "edge_npu.yaml"),
        "--objective",
        "edp",
        "--json",
        "--out",
        str(tmp_path / "map"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [layer["layer"] for layer in report["layers"]] == [
        "features_0",
        "features_4",
        "classifier_1",
        "classifier_3",
    ]
    assert report["latency_cycles"] == sum(layer["latency_cycles"] for layer in report["layers"])
    assert all(0 < layer["utilization"] <= 1 for layer in report["layers"])
    assert {"maxpool", "relu"} <= {entry["op"] for entry in report["not_costed"]}
    for name in ("latency_per_layer.png", "energy_breakdown.png", "mapping.json"):
        assert (tmp_path / "map" / name).stat().st_size > 1000


def test_cost_with_a_zigzag_mapping_file_and_workload_yaml():
    result = kiln(
        "cost",
        str(HW / "workloads" / "conv3x3.yaml"),
        "-a",
        str(HW / "tpu_like.yaml"),
        "--mapping",
        str(HW / "tpu_like_mapping.yaml"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    layer = json.loads(result.stdout)["layers"][0]
    assert layer["spatial_mapping"] == "D1:K32 D2:C32"
    assert layer["latency_cycles"] >= layer["ideal_cycles"] == 128 * 128 * 28 * 28 * 9 // 1024


def test_compare_accelerators_and_a_sweep(tmp_path):
    result = kiln(
        "compare",
        str(HW / "workloads" / "gemm256.yaml"),
        "--accelerators",
        str(HW / "tpu_like.yaml"),
        str(HW / "edge_npu.yaml"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["accelerators"]
    assert [r["accelerator"] for r in rows] == ["tpu_like_32x32", "edge_npu_8x8x4"]
    # 1024 MACs against 256: the bigger array is faster on a 256^3 GEMM.
    assert rows[0]["latency_cycles"] < rows[1]["latency_cycles"]
    sweep = kiln(
        "compare",
        str(HW / "workloads" / "gemm256.yaml"),
        "--accelerators",
        str(HW / "edge_npu.yaml"),
        "--sweep",
        "array.D1=2,4,8",
        "--json",
    )
    assert sweep.returncode == 0, sweep.stderr
    latencies = [r["latency_cycles"] for r in json.loads(sweep.stdout)["accelerators"]]
    assert latencies[0] > latencies[1] > latencies[2]


def test_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((HW / "edge_npu.yaml").read_text().replace("size: 262144", "size: 0"))
    result = kiln("map", "convnet", "-a", str(bad))
    assert result.returncode == 2
    assert "memories.weight_buffer.size" in result.stderr and "Traceback" not in result.stderr
    objective = kiln("map", "convnet", "-a", str(HW / "edge_npu.yaml"), "--objective", "speed")
    assert objective.returncode == 2 and "--objective" in objective.stderr
    sweep = kiln(
        "compare", "convnet", "--accelerators", str(HW / "edge_npu.yaml"), "--sweep", "array.D9=2"
    )
    assert sweep.returncode == 2 and "no array dimension 'D9'" in sweep.stderr


def test_map_with_workers_and_a_cache(tmp_path):
    cache = tmp_path / "cache"
    command = ("map", "convnet", "-a", str(HW / "edge_npu.yaml"), "--refine", "0", "--json")
    first = kiln(*command, "--workers", "2", "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    again = kiln(*command, "--cache", str(cache))
    assert again.returncode == 0, again.stderr
    cold, warm = json.loads(first.stdout), json.loads(again.stdout)
    assert cold["layers_from_cache"] == 0 and warm["layers_from_cache"] == 4
    assert warm["layers"] == cold["layers"]
    table = kiln(*command[:-1], "--cache", str(cache))
    assert "4 distinct layers taken from the cache" in table.stdout
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    refused = kiln(*command, "--cache", str(not_a_folder))
    assert refused.returncode == 2 and "is a file, not a folder" in refused.stderr


def test_zigzag_own_bundled_accelerator_from_the_command_line():
    """ZigZag's tpu_like.yaml repeats 'ports': an error in kiln's strict reading that names
    the flag; read as ZigZag reads it with --zigzag-yaml, with a one-line warning."""
    import zigzag

    bundled = Path(zigzag.__file__).parent / "inputs" / "hardware" / "tpu_like.yaml"
    strict = kiln("map", "jsc-three-linear", "-a", str(bundled))
    assert strict.returncode == 2 and "--zigzag-yaml" in strict.stderr
    loose = kiln("map", "jsc-three-linear", "-a", str(bundled), "--zigzag-yaml", "--json")
    assert loose.returncode == 0, loose.stderr
    assert json.loads(loose.stdout)["latency_cycles"] > 0
    assert "warning: " in loose.stderr and "'ports' appears twice" in loose.stderr
    assert "construct_mapping" not in loose.stderr  # one line, not Python's source line
