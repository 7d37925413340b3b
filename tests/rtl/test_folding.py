"""Folding a program to an FPGA budget: per-layer P_in x P_out, cycles, estimated resources."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from kiln.data import load_dataset
from kiln.errors import ConfigError, KilnError
from kiln.integer import lower
from kiln.models import resolve_model
from kiln.quant import calibrate, quantize, uniform_config
from kiln.rtl import emit
from kiln.rtl.folding import Budget, fold
from kiln.rtl.memories import block_rams
from kiln.rtl.resource_model import predict_layer
from kiln.rtl.timing import predicted_fmax_mhz
from tests.cli.test_cli import _assert_one_line_error, kiln


@pytest.fixture(scope="module")
def convnet_program():
    graph, _ = resolve_model("convnet", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)),
                              load_dataset("fashion-mnist"), batches=1))
    program.metadata["dataset"] = "fashion-mnist"
    return program


def test_budgets_parse_and_refuse_nonsense():
    budget = Budget.parse("lut=20000,dsp=28,bram=56")
    assert (budget.lut, budget.ff, budget.dsp, budget.bram) == (20000, 20000, 28, 56)
    assert Budget.of_device("ecp5-25k").dsp == 28
    for bad in ("luts=3", "lut=many", "dsp=4"):
        with pytest.raises(ConfigError, match="--budget"):
            Budget.parse(bad)


def test_folding_balances_layers_within_the_device(convnet_program, tmp_path):
    budget = Budget.of_device("ecp5-85k")
    best = fold(convnet_program, budget=budget)
    uniform = fold(convnet_program, budget=budget, uniform=True)
    for folding in (best, uniform):
        assert all(folding.estimate[r] <= getattr(budget, r) for r in ("lut", "dsp", "bram"))
    # Free per-layer widths can only do as well as one width everywhere, or better.
    assert best.cycles <= uniform.cycles
    # The chain is consistent: emit accepts it, and the emitted cycles are the folding's.
    design = emit(convnet_program, best.parallelism(), tmp_path / "folded")
    assert max(layer.cycles_per_input for layer in design.layers) == best.cycles
    # A target a little above the fastest: the cheapest folding that meets it.
    relaxed = fold(convnet_program, budget=budget, target_cycles=2 * best.cycles)
    assert relaxed.cycles <= 2 * best.cycles and \
        relaxed.estimate["lut"] <= best.estimate["lut"]


def test_deep_roms_fall_back_from_banks_to_packed_rows_to_whole(convnet_program):
    # On the ECP5-25K the fc1 ROM (802 Kbit) in banks one block deep needs more block RAMs
    # than the device has; packed rows fit (the fastest design that fits, at 100 MHz).
    budget = Budget.of_device("ecp5-25k")
    folding = fold(convnet_program, budget=budget)
    assert folding.rom_layout == "packed" and "packed" in folding.notes[0]
    assert folding.estimate["bram"] <= budget.bram
    layers = {layer.name: layer for layer in emit(
        convnet_program, folding.parallelism(), Path(tempfile.mkdtemp()) / "d",
        rom_layout=folding.rom_layout).layers}
    assert layers["classifier_1"].w_pack > 1 and layers["classifier_1"].w_banks > 1
    assert predicted_fmax_mhz(list(layers.values()), "ecp5") == 100.0
    # The order of the fallbacks: each layout takes no more block RAMs than the one before.
    assert block_rams(16, 50176, layout="whole") <= block_rams(16, 50176, layout="packed") \
        < block_rams(16, 50176, layout="banked")


def test_a_budget_nothing_fits_names_the_smallest_design(convnet_program):
    with pytest.raises(KilnError, match="no folding fits budget lut=3000.*smallest design.*"
                                        "needs lut"):
        fold(convnet_program, budget=Budget.parse("lut=3000,dsp=8,bram=4"))
    with pytest.raises(KilnError, match="no folding reaches 10 cycles"):
        fold(convnet_program, budget=Budget.of_device("ecp5-85k"), target_cycles=10)


def test_the_model_predicts_yosys_on_a_design_it_was_not_fitted_on(tmp_path):
    """jsc-three-linear at 2x4 is not among the calibration designs."""
    from kiln.rtl.fpga import device, synthesize_for_device
    from kiln.rtl.resource_model import load_model

    dataset = load_dataset("letter")
    graph, _ = resolve_model("jsc-three-linear", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=1))
    design = emit(program, {"default": (4, 4), "fc1": (2, 4)}, tmp_path / "jsc")
    _, used, dsp, _ = synthesize_for_device(design, device("ecp5-85k"))
    model = load_model("ecp5")
    predicted = {r: sum(predict_layer(layer, model)[r] for layer in design.layers)
                 for r in ("lut", "ff", "dsp", "bram")}
    assert dsp
    assert predicted["lut"] == pytest.approx(used["lut"], rel=0.35)
    assert predicted["dsp"] == pytest.approx(used["dsp"], rel=0.2)


def test_emit_rtl_folds_from_the_command_line(convnet_program, tmp_path):
    convnet_program.save(tmp_path / "program")
    result = kiln("emit-rtl", str(tmp_path / "program"), "--device", "ecp5-25k", "--out",
                  str(tmp_path / "design"), "--json")
    assert result.returncode == 0, result.stderr
    folding = json.loads(result.stdout)["folding"]
    assert folding["estimate"]["lut"] <= 24288 and folding["budget"]["dsp"] == 28
    assert (tmp_path / "design" / "folding.json").is_file()
    _assert_one_line_error(kiln("emit-rtl", str(tmp_path / "program"), "--budget", "luts=4",
                                "--out", str(tmp_path / "x")), "--budget")
    _assert_one_line_error(kiln("emit-rtl", str(tmp_path / "program"), "--target-cycles",
                                "100", "--out", str(tmp_path / "y")), "--device or --budget")
