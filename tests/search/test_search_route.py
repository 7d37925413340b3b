"""The README's route from a search to hardware, for every search kind: search (tiny
budget) → best_model.pt → lower → run → emit-rtl → simulate; the readable records
(best_*.yaml) accepted by the commands the README names; the search's hardware cost equal
to `kiln map`'s; and `kiln flow` with `method = "search"` through integer and rtl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kiln.flow import parse_flow_config, run_flow
from kiln.models import resolve_model
from kiln.passes import model_size
from tests.cli.test_cli import kiln
from tests.search.test_search import write_toml

ROOT = Path(__file__).parents[2]
EDGE = ROOT / "examples" / "hardware" / "edge_npu.yaml"


def _json(*args: str) -> dict:
    result = kiln(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _study(tmp_path: Path, name: str, model: str, dataset: str, space: dict,
           evaluation: dict | None = None, **extra) -> dict:
    return {"objectives": ["size"],
            "study": {"name": name, "strategy": "random", "trials": 3, "seed": 1,
                      "out": str(tmp_path / name)},
            "model": {"name": model, "dataset": dataset},
            "space": space,
            "evaluation": {"samples": 500, "calibration_batches": 1, **(evaluation or {})},
            "constraints": {"max_accuracy_drop": 90.0}, **extra}


def _array_bits(program: Path) -> dict[str, int]:
    manifest = json.loads((program / "manifest.json").read_text())
    return {f"{op['name']}.{name}": array.get("bits") for op in manifest["ops"]
            for name, array in op["arrays"].items()}


def _layer_shapes(inspected: dict) -> dict[str, list[int]]:
    """Each conv / linear layer's output shape (BatchNorms fold away when quantizing)."""
    return {row["name"]: row["output_shape"] for row in inspected["layers"]
            if row["op"] in ("conv", "linear")}


# The convnet's mixed-precision search is walked by tests/cli/test_readme_commands.py (the
# README's own commands); here the small models keep the RTL simulations short.
KINDS = {
    "mixed": ("jsc-three-linear", "letter",
              {"kind": "mixed-precision", "weight_bits": [4, 8], "activation_bits": [6, 8]},
              {}),
    "prune-quant": ("jsc-three-linear", "letter",
                    {"kind": "prune-quant", "fractions": [0.0, 0.25], "weight_bits": [4, 8]},
                    {"finetune_epochs": 1}),
    "channels": ("jsc-three-linear", "letter",
                 {"kind": "channels", "multipliers": [0.5, 1, 2]},
                 {"train_epochs": 2, "lr": 0.003}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_search_kind_writes_a_model_that_lowers_runs_and_simulates(tmp_path, kind):
    model, dataset, space, evaluation = KINDS[kind]
    config = write_toml(tmp_path / f"{kind}.toml",
                        _study(tmp_path, kind, model, dataset, space, evaluation))
    result = _json("search", str(config))
    best = result["best"][0]
    folder = tmp_path / kind
    best_model = folder / "best_model.pt"
    assert str(best_model) in result["files"]
    # the model file is the winner: the size the search measured, at its widths
    graph, _ = resolve_model(str(best_model))
    assert model_size(graph).total_bytes == best["metrics"]["size"]
    inspected = _json("inspect", str(best_model))
    lowered = _json("lower", str(best_model), "--out", str(tmp_path / "program"))
    agreement = lowered["agreement"]
    assert agreement["engine_accuracy"] > 0.1 and agreement["top1_agreement"] > 0.95
    ran = _json("run", str(tmp_path / "program"))
    assert ran["engine_accuracy"] == pytest.approx(agreement["engine_accuracy"])
    emitted = kiln("emit-rtl", str(tmp_path / "program"), "--out", str(tmp_path / "rtl"))
    assert emitted.returncode == 0, emitted.stderr
    simulated = _json("simulate", str(tmp_path / "rtl"), "--vectors", "4")
    assert simulated["passed"] and simulated["vectors"] == 4

    if kind == "mixed":  # the config alone, on the base model, gives a program of its widths
        _json("lower", model, "--config", str(folder / "best_quantization.yaml"),
              "--out", str(tmp_path / "program-from-config"))
        assert _array_bits(tmp_path / "program-from-config") == _array_bits(
            tmp_path / "program")
    if kind == "prune-quant":  # the fractions alone prune the base model to the same shape
        fractions = yaml.safe_load((folder / "best_pruning.yaml").read_text())["fractions"]
        assert any(fraction > 0 for fraction in fractions.values())  # something was pruned
        _json("prune", model, "--config", str(folder / "best_pruning.yaml"),
              "--finetune-epochs", "0", "--out", str(tmp_path / "pruned.pt"))
        assert _layer_shapes(_json("inspect", str(tmp_path / "pruned.pt"))) == \
            _layer_shapes(inspected)
    if kind == "channels":  # the multipliers alone widen the base model the same way
        factors = yaml.safe_load((folder / "best_channels.yaml").read_text())["multipliers"]
        assert any(factor != 1 for factor in factors.values())  # something was scaled
        trained = _json("train", model, "--data", dataset, "--epochs", "1", "--channels",
                        str(folder / "best_channels.yaml"), "--out", str(tmp_path / "wide.pt"))
        assert trained["final_accuracy"] > 0.05
        wide = _json("inspect", str(tmp_path / "wide.pt"))
        assert _layer_shapes(wide) == _layer_shapes(inspected)


def test_the_search_costs_a_configuration_as_kiln_map_does(tmp_path):
    study = _study(tmp_path, "hw", "convnet", "fashion-mnist",
                   {"kind": "mixed-precision", "weight_bits": [2, 8], "activation_bits": [4, 8]},
                   hardware={"accelerator": str(EDGE)})
    study["objectives"] = ["accuracy", "latency"]
    result = _json("search", str(write_toml(tmp_path / "hw.toml", study)))
    best = result["best"][0]
    mapped = _json("map", str(tmp_path / "hw" / "best_model.pt"), "-a", str(EDGE))
    assert mapped["latency_cycles"] == best["metrics"]["latency"]
    assert mapped["energy_pj"] == pytest.approx(best["metrics"]["energy"], rel=1e-12)


def test_flow_with_a_search_runs_through_integer_and_rtl(tmp_path):
    search = write_toml(tmp_path / "search.toml", _study(
        tmp_path, "jsc", "jsc-three-linear", "letter",
        {"kind": "mixed-precision", "weight_bits": [4, 8]}))
    config = parse_flow_config({
        "data": {"calibration_batches": 1, "test_samples": 1000},
        "compression": {"method": "search", "search": str(search)},
        "simulate": {"simulator": "verilator", "vectors": 4, "jobs": 1},
        "accelerator": {"refine": 0},
        "stages": ["float", "compress", "integer", "rtl", "simulate"]})
    records = run_flow("jsc-three-linear", config, tmp_path / "flow")
    statuses = {r.stage: r.status for r in records}
    assert statuses["compress"] == "done" and statuses["integer"] == "done", records
    assert statuses["rtl"] == "done" and statuses["simulate"] == "done"
    figures = {r.stage: r.figures for r in records}
    assert figures["simulate"]["bit_exact"]
    assert figures["integer"]["top1_agreement"] > 0.95
