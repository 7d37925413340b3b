"""Commands that chain: every step writes an artifact the next one reads (README's
'bring your own model' session), from a user's own module to simulated hardware."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.test_cli import _assert_one_line_error, kiln

ROOT = Path(__file__).parents[2]
TINY = ROOT / "examples" / "models" / "tiny_cnn.py"
EDGE = ROOT / "examples" / "hardware" / "edge_npu.yaml"


def _json(*args: str) -> dict:
    result = kiln(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_own_module_through_qat_prune_lower_map_emit_and_simulate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = f"{TINY}:TinyCNN"
    trained = _json("train", module, "--input-shape", "1x28x28", "--data", "fashion-mnist",
                    "--epochs", "1", "--out", "tiny.pt")
    assert trained["final_accuracy"] > 0.6
    qat = _json("qat", "tiny.pt", "--weight-bits", "4", "--activation-bits", "8",
                "--epochs", "1", "--out", "tiny-w4.pt")
    assert qat["model_file"] == "tiny-w4.pt" and qat["qat_accuracy"] > 0.6
    pruned = _json("prune", "tiny-w4.pt", "--fraction", "0.25", "--finetune-epochs", "1",
                   "--out", "tiny-w4-pruned.pt")
    assert pruned["params_after"] < pruned["params_before"]
    lowered = _json("lower", "tiny-w4-pruned.pt", "--rounding", "float32", "--out", "program")
    # lowered as it was trained: no second quantization or calibration
    assert lowered["agreement"]["fake_quant_accuracy"] == \
        _json("evaluate", "tiny-w4-pruned.pt")["accuracy"]
    assert lowered["agreement"]["top1_agreement"] > 0.99
    # the program folder carries its model: moved elsewhere it still runs
    shutil.move("program", tmp_path / "moved")
    monkeypatch.chdir(ROOT)
    ran = _json("run", str(tmp_path / "moved"))
    assert ran["engine_accuracy"] == lowered["agreement"]["engine_accuracy"]
    mapped = _json("map", str(tmp_path / "moved"), "-a", str(EDGE))
    float_map = _json("map", module, "--input-shape", "1x28x28", "-a", str(EDGE))
    assert mapped["latency_cycles"] < float_map["latency_cycles"]  # 4-bit weights, fewer
    design = _json("emit-rtl", str(tmp_path / "moved"), "--parallelism", "4x4", "--out",
                   str(tmp_path / "rtl"))
    assert [layer["kind"] for layer in design["layers"]] == ["conv", "maxpool", "conv",
                                                            "maxpool", "dense"]
    simulated = _json("simulate", str(tmp_path / "rtl"), "--vectors", "3")
    assert simulated["passed"] and simulated["vectors"] == 3


def test_quant_config_sets_the_widths_map_costs(tmp_path):
    config = tmp_path / "w4a4.yaml"
    config.write_text("default:\n  weight: {bits: 4}\n"
                      "  input: {bits: 4, signed: false, symmetric: false}\n")
    four = _json("map", "convnet", "-a", str(EDGE), "--quant-config", str(config))
    eight = _json("map", "convnet", "-a", str(EDGE))
    assert four["latency_cycles"] < eight["latency_cycles"]


def test_model_file_mistakes_are_one_line_errors(tmp_path):
    _assert_one_line_error(kiln("inspect", f"{TINY}:TinyCNN"), "give its input shape")
    _assert_one_line_error(kiln("inspect", f"{TINY}:Nope", "--input-shape", "1x28x28"),
                           "has no 'Nope'")
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"PK\x03\x04 a torn zip")
    _assert_one_line_error(kiln("inspect", f"{TINY}:TinyCNN", "--input-shape", "1x28x28",
                                "--weights", str(garbage)),
                           "not a readable PyTorch state-dict")
    _assert_one_line_error(kiln("quantize", "convnet", "--weight-bits", "8", "--out",
                                str(tmp_path / "q.onnx")), "model files end in .pt")
    quantized = tmp_path / "q.pt"
    assert kiln("quantize", "jsc-tiny", "--weight-bits", "8", "--out",
                str(quantized)).returncode == 0
    _assert_one_line_error(kiln("lower", str(quantized), "--weight-bits", "4", "--out",
                                str(tmp_path / "p")), "already quantized")


def test_the_python_api_mirrors_the_cli(tmp_path):
    import numpy as np

    import kiln

    graph, info = kiln.load("jsc-three-linear")
    quantized = kiln.quantize(graph, kiln.uniform_config(8, 8), data="letter", batches=2)
    program = kiln.lower(quantized, rounding="float32")
    kiln.save_program(program, tmp_path / "p")
    assert (tmp_path / "p" / "manifest.json").is_file()
    smaller = kiln.prune_model(graph, method="filters", fraction=0.5)
    assert smaller.total_params < graph.total_params
    mapped = kiln.map("jsc-three-linear", str(EDGE))
    cli = _json("map", "jsc-three-linear", "-a", str(EDGE))
    assert mapped.latency_cycles == cli["latency_cycles"]  # the same defaults (refine 4)
    x = np.zeros((1, 16), dtype=np.int64) + program.input_quant.zero_point
    assert kiln.run(program, x).shape == (1, 26)  # the shipped checkpoint: letter
    import kiln.prune  # noqa: F401  (a subpackage import does not hide an API function)

    assert callable(kiln.prune_model) and kiln.__version__
