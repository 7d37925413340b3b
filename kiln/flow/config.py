"""The flow config (TOML): what ``kiln flow`` does, every field with its default.

.. code-block:: toml

    stages = ["float", "compress", "integer", "onnx", "cost", "schedule", "mvu", "rtl",
              "simulate", "synth", "fpga"]  # the default; "train" first to train too

    [model]                      # the MODEL argument's options
    input_shape = "1x28x28"      # for a file.py:Name model (default: none)
    weights = "state.pt"         # a state dict for a file.py:Name model (default: none)
    pretrained = true            # a zoo name: kiln's shipped checkpoint where there is one

    [train]                      # stage "train" (not run by default): fresh training
    epochs = 3
    lr = 0.002                   # Adam, cosine-annealed
    batch_size = 128
    seed = 0

    [data]
    dataset = "fashion-mnist"    # default: the model's own
    input_scale = 255.0          # default: what a model file records, else 1
    calibration_batches = 8      # batches of 256 for post-training quantization
    test_samples = 10000         # default: the whole test split

    [compression]
    method = "ptq"               # ptq | qat | search | none (the model is quantized already)
    weight_bits = 8              # ptq / qat without a config file
    activation_bits = 8
    activation_range = "mse"     # minmax | percentile | mse | entropy (default: mse below
                                 # 8 bits, minmax at 8 and above); weight_range likewise
    config = "quant.yaml"        # a quantization config file instead of the widths
    qat_epochs = 2
    qat_method = "lsq"           # lsq | ste
    search = "search.toml"       # method = "search": its best configuration is used

    [integer]
    rounding = "float32"         # floor | nearest | float32 (ONNX Runtime's)

    [onnx]
    formats = ["qdq", "qoperator"]

    [accelerator]                # one core: the cost model and mapper
    path = "examples/hardware/edge_npu.yaml"
    objective = "latency"        # latency | energy | edp
    refine = 4

    [schedule]                   # the multi-core, layer-fused scheduler
    system = "examples/hardware/multicore/quad_core_heterogeneous.yaml"
    granularity = "layer"        # layer | rows=N | rows=all | auto
    allocate = "greedy"          # fixed | greedy | exhaustive | nsga2

    [mvu]                        # BARVINN's matrix-vector unit
    prove = 20                   # test inputs run on kiln's model of the unit
    rtl = 1                      # of those, run on BARVINN's own RTL (0: model only)

    [rtl]
    parallelism = "4x4"          # P_in x P_out of every layer
    layers = {}                  # per layer: name = [P_in, P_out]
    rounding = "nearest"         # requantization in the RTL (float32, ONNX Runtime's, is a
                                 # float multiplier per output in LUTs and no residual add)

    [simulate]
    simulator = "verilator"      # verilator | icarus
    vectors = 20                 # test-set inputs streamed through the design
    jobs = 2                     # simulator processes

    [synth]
    target = "generic"           # generic | ice40 | xilinx (Yosys)

    [fpga]                       # fold to a device, place and route (nextpnr): Fmax
    device = "ecp5-25k"          # ice40-up5k | ice40-hx8k | ecp5-25k | ecp5-45k | ecp5-85k
                                 # | nexus-lifcl-40 (CrossLink-NX)
    fold = true                  # the fastest folding that fits (false: [rtl] parallelism)
    rounding = "nearest"         # requantization of the placed design (float32 costs LUTs)
    vectors = 4                  # test inputs the placed design is simulated on first
    seeds = 1                    # placement seeds tried (the fastest is kept)
    speed = 6                    # ECP5 speed grade 6 | 7 | 8 (default: nextpnr's, 6)
    clock_mhz = 100              # the constraint (default: kiln's predicted clock)

Paths are relative to the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.errors import config_error_from_validation
from kiln.toml_config import read_toml, resolve_input_file

STAGES = ("train", "float", "compress", "integer", "onnx", "cost", "schedule", "mvu", "rtl",
          "simulate", "synth", "fpga")
#: The stages run when a config names none ("train" only when asked for).
DEFAULT_STAGES = tuple(stage for stage in STAGES if stage != "train")
#: What each stage needs before it can run ("float" also needs "train" when that runs).
NEEDS = {"train": (), "float": (), "compress": ("float",), "integer": ("compress",),
         "onnx": ("integer",), "cost": ("integer",), "schedule": ("compress",),
         "mvu": ("integer",), "rtl": ("integer",), "simulate": ("rtl",), "synth": ("rtl",),
         "fpga": ("integer",)}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_ACCELERATOR = EXAMPLES / "hardware/edge_npu.yaml"
DEFAULT_SYSTEM = EXAMPLES / "hardware/multicore/quad_core_heterogeneous.yaml"


def needs(stage: str, stages: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The stages ``stage`` reads, given the selected ``stages``."""
    if stage == "float" and "train" in stages:
        return ("train",)
    return NEEDS[stage]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelOptions(_Strict):
    input_shape: str | None = None
    weights: str | None = None
    pretrained: bool = True


