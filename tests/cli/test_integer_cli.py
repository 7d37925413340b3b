"""kiln lower / run / export-onnx from the command line."""

import json

from tests.cli.test_cli import _assert_one_line_error, kiln
from tests.conftest import start_interruptible


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


def test_ctrl_c_during_lower_leaves_nothing_half_written(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "program"
    process = start_interruptible([sys.executable, "-m", "kiln", "lower", "convnet", "--out",
                                   str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)  # importing, loading, calibrating
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:  # finished before the signal: the folder is complete
        assert (out / "manifest.json").is_file()
        return
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert len(stderr.strip().splitlines()) == 1
    # the program folder is absent, or complete (interrupted while scoring it afterwards)
    assert not out.exists() or {"manifest.json", "arrays.npz", "mem"} <= {
        p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".program*"))  # no partial folder left behind


def test_atomic_folder_keeps_the_previous_version_and_refuses_foreign_folders(tmp_path):
    import pytest

    from kiln.atomic import atomic_folder
    from kiln.errors import KilnError

    target = tmp_path / "artifact"
    with atomic_folder(target, marker="manifest.json") as folder:
        (folder / "manifest.json").write_text("one")
    with pytest.raises(RuntimeError), atomic_folder(target, marker="manifest.json") as folder:
        (folder / "manifest.json").write_text("two")
        raise RuntimeError("killed half-way")
    assert (target / "manifest.json").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    with pytest.raises(KilnError, match="holds other files"), \
            atomic_folder(foreign, marker="manifest.json"):
        pass
    assert (foreign / "cat.jpg").read_text() == "meow"
