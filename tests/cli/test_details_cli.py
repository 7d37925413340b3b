"""The small things a user trips on, each with the test that guards it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import kiln

ROOT = Path(__file__).parents[2]
EDGE = str(ROOT / "examples" / "hardware" / "edge_npu.yaml")
QONNX_MNIST = Path(__import__("qonnx").__file__).parent / "data/onnx/mnist-conv/model.onnx"


def _json(*args: str) -> dict:
    result = kiln(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sweep_rows_keep_their_labels():
    """'[array.D1=4]' was eaten as rich markup: every row read edge_npu_8x8x4."""
    table = kiln("compare", "jsc-tiny", "--accelerators", EDGE, "--sweep", "array.D1=4,8",
                 "--refine", "0")
    assert table.returncode == 0, table.stderr
    assert "[array.D1=4]" in table.stdout and "[array.D1=8]" in table.stdout
    rows = _json("compare", "jsc-tiny", "--accelerators", EDGE, "--sweep", "array.D1=4,8",
                 "--refine", "0")["accelerators"]
    assert len({row["accelerator"] for row in rows}) == 2


def test_map_and_compare_agree_by_default_and_take_data_or_dataset():
    mapped = _json("map", "convnet", "-a", EDGE, "--data", "fashion-mnist")
    compared = _json("compare", "convnet", "--accelerators", EDGE, "--dataset",
                     "fashion-mnist")
    assert compared["accelerators"][0]["latency_cycles"] == mapped["latency_cycles"]


def test_version_and_help_texts():
    version = kiln("--version")
    assert version.returncode == 0 and version.stdout.startswith("kiln ")
    assert "all" in kiln("evaluate", "--help").stdout  # --split train, test or all


def test_help_texts_keep_their_brackets():
    """Rich markup ate '[data]' and '[model]' from flow's help ("with  in --config"): every
    command's and option's help escapes a bracket that rich would read as a tag."""
    import re

    import typer

    from kiln.cli.main import app

    tag = re.compile(r"(?<!\\)\[[a-z#/@][^\]]*\]")  # what rich takes for markup
    eaten = []

    def visit(command, path: str) -> None:
        texts = [command.help or ""] + [getattr(param, "help", "") or ""
                                        for param in command.params]
        eaten.extend(f"{path}: {match}" for text in texts for match in tag.findall(text))
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, f"{path} {name}")

    visit(typer.main.get_command(app), "kiln")
    assert tag.findall("default: [data] dataset") == ["[data]"]  # the check can fail
    assert eaten == []
    shown = kiln("flow", "--help")
    assert "[train] in --config" in " ".join(shown.stdout.split())


def test_search_tables_have_units_and_one_accuracy_column():
    from kiln.search.report import best_table, format_metric
    from kiln.search.results import SearchResult

    row = {"number": 3, "params": {"a.w": 4}, "metrics": {"size": 104340.0,
                                                         "accuracy": 0.9116}}
    for objectives in (["size"], ["size", "accuracy"]):
        result = SearchResult("s", "memory://", objectives,
                              ["minimize"] * len(objectives), 0.92, [], [row])
        columns, rows = best_table(result)
        assert columns.count("accuracy") == 1
        assert "101.9 KiB" in rows[0] and "91.16%" in rows[0]
    assert format_metric("energy", 8_480_000) == "8.480 µJ"


def test_quantize_scales_inputs_and_inspect_reads_a_qdq_export(tmp_path):
    scaled = _json("quantize", str(QONNX_MNIST), "--data", "mnist-5k", "--input-scale",
                   "255", "--weight-bits", "8", "--activation-bits", "8", "--out",
                   str(tmp_path / "mnist.pt"))
    assert scaled["quantized_accuracy"] > 0.98  # calibrated on 0..255 pixels
    evaluated = _json("evaluate", str(tmp_path / "mnist.pt"))  # the file keeps the scale
    assert evaluated["accuracy"] == scaled["quantized_accuracy"]
    program = tmp_path / "p"
    assert kiln("lower", str(tmp_path / "mnist.pt"), "--rounding", "float32", "--out",
                str(program)).returncode == 0
    assert kiln("export-onnx", str(program), "--format", "qdq", "--out",
                str(tmp_path / "qdq.onnx")).returncode == 0
    inspected = _json("inspect", str(tmp_path / "qdq.onnx"))
    assert [layer["op"] for layer in inspected["layers"]].count("quantize") >= 4
