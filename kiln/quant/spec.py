"""Number formats, validated once: :class:`QuantSpec` says how one tensor is quantized.

Three formats share one interface:

* ``int``: uniform integers of 2–16 bits, signed or unsigned, symmetric (zero point 0)
  or asymmetric, per tensor or per channel along any axis, with a range method:
  ``minmax`` (full range), ``percentile``, ``mse`` (the clipping that minimizes the
  squared error) or ``entropy`` (the clipping that minimizes KL divergence).
* ``minifloat``: sign, ``exponent_bits``, ``mantissa_bits`` and a bias (FP8 E4M3, E5M2,
  ...), with subnormals and saturation, scaled per tensor/channel so the range fits.
* ``bfp``: block floating point: ``block_size`` values share one exponent, each keeps a
  signed ``bits``-bit mantissa.

>>> QuantSpec(bits=4, symmetric=False).qmin, QuantSpec(bits=4, symmetric=False).qmax
(-8, 7)
>>> QuantSpec.parse({"format": "minifloat", "preset": "fp8_e4m3"}).max_value
448.0
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from kiln.errors import ConfigError

RangeMethod = Literal["minmax", "percentile", "mse", "entropy"]

MINIFLOAT_PRESETS: dict[str, dict[str, Any]] = {
    # OCP FP8: E4M3 uses the top exponent for numbers (max 448), E5M2 is IEEE-like.
    "fp8_e4m3": {"exponent_bits": 4, "mantissa_bits": 3, "exponent_bias": 7, "max_value": 448.0},
    "fp8_e5m2": {"exponent_bits": 5, "mantissa_bits": 2, "exponent_bias": 15,
                 "max_value": 57344.0},
    "fp16": {"exponent_bits": 5, "mantissa_bits": 10, "exponent_bias": 15, "max_value": 65504.0},
}


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """The smallest and largest integer of a ``bits``-wide type.

    >>> integer_range(8, True), integer_range(4, False)
    ((-128, 127), (0, 15))
    """
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class QuantSpec(BaseModel):
    """How to quantize one tensor. Unknown keys and bad values raise ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["int", "minifloat", "bfp"] = "int"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    granularity: Literal["tensor", "channel"] = "tensor"
    axis: int = 0
    range: RangeMethod = "minmax"
    percentile: float = 99.99
    # minifloat
    preset: str | None = None
    exponent_bits: int = 4
    mantissa_bits: int = 3
    exponent_bias: int | None = None
    max_value_override: float | None = None
    # bfp
    block_size: int = 16

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = MINIFLOAT_PRESETS.get(data["preset"])
            if preset is None:
                raise ValueError(f"unknown minifloat preset '{data['preset']}' "
                                 f"(known: {', '.join(MINIFLOAT_PRESETS)})")
            data = {**data}
            data.setdefault("format", "minifloat")
            data.setdefault("exponent_bits", preset["exponent_bits"])
            data.setdefault("mantissa_bits", preset["mantissa_bits"])
            data.setdefault("exponent_bias", preset["exponent_bias"])
            data.setdefault("max_value_override", preset["max_value"])
            data.setdefault("bits", 1 + data["exponent_bits"] + data["mantissa_bits"])
        if isinstance(data, dict) and data.get("format") == "minifloat" and "bits" not in data:
            data = {**data, "bits": 1 + data.get("exponent_bits", 4) + data.get("mantissa_bits", 3)}
        return data

    @model_validator(mode="after")
    def _check(self) -> QuantSpec:
        if self.format == "int" and not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be 2..16 for integers, got {self.bits}")
        if self.format == "minifloat":
            if not (1 <= self.exponent_bits <= 8 and 0 <= self.mantissa_bits <= 23):
                raise ValueError("minifloat needs exponent_bits 1..8 and mantissa_bits 0..23")
            if self.bits != 1 + self.exponent_bits + self.mantissa_bits:
                raise ValueError(f"minifloat bits must be 1 + exponent_bits + mantissa_bits = "
                                 f"{1 + self.exponent_bits + self.mantissa_bits}, got {self.bits}")
        if self.format == "bfp" and not (2 <= self.bits <= 16 and self.block_size >= 1):
            raise ValueError("bfp needs 2..16 mantissa bits and block_size >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.symmetric and not self.signed and self.format == "int":
            raise ValueError("a symmetric integer format must be signed (use symmetric: false "
                             "for unsigned ranges)")
        return self

    # --- integer grid ----------------------------------------------------------------
    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.signed)[1]

    # --- minifloat -------------------------------------------------------------------
    @property
    def bias(self) -> int:
        if self.exponent_bias is not None:
            return self.exponent_bias
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def max_value(self) -> float:
        if self.max_value_override is not None:
            return float(self.max_value_override)
        # IEEE-like: the top exponent is reserved for inf/NaN.
        top_exponent = 2**self.exponent_bits - 2 - self.bias
        return float((2 - 2.0 ** -self.mantissa_bits) * 2.0**top_exponent)

    def describe(self) -> str:
        """Short label, e.g. ``int8 sym per-channel minmax``."""
        if self.format == "minifloat":
            return f"fp{self.bits} e{self.exponent_bits}m{self.mantissa_bits}"
        if self.format == "bfp":
            return f"bfp{self.bits} block{self.block_size}"
        kind = ("int" if self.signed else "uint") + str(self.bits)
        scheme = "sym" if self.symmetric else "asym"
        granularity = "per-channel" if self.granularity == "channel" else "per-tensor"
        return f"{kind} {scheme} {granularity} {self.range}"

    @classmethod
    def parse(cls, data: QuantSpec | dict[str, Any], *, where: str = "quantization spec"
              ) -> QuantSpec:
        """Validate a dict into a spec; errors name ``where`` and the offending field."""
        if isinstance(data, QuantSpec):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """Pydantic errors as one line: ``field 'bits': ...; unknown key 'bitz'``."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown key '{location}'")
        elif location:
            allowed = error.get("ctx", {}).get("expected")
            message = error["msg"].removeprefix("Value error, ")
            parts.append(f"field '{location}': {message}" + (f" ({allowed})" if allowed and
                                                               allowed not in message else ""))
        else:
            parts.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(parts)
