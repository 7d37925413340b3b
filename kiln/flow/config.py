"""The flow config (TOML): what ``kiln flow`` does, every field with its default.

.. code-block:: toml

    stages = ["float", "compress", "integer", "onnx", "cost", "rtl", "simulate", "synth"]

    [model]                      # the MODEL argument's options
    input_shape = "1x28x28"      # for a file.py:Name model (default: none)
    weights = "state.pt"         # a state dict for a file.py:Name model (default: none)
    pretrained = true            # a zoo name: kiln's shipped checkpoint where there is one

    [data]
    dataset = "fashion-mnist"    # default: the model's own
    input_scale = 255.0          # default: what a model file records, else 1
    calibration_batches = 8      # batches of 256 for post-training quantization
    test_samples = 10000         # default: the whole test split

    [compression]
    method = "ptq"               # ptq | qat | search | none (the model is quantized already)
    weight_bits = 8              # ptq / qat without a config file
    activation_bits = 8
    config = "quant.yaml"        # a quantization config file instead of the widths
    qat_epochs = 2
    qat_method = "ste"           # ste | lsq
    search = "search.toml"       # method = "search": its best configuration is used

    [integer]
    rounding = "float32"         # floor | nearest | float32 (ONNX Runtime's)

    [onnx]
    formats = ["qdq", "qoperator"]

    [accelerator]                # one core: the cost model and mapper
    path = "examples/hardware/edge_npu.yaml"
    objective = "latency"        # latency | energy | edp
    refine = 4

    [rtl]
    parallelism = "4x4"          # P_in x P_out of every layer
    layers = {}                  # per layer: name = [P_in, P_out]

    [simulate]
    simulator = "verilator"      # verilator | icarus
    vectors = 20                 # test-set inputs streamed through the design
    jobs = 2                     # simulator processes

    [synth]
    target = "generic"           # generic | ice40 | xilinx (Yosys)

Paths are relative to the config file. The multi-core schedule and the MVU code generation
become stages of their own when kiln has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.errors import config_error_from_validation
from kiln.toml_config import read_toml, resolve_input_file

STAGES = ("float", "compress", "integer", "onnx", "cost", "rtl", "simulate", "synth")
#: What each stage needs before it can run.
NEEDS = {"float": (), "compress": ("float",), "integer": ("compress",), "onnx": ("integer",),
         "cost": ("integer",), "rtl": ("integer",), "simulate": ("rtl",), "synth": ("rtl",)}
DEFAULT_ACCELERATOR = Path(__file__).resolve().parents[2] / "examples/hardware/edge_npu.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelOptions(_Strict):
    input_shape: str | None = None
    weights: str | None = None
    pretrained: bool = True


class DataOptions(_Strict):
    dataset: str | None = None
    input_scale: float | None = Field(None, gt=0)
    calibration_batches: int = Field(8, ge=1)
    test_samples: int | None = Field(None, ge=1)


class CompressionOptions(_Strict):
    method: Literal["ptq", "qat", "search", "none"] = "ptq"
    weight_bits: int = Field(8, ge=2, le=16)
    activation_bits: int = Field(8, ge=2, le=16)
    config: str | None = None
    qat_epochs: int = Field(2, ge=1)
    qat_method: Literal["ste", "lsq"] = "ste"
    search: str | None = None


class IntegerOptions(_Strict):
    rounding: Literal["floor", "nearest", "float32"] = "float32"


class OnnxOptions(_Strict):
    formats: list[Literal["qdq", "qoperator"]] = ["qdq", "qoperator"]


class AcceleratorOptions(_Strict):
    path: str = str(DEFAULT_ACCELERATOR)
    objective: Literal["latency", "energy", "edp"] = "latency"
    refine: int = Field(4, ge=0)


class RtlOptions(_Strict):
    parallelism: str = "4x4"
    layers: dict[str, list[int]] = {}

    @field_validator("parallelism")
    @classmethod
    def _parallelism(cls, value: str) -> str:
        parts = value.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"parallelism '{value}': write P_inxP_out, e.g. 4x4")
        return value


class SimulateOptions(_Strict):
    simulator: Literal["verilator", "icarus"] = "verilator"
    vectors: int = Field(20, ge=1)
    jobs: int = Field(2, ge=1)


class SynthOptions(_Strict):
    target: Literal["generic", "ice40", "xilinx"] = "generic"


class FlowConfig(_Strict):
    """A validated flow config; every section and field has a default."""

    stages: list[str] = list(STAGES)
    model: ModelOptions = ModelOptions()
    data: DataOptions = DataOptions()
    compression: CompressionOptions = CompressionOptions()
    integer: IntegerOptions = IntegerOptions()
    onnx: OnnxOptions = OnnxOptions()
    accelerator: AcceleratorOptions = AcceleratorOptions()
    rtl: RtlOptions = RtlOptions()
    simulate: SimulateOptions = SimulateOptions()
    synth: SynthOptions = SynthOptions()

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: list[str]) -> list[str]:
        unknown = [stage for stage in stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: the stages are {', '.join(STAGES)}")
        return [stage for stage in STAGES if stage in stages]  # in the flow's order

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump(mode="json") if hasattr(self, name) else {}


def parse_flow_config(data: dict[str, Any], source: str = "flow config") -> FlowConfig:
    try:
        return FlowConfig.model_validate(data)
    except ValidationError as error:
        raise config_error_from_validation(error, source) from None


def load_flow_config(path: str | Path | None) -> FlowConfig:
    """Read a flow config (TOML); ``None`` gives the defaults. Input files named in it are
    relative to the file and must exist."""
    if path is None:
        return FlowConfig()
    data = read_toml(path, "flow config")
    for section, key in (("model", "weights"), ("compression", "config"),
                         ("compression", "search"), ("accelerator", "path")):
        resolve_input_file(data, section, key, path)
    return parse_flow_config(data, str(path))
