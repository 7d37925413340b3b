"""kiln flow: every stage on models it was not made for, caching by content, refusals,
interrupts, and the report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.flow import load_flow_config, parse_flow_config, run_flow, write_report
from tests.cli.test_cli import _assert_one_line_error, kiln
from tests.conftest import start_interruptible

FAST = {"data": {"calibration_batches": 2, "test_samples": 1000},
        "simulate": {"simulator": "verilator", "vectors": 4, "jobs": 1},
        "accelerator": {"refine": 0}}

RESIDUAL = '''
import torch
from torch import nn


class ResidualMLP(nn.Module):
    """An MLP with a residual add: the RTL emitter takes its add in fixed-point rounding only."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 26)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.head(torch.relu(h + self.fc2(h)))
'''


def _statuses(records) -> dict[str, str]:
    return {r.stage: r.status for r in records}


def test_jsc_through_every_stage_then_only_the_rtl_stages_again(tmp_path):
    config = parse_flow_config(FAST)
    records = run_flow("jsc-three-linear", config, tmp_path)
    statuses = _statuses(records)
    # the MVU runs conv, dense and pooling only: jsc's input BatchNorm is refused by name
    assert statuses.pop("mvu") == "refused" and statuses.pop("train") == "not selected"
    assert set(statuses.values()) == {"done"}
    assert "affine" in {r.stage: r.message for r in records}["mvu"]
    by = {r.stage: r.figures for r in records}
    assert by["onnx"]["bit_exact"] and by["simulate"]["bit_exact"]
    assert by["integer"]["top1_agreement"] > 0.99 and by["cost"]["latency_cycles"] > 0
    assert by["synth"]["cells"] > 0
    # placed and routed after a simulation of what is placed; the schedule is validated
    assert by["fpga"]["bit_exact"] and by["fpga"]["fmax_mhz"] > 20
    assert 0 < by["fpga"]["used"]["lut"] <= by["fpga"]["available"]["lut"]
    assert by["schedule"]["validated"] and by["schedule"]["latency_cycles"] > 0
    paths = write_report("jsc-three-linear", records, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rtl_bit_exact"] and summary["onnx_bit_exact"]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Summary" in html  # self-contained
    assert all(path.is_file() for path in paths)
    # only the RTL parallelism changes: the stages before it are taken from the cache
    again = run_flow("jsc-three-linear", parse_flow_config({**FAST, "rtl": {
        "parallelism": "2x2"}}), tmp_path)
    assert _statuses(again) == {"train": "not selected", "float": "cached",
                                "compress": "cached", "integer": "cached", "onnx": "cached",
                                "cost": "cached", "schedule": "cached", "mvu": "refused",
                                "rtl": "done", "simulate": "done", "synth": "done",
                                "fpga": "cached"}  # folded to the device: no [rtl] in it
    assert {r.stage: r.figures for r in again}["rtl"]["parallelism"] == "2x2"


def test_a_module_with_a_residual_add_runs_what_it_can(tmp_path):
    module = tmp_path / "residual.py"
    module.write_text(RESIDUAL)
    # place and route is tested on jsc above
    stages = ["float", "compress", "integer", "onnx", "cost", "schedule", "mvu", "rtl",
              "simulate", "synth"]
    config = {**FAST, "stages": stages, "model": {"input_shape": "16"},
              "data": {**FAST["data"], "dataset": "letter"}}
    records = run_flow(f"{module}:ResidualMLP", parse_flow_config(config), tmp_path / "out")
    statuses = _statuses(records)
    # the integer program rounds as ONNX Runtime does (float32); the RTL is built from the
    # program lowered in nearest rounding, whose adds kiln_add takes
    assert statuses == {"train": "not selected", "float": "done", "compress": "done",
                        "integer": "done", "onnx": "done", "cost": "done", "schedule": "done",
                        "mvu": "refused", "rtl": "done", "simulate": "done",
                        "synth": "done", "fpga": "not selected"}
    by = {r.stage: r.figures for r in records}
    assert by["integer"]["rounding"] == "float32" and by["rtl"]["rounding"] == "nearest"
    assert "add" in {layer["kind"] for layer in by["rtl"]["layers"]}
    assert by["simulate"]["bit_exact"]
    # asked for float32 requantization in the RTL, the emitter refuses the add by name
    records = run_flow(f"{module}:ResidualMLP", parse_flow_config(
        {**config, "stages": stages[:-1], "rtl": {"rounding": "float32"}}), tmp_path / "out")
    rtl = next(r for r in records if r.stage == "rtl")
    assert rtl.status == "refused" and "add (add): float32 rounding" in rtl.message
    assert "the RTL emitter cannot build" in rtl.message
    assert {r.stage: r.status for r in records}["integer"] == "cached"
    assert {r.stage: r.message for r in records}["simulate"] == "needs rtl (refused)"


ONNX_MNIST = Path(__import__("qonnx").__file__).parent / "data/onnx/mnist-conv/model.onnx"


def test_qonnx_mnist_from_its_file_with_its_own_input_scale(tmp_path):
    path = ONNX_MNIST
    config = load_flow_config(Path(__file__).parents[2] / "examples/flow/mnist.toml")
    config = parse_flow_config({**config.model_dump(mode="json"), **FAST,
                                "data": {**config.data.model_dump(), "calibration_batches": 2},
                                "stages": ["float", "compress", "integer", "onnx", "rtl",
                                           "simulate"]})
    records = run_flow(str(path), config, tmp_path)
    by = {r.stage: r for r in records}
    assert by["float"].figures["accuracy"] > 0.98 and by["float"].figures["input_scale"] == 255
    assert by["integer"].figures["accuracy"] > 0.98
    assert by["onnx"].figures["bit_exact"] and by["simulate"].figures["bit_exact"]
    assert by["cost"].status == "not selected"


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_flow_leaves_nothing_a_rerun_would_trust(tmp_path, signal_number):
    config = tmp_path / "flow.toml"
    config.write_text('stages = ["float", "compress", "integer", "rtl", "simulate"]\n'
                      "[data]\ncalibration_batches = 2\n[simulate]\nvectors = 100\njobs = 1\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kiln", "flow", "jsc-three-linear", "--config",
               str(config), "--out", str(out)]
    process = start_interruptible(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob(".simulate.partial-*")):
        time.sleep(0.1)  # wait until the simulation stage is under way
    # 100 vectors keep the stage busy for seconds (4 did not): a signal that lands after the
    # flow has finished, while Python shuts down, would test nothing
    time.sleep(1.0)
    assert process.poll() is None
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, -9), stderr
    assert not (out / "simulate").exists()  # never half-written
    for stage in ("float", "compress", "integer", "rtl"):
        assert (out / stage / "stage.json").is_file()
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    stages = {s["stage"]: s["status"] for s in json.loads(rerun.stdout)["stages"]}
    assert stages["float"] == stages["rtl"] == "cached" and stages["simulate"] == "done"
    assert not list(out.glob(".simulate.partial-*"))


def test_flow_config_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        parse_flow_config({"stages": ["float", "bitstream"]})
    with pytest.raises(ConfigError, match="rtl.parallelism"):
        parse_flow_config({"rtl": {"parallelism": "four"}})
    with pytest.raises(ConfigError, match="compression.weight_bits"):
        parse_flow_config({"compression": {"weight_bits": 0}})
    with pytest.raises(ConfigError, match=r"compresion: unknown field \(did you mean "
                                          r"'compression'\?\)"):
        parse_flow_config({"compresion": {"method": "qat"}})
    with pytest.raises(ConfigError, match=r"fpga.devise: unknown field \(did you mean "
                                          r"'device'\?\)"):
        parse_flow_config({"fpga": {"devise": "ecp5-25k"}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[accelerator]\npath = "nope.yaml"\n')
    _assert_one_line_error(kiln("flow", "jsc-tiny", "--config", str(bad), "--out",
                                str(tmp_path / "o")), "[accelerator].path 'nope.yaml'")
    bad.write_text('[data]\nsamples = 3\n')
    _assert_one_line_error(kiln("flow", "jsc-tiny", "--config", str(bad), "--out",
                                str(tmp_path / "o")), "data.samples")


def test_a_model_that_cannot_load_or_fit_its_data_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "five.py").write_text("from torch import nn\n\n\nclass Five(nn.Sequential):\n"
                                      "    def __init__(self):\n"
                                      "        super().__init__(nn.Linear(16, 5))\n")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(ONNX_MNIST.read_bytes()[:300])
    out = tmp_path / "out"
    for args, message in (
            (["convnett"], "did you mean 'convnet'"),
            ([str(tmp_path / "nosuch.onnx")], "no such ONNX file"),
            ([str(truncated), "--data", "mnist-5k"], "not a readable ONNX model"),
            ([str(tmp_path / "notes.pt")], "not a readable PyTorch checkpoint"),
            ([f"{tmp_path / 'broken.py'}:Net", "--input-shape", "16", "--data", "letter"],
             "SyntaxError"),
            # the model's input is not the dataset's / its outputs are not the classes
            ([str(ONNX_MNIST), "--data", "letter"], "takes inputs of 1x28x28"),
            ([f"{tmp_path / 'five.py'}:Five", "--input-shape", "16", "--data", "letter"],
             "has 5 outputs, dataset 'letter' has 26 classes")):
        result = kiln("flow", *args, "--out", str(out))
        _assert_one_line_error(result, message)
        assert not out.exists(), args  # nothing written


def test_flow_takes_the_model_options_and_exits_3_when_a_stage_refuses(tmp_path):
    module = tmp_path / "residual.py"
    # a zero head predicts one class whatever the input: untrained for sure (random weights
    # score above 1.5x chance now and then)
    module.write_text(RESIDUAL.replace("self.head = nn.Linear(16, 26)",
                                       "self.head = nn.Linear(16, 26)\n"
                                       "        nn.init.zeros_(self.head.weight)"))
    out = tmp_path / "out"
    result = kiln("flow", f"{module}:ResidualMLP", "--input-shape", "16", "--data", "letter",
                  "--stages", "float,compress,integer,mvu", "--out", str(out), "--json")
    assert result.returncode == 3, result.stderr  # the MVU refused the residual add
    facts = json.loads(result.stdout)
    statuses = {s["stage"]: s["status"] for s in facts["stages"]}
    assert statuses["integer"] == "done" and statuses["mvu"] == "refused"
    assert (out / "report.md").is_file()  # the report is written all the same
    # random weights: flagged in the summary and at the top of the report
    assert "untrained" in facts["untrained_warning"]
    assert "Warning: the float model scores" in (out / "report.md").read_text()


def test_the_train_stage_trains_what_the_flow_carries(tmp_path):
    module = tmp_path / "residual.py"
    module.write_text(RESIDUAL)
    config = parse_flow_config({**FAST, "model": {"input_shape": "16"},
                                "data": {**FAST["data"], "dataset": "letter"},
                                "train": {"epochs": 2},
                                "stages": ["train", "float", "compress", "integer"]})
    records = run_flow(f"{module}:ResidualMLP", config, tmp_path / "out")
    by = {r.stage: r for r in records}
    assert by["train"].status == "done" and len(by["train"].figures["test_accuracy"]) == 2
    # random weights score ~4% on 26 classes: the float stage measures the trained model
    assert by["float"].figures["accuracy"] > 0.3 and not by["float"].figures["untrained"]
    assert by["integer"].figures["top1_agreement"] > 0.95
    paths = write_report(f"{module}:ResidualMLP", records, tmp_path / "out")
    assert "## Training" in paths[0].read_text()


def test_a_stage_key_changes_with_kiln_code(monkeypatch):
    # A stage made (or refused) by other code is not taken from the cache: the key holds a
    # fingerprint of kiln's Python and SystemVerilog, which any edit changes.
    from kiln.flow import runner

    config = parse_flow_config(FAST)
    before = runner.stage_key("rtl", config, "convnet", ["upstream"])
    assert before == runner.stage_key("rtl", config, "convnet", ["upstream"])
    fingerprint = runner.code_fingerprint()
    assert len(fingerprint) == 16
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "0" * 16)
    assert runner.stage_key("rtl", config, "convnet", ["upstream"]) != before
