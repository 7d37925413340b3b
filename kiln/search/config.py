"""The search config (TOML): model, data, space, objectives, constraints, strategy, storage.

objectives = ["size"]        # size | bits | accuracy | accuracy_drop | latency | energy

[study]
name = "convnet-mixed"
strategy = "tpe"             # grid | random | tpe | nsga2
trials = 50                  # evaluations; a configuration seen before is reused, free
deduplicate = true           # false: evaluate repeats again (the old behaviour)
seed_uniform = false         # true: evaluate the uniform configurations first
seed = 0
storage = "sqlite:///out/search/convnet-mixed.db"   # default: sqlite in [study].out
out = "out/search/convnet-mixed"

[model]
name = "convnet"             # zoo name (shipped checkpoint), .pt or .onnx
dataset = "fashion-mnist"

[space]
kind = "mixed-precision"     # mixed-precision | channels | prune-quant
weight_bits = [2, 4, 8]
activation_bits = [8]

[evaluation]
samples = 5000               # held-out images scored per trial
low_fidelity_samples = 1000  # optional: score these first, prune the clearly infeasible
seed = 0                     # calibration / training seed

[constraints]
max_accuracy_drop = 1.0      # points

[hardware]                   # for latency / energy objectives
accelerator = "examples/hardware/edge_npu.yaml"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kiln.errors import ConfigError, config_error_from_validation
from kiln.toml_config import RELATIVE_HINT, read_toml, relative_to_config, resolve_input_file

OBJECTIVE_DIRECTIONS = {
    "size": "minimize",  # bytes of parameters at their widths
    "bits": "minimize",  # average weight bits per parameter
    "accuracy": "maximize",
    "accuracy_drop": "minimize",  # points below the float baseline
    "latency": "minimize",  # cycles on [hardware].accelerator
    "energy": "minimize",  # pJ on [hardware].accelerator
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudySection(_Strict):
    name: str
    strategy: Literal["grid", "random", "tpe", "nsga2"] = "tpe"
    trials: int = Field(50, ge=1)  # evaluations (a reused configuration costs none)
    seed: int = 0  # the sampler's
    deduplicate: bool = True  # reuse the result of a configuration evaluated before
    seed_uniform: bool = False  # evaluate the uniform configurations first
    storage: str | None = None
    out: str | None = None


class ModelSection(_Strict):
    name: str
    dataset: str | None = None
    pretrained: bool = True


class SpaceSection(_Strict):
    kind: Literal["mixed-precision", "channels", "prune-quant"]
    per: Literal["layer", "op"] = "layer"
    layers: list[str] = []
    weight_bits: list[int] = [8]
    activation_bits: list[int] = [8]
    weight_format: list[Literal["int", "bfp"]] = ["int"]
    weight_range: list[Literal["minmax", "percentile", "mse", "entropy"]] = ["minmax"]
    granularity: list[Literal["tensor", "channel"]] = ["channel"]
    multipliers: list[float] = [1.0]
    fractions: list[float] = [0.0]

    @model_validator(mode="after")
    def _non_empty(self) -> SpaceSection:
        for name in (
            "weight_bits",
            "activation_bits",
            "weight_format",
            "weight_range",
            "granularity",
            "multipliers",
            "fractions",
        ):
            if not getattr(self, name):
                raise ValueError(f"space.{name} is empty: give at least one choice")
        for bits in self.weight_bits + self.activation_bits:
            if not 2 <= bits <= 16:
                raise ValueError(f"bit widths must be 2..16, got {bits}")
        for fraction in self.fractions:
            if not 0 <= fraction < 1:
                raise ValueError(f"pruning fractions must be in [0, 1), got {fraction}")
        for multiplier in self.multipliers:
            if multiplier <= 0:
                raise ValueError(f"channel multipliers must be > 0, got {multiplier}")
        return self


class EvaluationSection(_Strict):
    samples: int | None = Field(None, ge=1)
    # Multi-fidelity: score this many samples first; prune (Optuna) what is clearly
    # infeasible or worse, and score the rest only for the survivors.
    low_fidelity_samples: int | None = Field(None, ge=1)
    seed: int = 0  # calibration, training and fine-tuning
    calibration_batches: int = Field(4, ge=1)
    finetune_epochs: int = Field(0, ge=0)
    train_epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)


class ConstraintsSection(_Strict):
    max_accuracy_drop: float | None = None  # points
    min_accuracy: float | None = None  # 0..1
    max_size: float | None = None  # bytes
    max_latency: float | None = None  # cycles


class HardwareSection(_Strict):
    accelerator: str
    mapping: str | None = None
    objective_search: Literal["latency", "energy", "edp"] = "latency"


class SearchConfig(_Strict):
    study: StudySection
    model: ModelSection
    space: SpaceSection
    evaluation: EvaluationSection = EvaluationSection()
    objectives: list[str] = ["size"]
    constraints: ConstraintsSection = ConstraintsSection()
    hardware: HardwareSection | None = None
    source: str = "<config>"

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if not self.objectives:
            raise ValueError(
                "objectives is empty: name at least one of " + ", ".join(OBJECTIVE_DIRECTIONS)
            )
        for objective in self.objectives:
            if objective not in OBJECTIVE_DIRECTIONS:
                raise ValueError(
                    f"unknown objective '{objective}' (use {', '.join(OBJECTIVE_DIRECTIONS)})"
                )
        if {"latency", "energy"} & set(self.objectives) and self.hardware is None:
            raise ValueError(
                "latency/energy objectives need a [hardware] section with an accelerator"
            )
        if self.constraints.max_latency is not None and self.hardware is None:
            raise ValueError("constraints.max_latency needs a [hardware] section")
        if self.evaluation.low_fidelity_samples is not None:
            accuracy_constraint = (self.constraints.max_accuracy_drop is not None or
                                   self.constraints.min_accuracy is not None)
            if len(self.objectives) > 1:
                raise ValueError("evaluation.low_fidelity_samples needs a single objective "
                                 "(Optuna prunes single-objective studies only)")
            if not accuracy_constraint and self.objectives[0] not in ("accuracy",
                                                                      "accuracy_drop"):
                raise ValueError("evaluation.low_fidelity_samples prunes on an accuracy "
                                 "constraint or an accuracy objective: give one")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.study.out or f"out/search/{self.study.name}")

    @property
    def storage_url(self) -> str:
        if self.study.storage:
            return self.study.storage
        return f"sqlite:///{self.out_dir / (self.study.name + '.db')}"

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVE_DIRECTIONS[o] for o in self.objectives]


def parse_config(data: dict[str, Any], source: str = "<config>") -> SearchConfig:
    try:
        return SearchConfig.model_validate({**data, "source": source})
    except ValidationError as error:
        raise config_error_from_validation(error, source, SearchConfig) from None


def load_config(path: str | Path) -> SearchConfig:
    """Read and validate a search config file (TOML)."""
    data = read_toml(path, "search config")
    _resolve_input_paths(data, path)
    return parse_config(data, str(path))


def _resolve_input_paths(data: dict[str, Any], path: str | Path) -> None:
    """Input files named in a config ([hardware].accelerator and .mapping, a model file)
    are relative to the config file, as in any config format; each must exist. Outputs
    ([study].out, a SQLite storage) stay relative to where kiln runs."""
    for key in ("accelerator", "mapping"):
        resolve_input_file(data, "hardware", key, path)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        name = model["name"]
        file_part = name.split(":")[0] if ".py:" in name else name
        if file_part.endswith((".pt", ".onnx", ".py")):
            resolved = relative_to_config(path, file_part)
            if not resolved.is_file():
                raise ConfigError(f"{path}: [model].name '{name}': no such file ({resolved})",
                                  hint=RELATIVE_HINT)
            model["name"] = str(resolved) + name[len(file_part):]