class TrainOptions(_Strict):
    epochs: int = Field(3, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    seed: int = 0


class DataOptions(_Strict):
    dataset: str | None = None
    input_scale: float | None = Field(None, gt=0)
    calibration_batches: int = Field(8, ge=1)
    test_samples: int | None = Field(None, ge=1)


class CompressionOptions(_Strict):
    method: Literal["ptq", "qat", "search", "none"] = "ptq"
    weight_bits: int = Field(8, ge=2, le=16)
    activation_bits: int = Field(8, ge=2, le=16)
    activation_range: Literal["minmax", "percentile", "mse", "entropy"] | None = None
    weight_range: Literal["minmax", "percentile", "mse", "entropy"] | None = None
    config: str | None = None
    qat_epochs: int = Field(2, ge=1)
    qat_method: Literal["ste", "lsq"] = "lsq"
    search: str | None = None


class IntegerOptions(_Strict):
    rounding: Literal["floor", "nearest", "float32"] = "float32"


class OnnxOptions(_Strict):
    formats: list[Literal["qdq", "qoperator"]] = ["qdq", "qoperator"]


class AcceleratorOptions(_Strict):
    path: str = str(DEFAULT_ACCELERATOR)
    objective: Literal["latency", "energy", "edp"] = "latency"
    refine: int = Field(4, ge=0)


class ScheduleOptions(_Strict):
    system: str = str(DEFAULT_SYSTEM)
    granularity: str = "layer"
    allocate: Literal["fixed", "greedy", "exhaustive", "nsga2"] = "greedy"


class MvuOptions(_Strict):
    prove: int = Field(20, ge=1)
    rtl: int = Field(1, ge=0)


class RtlOptions(_Strict):
    parallelism: str = "4x4"
    layers: dict[str, list[int]] = {}
    rounding: Literal["floor", "nearest", "float32"] = "nearest"

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


class FpgaOptions(_Strict):
    device: Literal["ice40-up5k", "ice40-hx8k", "ecp5-25k", "ecp5-45k", "ecp5-85k",
                    "nexus-lifcl-40"] = "ecp5-25k"
    fold: bool = True
    rounding: Literal["floor", "nearest", "float32"] = "nearest"
    vectors: int = Field(4, ge=1)
    seeds: int = Field(1, ge=1)
    speed: int | None = None
    clock_mhz: float | None = Field(None, gt=0)


class FlowConfig(_Strict):
    """A validated flow config; every section and field has a default."""

    stages: list[str] = list(DEFAULT_STAGES)
    model: ModelOptions = ModelOptions()
    train: TrainOptions = TrainOptions()
    data: DataOptions = DataOptions()
    compression: CompressionOptions = CompressionOptions()
    integer: IntegerOptions = IntegerOptions()
    onnx: OnnxOptions = OnnxOptions()
    accelerator: AcceleratorOptions = AcceleratorOptions()
    rtl: RtlOptions = RtlOptions()
    simulate: SimulateOptions = SimulateOptions()
    synth: SynthOptions = SynthOptions()
    schedule: ScheduleOptions = ScheduleOptions()
    mvu: MvuOptions = MvuOptions()
    fpga: FpgaOptions = FpgaOptions()

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
        raise config_error_from_validation(error, source, FlowConfig) from None


def load_flow_config(path: str | Path | None) -> FlowConfig:
    """Read a flow config (TOML); ``None`` gives the defaults. Input files named in it are
    relative to the file and must exist."""
    if path is None:
        return FlowConfig()
    data = read_toml(path, "flow config")
    for section, key in (("model", "weights"), ("compression", "config"),
                         ("compression", "search"), ("accelerator", "path"),
                         ("schedule", "system")):
        resolve_input_file(data, section, key, path)
    return parse_flow_config(data, str(path))
