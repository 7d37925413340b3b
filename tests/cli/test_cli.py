"""The kiln command as a user runs it: a subprocess, its output and its exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_help_teaches_with_examples():
    result = kiln("--help")
    assert result.returncode == 0 and "kiln flow convnet" in result.stdout
    inspect_help = kiln("inspect", "--help")
    assert "kiln inspect resnet18" in inspect_help.stdout
    # prose wraps to the terminal (a docstring's line breaks made ragged half-lines at
    # 80 columns); a list of examples keeps one command a line
    search_help = kiln("search", "--help", env={"COLUMNS": "80"}).stdout
    assert "constraints, strategy, trials and storage" in " ".join(search_help.split())
    assert not any(line.strip() in ("trials", "quantization") for line in search_help.split("\n"))
    fuzz_lines = [line.strip() for line in kiln("fuzz", "--help").stdout.split("\n")]
    assert "kiln fuzz --count 200 --seed 0" in fuzz_lines


def test_inspect_resnet18_json():
    result = kiln("inspect", "resnet18", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["totals"]["macs"] == 1_814_073_344
    first = report["layers"][0]
    assert first["loops"]["K"] == 64 and first["loops"]["FY"] == 7


def test_inspect_table_and_onnx(tmp_path):
    table = kiln("inspect", "convnet")
    assert table.returncode == 0 and "1,117,056 MACs" in table.stdout
    onnx_report = kiln("inspect", str(Path(__import__("qonnx").__file__).parent
                                      / "data/onnx/mnist-conv/model.onnx"), "--json")
    assert json.loads(onnx_report.stdout)["totals"]["macs"] == 786_560


def test_train_writes_checkpoint(tmp_path):
    out = tmp_path / "tiny.pt"
    result = kiln("train", "jsc-tiny", "--data", "letter", "--epochs", "1", "--out", str(out),
                  "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert out.is_file() and 0.05 < report["final_accuracy"] <= 1.0
    evaluated = json.loads(kiln("evaluate", str(out), "--json").stdout)
    assert evaluated["accuracy"] == pytest.approx(report["final_accuracy"])


def _assert_one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert text in result.stderr
    assert len(result.stderr.strip().splitlines()) in (1, 2, 3)  # error line, maybe a hint


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path):
    truncated = tmp_path / "cut.onnx"
    qonnx_model = Path(__import__("qonnx").__file__).parent / "data/onnx/mnist-conv/model.onnx"
    truncated.write_bytes(qonnx_model.read_bytes()[:1000])
    _assert_one_line_error(kiln("inspect", str(truncated)), "cut.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    _assert_one_line_error(kiln("inspect", str(text)), "text.onnx")
    _assert_one_line_error(kiln("inspect", "resnet-18"), "unknown model 'resnet-18'")
    _assert_one_line_error(
        kiln("evaluate", "convnet", env={"KILN_FASHION_MNIST_DIR": str(tmp_path)}),
        "not installed")


def test_unsupported_operator_from_the_cli(tmp_path):
    from onnx import TensorProto, helper

    from tests.conftest import save_onnx

    graph = helper.make_graph(
        [helper.make_node("Erf", ["X"], ["Y"], name="erf0")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])])
    path = save_onnx(helper.make_model(graph), tmp_path / "erf.onnx")
    _assert_one_line_error(kiln("inspect", str(path)), "Erf (node 'erf0')")


def test_lists():
    assert "convnet" in [m["name"] for m in json.loads(kiln("models", "--json").stdout)]
    datasets = json.loads(kiln("datasets", "--json").stdout)
    assert {d["name"]: d["installed"] for d in datasets}["fashion-mnist"] is True


def test_every_command_refuses_an_out_that_is_a_file_before_working(tmp_path):
    """One line, exit 2, no traceback, and the file is left as it was."""
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    program = tmp_path / "program"
    assert kiln("lower", "jsc-tiny", "--data", "letter", "--out", str(program)).returncode == 0
    commands = [
        ["lower", "jsc-tiny", "--data", "letter", "--out", str(blocker)],
        ["emit-rtl", str(program), "--out", str(blocker)],
        ["export-onnx", str(program), "--out", str(blocker / "x.onnx")],
        ["map", "jsc-tiny", "-a", "examples/hardware/edge_npu.yaml", "--out", str(blocker)],
        ["cost", "jsc-tiny", "-a", "examples/hardware/edge_npu.yaml", "--out", str(blocker)],
        ["compare", "jsc-tiny", "--accelerators", "examples/hardware/edge_npu.yaml", "--out",
         str(blocker)],
        ["demo", "--out", str(blocker)],
        ["train", "jsc-tiny", "--epochs", "1", "--out", str(blocker / "x.pt")],
        ["experiment", "quantization", "--model", "jsc-tiny", "--out", str(blocker)],
        ["experiment", "pruning", "--model", "jsc-tiny", "--out", str(blocker)],
        ["fuzz", "--count", "1", "--out", str(blocker)],
    ]
    for command in commands:
        _assert_one_line_error(kiln(*command), "is a file, not a folder")
        assert blocker.read_text() == "keep me"
    _assert_one_line_error(kiln("export-onnx", str(program), "--out", str(tmp_path)),
                           "is a folder, not a file")


def test_train_a_zoo_model_on_its_default_dataset(tmp_path):
    """jsc-tiny's default dataset (letter) has 26 classes: the head follows it."""
    result = kiln("train", "jsc-tiny", "--epochs", "1", "--out", str(tmp_path / "x.pt"),
                  "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == "letter"
