"""kiln's MVU jobs on BARVINN's own RTL (Verilator): bit-exact, cycle-exact, and the RTL
facts kiln's emitted programs depend on (CSR map, output drain, the data-RAM read OR)."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.mvu import rtl_run
from kiln.mvu.emit import csr_writes
from kiln.mvu.job import OUTPUT_DRAIN
from kiln.mvu.lower import lower_for_mvu
from kiln.mvu.model import Mvu
from kiln.mvu.plan import plan_mvu
from kiln.mvu.rtl_build import PATCHES, build_bench, patched_sources, rtl_source_dir
from kiln.mvu.rtl_run import check_rtl_proof, csr_addresses, prove_on_rtl
from kiln.mvu.run import start_layer, store_tensor
from kiln.mvu.synthetic import random_inputs, synthetic_program

# The layer of the issue: 3x3 conv 64->64 on 8x8, 2-bit data and weights, signed 4-bit out.
ONE_LAYER = [{"conv": 64, "kernel": 3, "padding": 1}]
# Padding, stride, max pooling, C < 64, K > 64 (several blocks), a 1x1 conv, a dense layer.
SMALL_CNN = [{"conv": 70, "kernel": 3, "padding": 1}, {"maxpool": 2},
             {"conv": 130, "kernel": 3, "stride": 2, "padding": 1}, {"conv": 20, "kernel": 1},
             {"flatten": True}, {"dense": 9}]


@pytest.fixture(scope="module")
def bench():
    return build_bench()


def _one_layer_plan():
    program = synthetic_program((64, 8, 8), ONE_LAYER, aprec=2, wprec=2, oprec=2,
                                last_oprec=4, seed=1)
    return program, plan_mvu(lower_for_mvu(program))


def test_the_rtl_computes_kiln_jobs_bit_and_cycle_exactly(bench):
    program, plan = _one_layer_plan()
    report = prove_on_rtl(plan, random_inputs(program, 3, seed=3))
    layer = report.layers[0]
    assert layer.jobs == 8 and layer.words == 3 * 8 * 8 * 4
    assert layer.mismatches == 0 and layer.element_mismatches == 0
    assert layer.writes == layer.expected_writes == 8 * 8 * 4  # 8 jobs x 8 px x 4 planes
    # run is high for exactly the countdown; the interrupt comes 4 cycles after it per job
    # (APB access, start, the parameter registers, the done state).
    assert layer.rtl_run_cycles == layer.model_cycles == plan.countdown
    assert layer.rtl_cycles_to_irq == plan.countdown + 4 * layer.jobs
    check_rtl_proof(report)


@pytest.mark.parametrize("bits,isigned,wsigned", [(2, False, True), (4, True, False),
                                                  (1, True, True)])
def test_a_relu_cnn_with_pooling_and_passes_runs_on_the_rtl(bench, bits, isigned, wsigned):
    aprec = max(bits, 2)
    program = synthetic_program((3, 9, 7), SMALL_CNN, aprec=aprec, wprec=bits, oprec=aprec,
                                isigned=isigned, wsigned=wsigned,
                                input_zero_point=0 if isigned else 1, seed=bits)
    plan = plan_mvu(lower_for_mvu(program))
    assert any(layer.relu and layer.raw is not None for layer in plan.layers)
    report = prove_on_rtl(plan, random_inputs(program, 2, seed=bits))
    assert [layer.name for layer in report.layers] == [layer.op.name for layer in plan.layers]
    assert report.mismatches == 0, [layer.first_mismatch for layer in report.layers]
    for layer in report.layers:
        assert layer.rtl_run_cycles == layer.model_cycles
        assert layer.writes == layer.expected_writes


def test_a_wrong_csr_is_caught(bench, monkeypatch):
    program, plan = _one_layer_plan()
    right = rtl_run.csr_writes

    def msbidx_off_by_one(job, mvu=0):
        return [(name, value + 1 if name == "mvuquant" else value)
                for name, value in right(job, mvu)]

    monkeypatch.setattr(rtl_run, "csr_writes", msbidx_off_by_one)
    report = prove_on_rtl(plan, random_inputs(program, 1, seed=3))
    assert report.layers[0].mismatches > 0
    with pytest.raises(KilnError, match="RTL and kiln differ in layer 'layer0'"):
        check_rtl_proof(report)


def test_the_countdown_must_cover_the_scaler_read_of_the_last_output(bench):
    """With one cycle less than kiln's drain, the last vector of every job is scaled by 0
    (the scaler and bias RAMs are read only while the job runs)."""
    program, plan = _one_layer_plan()
    short = copy.deepcopy(plan)
    for job in short.layers[0].jobs:
        job.countdown -= 1
    report = prove_on_rtl(short, random_inputs(program, 1, seed=3))
    layer = report.layers[0]
    # Exactly the last output vector (4 planes) of each of the 8 jobs differs.
    assert 0 < layer.mismatches <= 8 * 4
    assert OUTPUT_DRAIN == 5


def test_data_word_zero_is_or_ed_into_reads_from_other_banks(bench):
    """The RTL quirk behind the plan's zero word: a nonzero word 0 corrupts a layer whose
    input is outside bank 0."""
    program = synthetic_program((64, 16, 16), [{"conv": 64, "kernel": 3, "padding": 1},
                                               {"conv": 64, "kernel": 3, "padding": 1}],
                                aprec=4, wprec=2, oprec=4, last_oprec=4, seed=2)
    plan = plan_mvu(lower_for_mvu(program))
    assert plan.input.base == 1  # kiln never allocates word 0
    second = plan.layers[1]
    assert second.source.base >= 1024  # this layer's input lives in bank 1 or later
    unit = Mvu(1)
    store_tensor(unit, second.source, np.ones((1, 64, 16, 16), dtype=np.int64))
    start_layer(unit, second)
    _, clean = rtl_run._layer_on_rtl(second, unit, 0, bench)
    unit.data[0, 0] = np.uint64(0xFFFF)
    _, dirty = rtl_run._layer_on_rtl(second, unit, 0, bench)
    assert (clean != dirty).any()


def test_every_csr_kiln_writes_is_in_the_rtl_map():
    _, plan = _one_layer_plan()
    addresses = csr_addresses()
    writes = csr_writes(plan.layers[0].jobs[0])
    assert all(name in addresses for name, _ in writes)
    assert addresses["mvucommand"] == 0xF55 and addresses["mvuomvusel"] == 0xF59
    assert writes[-1][0] == "mvucommand"  # it starts the job: written last
    values = dict(writes)
    job = plan.layers[0].jobs[0]
    assert values["mvuquant"] == job.msbidx < 27
    assert values["mvuconfig1"] == job.shacc_load_sel | job.zigzag_step_sel << 5
    assert values["mvuusescaler_mem"] == values["mvuusebias_mem"] == 1


def test_a_patch_that_no_longer_matches_stops_the_build(tmp_path, monkeypatch):
    source = rtl_source_dir()
    copy_of_rtl = tmp_path / "rtl"
    shutil.copytree(source, copy_of_rtl)
    shacc = copy_of_rtl / "mvu" / "verilog" / "shacc.v"
    shacc.write_text(shacc.read_text().replace("O = O+I;", "O = O + I;"))
    monkeypatch.setenv("KILN_BARVINN_RTL", str(copy_of_rtl))
    assert any(patch.path.endswith("shacc.v") for patch in PATCHES)
    with pytest.raises(KilnError, match="patch of mvu/verilog/shacc.v .* matches 0 times"):
        patched_sources(rtl_source_dir(), tmp_path / "build")
