"""kiln lower / run / export-onnx from the command line."""

import json

from tests.cli.test_cli import _assert_one_line_error, kiln


def test_lower_run_export_round_trip(tmp_path):
    program = tmp_path / "jsc-int8"
    lowered = kiln("lower", "jsc-three-linear", "--rounding", "float32", "--out", str(program),
                   "--json")
    assert lowered.returncode == 0, lowered.stderr
    agreement = json.loads(lowered.stdout)["agreement"]
    assert agreement["top1_agreement"] >= 0.99
    assert (program / "manifest.json").is_file() and (program / "mem").is_dir()
    ran = json.loads(kiln("run", str(program), "--json").stdout)
    assert ran["engine_accuracy"] == agreement["engine_accuracy"]
    assert ran["top1_agreement"] == agreement["top1_agreement"]
    for export_format in ("qoperator", "qdq"):
        exported = kiln("export-onnx", str(program), "--format", export_format, "--out",
                        str(tmp_path / f"{export_format}.onnx"), "--json")
        report = json.loads(exported.stdout)
        assert report["mismatches"] == 0 and report["elements"] == 4000 * 26
        assert report["integer_only"] and report["bit_exact"]
        assert report["ort_float_nodes"] == []
        assert report["ort_node_types"].get("QGemm" if export_format == "qdq" else
                                            "MatMulInteger") == 3


def test_integer_bad_inputs(tmp_path):
    _assert_one_line_error(kiln("run", str(tmp_path / "nothing")), "no manifest.json")
    _assert_one_line_error(kiln("lower", "convnet", "--rounding", "up", "--out",
                                str(tmp_path / "p")), "rounding")
    broken = tmp_path / "broken"
    assert kiln("lower", "jsc-tiny", "--data", "letter", "--out", str(broken)).returncode == 0
    (broken / "arrays.npz").write_bytes(b"garbage")
    _assert_one_line_error(kiln("run", str(broken)), "arrays.npz")


def test_rtl_commands(tmp_path, monkeypatch):
    program, design = tmp_path / "prog", tmp_path / "rtl"
    assert kiln("lower", "jsc-tiny", "--data", "letter", "--out", str(program)).returncode == 0
    emitted = kiln("emit-rtl", str(program), "--parallelism", "4x4", "--out", str(design),
                   "--json")
    assert emitted.returncode == 0, emitted.stderr
    assert (design / "kiln_top.sv").is_file() and (design / "test_top.py").is_file()
    assert (design / "kiln_tb.sv").is_file()
    monkeypatch.chdir(design.parent)  # a relative design path, as users type it
    simulated = json.loads(kiln("simulate", design.name, "--simulator", "icarus", "--vectors",
                                "50", "--jobs", "2", "--json").stdout)
    assert simulated["passed"] and simulated["vectors"] == 50
    assert simulated["extra"]["jobs"] == 2
    _assert_one_line_error(kiln("simulate", str(design), "--simulator", "modelsim"),
                           "unknown simulator")
    _assert_one_line_error(kiln("emit-rtl", str(program), "--parallelism", "0x4", "--out",
                                str(tmp_path / "x")), "parallelism must be positive")
