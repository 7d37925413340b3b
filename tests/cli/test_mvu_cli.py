"""``kiln mvu`` as a user runs it: files, the proof, BARVINN's table, refusals."""

from __future__ import annotations

import json

import numpy as np

from kiln.mvu.lower import lower_for_mvu
from kiln.mvu.plan import plan_mvu
from kiln.mvu.synthetic import synthetic_program
from tests.cli.test_cli import kiln

LAYERS = [{"conv": 70, "kernel": 3, "padding": 1}, {"maxpool": 2}, {"flatten": True},
          {"dense": 10}]


def test_mvu_writes_configurations_images_and_a_proof(tmp_path):
    program = synthetic_program((3, 6, 6), LAYERS, aprec=2, wprec=2, seed=4)
    program.save(tmp_path / "program")
    out = tmp_path / "mvu"
    result = kiln("mvu", str(tmp_path / "program"), "--out", str(out), "--prove", "5",
                  "--samples", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["proof"]["mismatches"] == 0 and report["proof"]["samples"] == 5
    assert report["inputs"] == "uniform random integers"
    plan = json.loads((out / "mvu.json").read_text())
    jobs = sum(len(p["jobs"]) for layer in plan["layers"] for p in layer.get("passes", []))
    header = (out / "mvu_jobs.h").read_text()
    assert f"#define KILN_MVU_JOB_COUNT {jobs}" in header and "csrw" in header
    assert "CSR_WRITE(mvuijump_0, job->ijump_0);" in header
    assert "CSR_WRITE(mvuomvusel, job->omvusel);" in header
    # The weight image read back is the plan's weight RAM content.
    expected = plan_mvu(lower_for_mvu(program)).layers[0].passes[0].weight_words
    lines = (out / "weights/layer0.pass0.mem").read_text().split()
    assert all(len(line) == 1024 for line in lines) and len(lines) == len(expected)
    lane0 = np.array([int(line[-16:], 16) for line in lines], dtype=np.uint64)
    assert (lane0 == expected[:, 0]).all()
    for name in ("input.s0.mem", "input.s1.mem", "layer3.s1.mem", "layer1.s0.mem"):
        text = (out / "data" / name).read_text()
        assert text.startswith("@") and len(text.split()[1]) == 16
    assert any("differs" in key for layer in plan["layers"] for key in layer)


def test_barvinn_compat_from_a_zoo_model():
    result = kiln("mvu", "resnet18-cifar-plain", "--barvinn-compat", "--aprec", "2",
                  "--wprec", "2", "--oprec", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Generated MVU configuration:\n+--")
    assert result.stdout.rstrip().endswith("Total countdown: 532872")
    assert sum(line.startswith("| [") for line in result.stdout.splitlines()) == 17


def test_mvu_refusals_exit_2(tmp_path):
    bad_precision = kiln("mvu", "convnet", "--aprec", "0", "--out", str(tmp_path / "a"))
    assert bad_precision.returncode == 2 and "--aprec 0" in bad_precision.stderr
    too_wide = kiln("mvu", "convnet", "--wprec", "17", "--out", str(tmp_path / "b"))
    assert too_wide.returncode == 2 and "1..16" in too_wide.stderr
    (tmp_path / "file").write_text("keep me")
    out_is_file = kiln("mvu", "convnet", "--out", str(tmp_path / "file"))
    assert out_is_file.returncode == 2 and (tmp_path / "file").read_text() == "keep me"
    program = synthetic_program((8192,), [{"dense": 4}], aprec=8, wprec=8)
    program.save(tmp_path / "wide")
    overflow = kiln("mvu", str(tmp_path / "wide"), "--out", str(tmp_path / "c"))
    assert overflow.returncode == 2 and "27-bit accumulators" in overflow.stderr
    assert not (tmp_path / "c").exists()


def test_mvu_runs_the_jobs_on_barvinns_rtl(tmp_path):
    program = synthetic_program((3, 6, 6), LAYERS, aprec=2, wprec=2, seed=4)
    program.save(tmp_path / "program")
    out = tmp_path / "mvu"
    result = kiln("mvu", str(tmp_path / "program"), "--out", str(out), "--prove", "3",
                  "--rtl", "2", "--json")
    assert result.returncode == 0, result.stderr
    rtl = json.loads(result.stdout)["rtl"]
    assert rtl["samples"] == 2 and rtl["mismatches"] == 0 and rtl["words"] > 0
    assert [layer["name"] for layer in rtl["layers"]] == ["layer0", "layer3"]
    assert all(layer["rtl_run_cycles"] == layer["model_cycles"] for layer in rtl["layers"])
    assert json.loads((out / "rtl_proof.json").read_text())["mismatches"] == 0
    negative = kiln("mvu", str(tmp_path / "program"), "--out", str(tmp_path / "n"),
                    "--rtl", "-1")
    assert negative.returncode == 2 and "--rtl -1" in negative.stderr
