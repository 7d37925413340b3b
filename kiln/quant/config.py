"""``QuantConfig``: which layers get which precision, from a dict, TOML or YAML file.

A config has a ``default`` and ordered ``rules``; later rules override earlier ones,
field by field. Each rule matches compute layers (conv, linear, matmul) by op type,
node name or regular expression on the name, and sets any of ``weight``, ``bias``,
``input`` (the layer's input activation) and ``output`` (its output after the fused
BatchNorm/ReLU tail). ``null`` turns a quantization point off.

.. code-block:: yaml

    default:
      weight: {bits: 8, granularity: channel}
      input: {bits: 8, signed: false, symmetric: false}
    rules:
      - match: {op: [linear]}
        weight: {bits: 4}
      - match: {regex: "classifier\\\\..*"}
        output: {bits: 8, symmetric: false}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kiln.errors import ConfigError
from kiln.graph.metadata import OpKind
from kiln.quant.spec import QuantSpec, format_validation_error
from kiln.strict_yaml import load_yaml

POINTS = ("weight", "bias", "input", "output")
QUANTIZABLE_OPS = {OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR, OpKind.MATMUL}
#: Ops a rule's ``op`` may name: the layers, and residual adds (their input and output).
_OP_NAMES = {kind.value for kind in QUANTIZABLE_OPS} | {"conv", OpKind.ADD.value}


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op: list[str] = []
    name: list[str] = []
    regex: str | None = None

    @field_validator("op")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        for op in ops:
            if op not in _OP_NAMES:
                raise ValueError(f"unknown op '{op}' (quantizable ops: {sorted(_OP_NAMES)})")
        return ops

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"bad regular expression '{regex}': {exc}") from None
        return regex

    def matches(self, name: str, op: OpKind, *, is_last: bool = False) -> bool:
        """``name: ["@last"]`` matches the network's last compute layer."""
        ops = {"conv2d" if o == "conv" else o for o in self.op}
        if self.op and op.value not in ops:
            return False
        if self.name and name not in self.name and not (is_last and "@last" in self.name):
            return False
        return not (self.regex and not re.fullmatch(self.regex, name))

    def describe(self) -> str:
        parts = [f"op={self.op}" if self.op else "", f"name={self.name}" if self.name else "",
                 f"regex='{self.regex}'" if self.regex else ""]
        return " ".join(p for p in parts if p) or "everything"


class LayerQuant(BaseModel):
    """The quantization points of one layer; ``None`` leaves that point in float."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: QuantSpec | None = None
    bias: QuantSpec | None = None
    input: QuantSpec | None = None
    output: QuantSpec | None = None

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, point) is None for point in POINTS)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    match: Match = Match()
    weight: dict[str, Any] | None = None
    bias: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None


class QuantConfig(BaseModel):
    """A validated quantization config; build it with :meth:`parse` or :meth:`load`.

    >>> cfg = QuantConfig.parse({"default": {"weight": {"bits": 4}}})
    >>> cfg.layer("fc", OpKind.LINEAR).weight.bits
    4
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    default: dict[str, Any] = {}
    rules: list[Rule] = []
    fold_batchnorm: bool = True
    #: cross-layer equalization before quantizing (worth it for per-tensor weights: the
    #: convnet at W3A8 per tensor 64.90% -> 80.87%; per channel it changes little)
    equalize: bool = False
    #: a weight whose config names no range method gets one chosen by its width
    #: (:func:`default_weight_range`); false: min-max at every width (kiln before session 17,
    #: kept for the model files it wrote)
    weight_range_by_width: bool = True

    @classmethod
    def parse(cls, data: QuantConfig | dict[str, Any], *, source: str = "quantization config"
              ) -> QuantConfig:
        if isinstance(data, QuantConfig):
            return data
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
        for key in config.default:
            if key not in POINTS:
                raise ConfigError(f"{source}: unknown key 'default.{key}' (use {POINTS})")
        # Validate every spec now, so a typo fails before any work is done.
        config._merged(config.default, None, f"{source}: default")
        for index, rule in enumerate(config.rules):
            config._merged(config.default, rule, f"{source}: rules[{index}]")
        return config

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` config file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such quantization config file")
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                data = load_yaml(text, path) or {}
            elif path.suffix == ".json":
                import json

                def strict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
                    keys = [key for key, _ in pairs]
                    repeated = sorted({key for key in keys if keys.count(key) > 1})
                    if repeated:
                        raise ConfigError(f"{path}: key '{repeated[0]}' appears twice in one "
                                          "object")
                    return dict(pairs)

                data = json.loads(text, object_pairs_hook=strict)
            else:
                raise ConfigError(f"{path}: use a .toml, .yaml or .json file")
        except ConfigError:
            raise
        except Exception as exc:  # each parser has its own error type
            raise ConfigError(f"{path}: cannot parse: {exc}") from exc
        return cls.parse(data, source=str(path))

    def _merged(self, base: dict[str, Any], rule: Rule | None, where: str) -> dict[str, Any]:
        merged = dict(base)
        if rule is not None:
            for point in POINTS:
                if point in rule.model_fields_set:
                    value = getattr(rule, point)
                    if value is None:
                        merged[point] = None
                    else:
                        merged[point] = {**(merged.get(point) or {}), **value}
        for point, value in merged.items():
            if value is not None:
                QuantSpec.parse(value, where=f"{where}.{point}")
        return merged

    def layer(self, name: str, op: OpKind, *, is_last: bool = False) -> LayerQuant:
        """The quantization of layer ``name``: the default, then every matching rule; an
        activation whose range method no rule names gets :func:`default_activation_range`,
        a weight :func:`default_weight_range`.
        """
        merged = dict(self.default)
        for rule in self.rules:
            if rule.match.matches(name, op, is_last=is_last):
                merged = self._merged(merged, rule, "rule")
        weight_range = default_weight_range if self.weight_range_by_width else _min_max
        for point, by_width in (("input", default_activation_range),
                                ("output", default_activation_range), ("weight", weight_range)):
            value = merged.get(point)
            if value is not None and "range" not in value:
                spec = QuantSpec.parse(value)
                if spec.format == "int":
                    merged[point] = {**value, "range": by_width(spec.bits)}
        return LayerQuant(**{p: QuantSpec.parse(v) if v is not None else None
                             for p, v in merged.items()})

    def unmatched_rules(self, layers: list[tuple[str, OpKind]],
                        others: list[tuple[str, OpKind]] = ()) -> list[str]:
        """Rules that match none of ``layers`` nor ``others`` (the adds; never "@last"):
        usually a typo in a name or regex."""
        last = len(layers) - 1
        return [f"rules[{i}] ({rule.match.describe()})" for i, rule in enumerate(self.rules)
                if not any(rule.match.matches(name, op, is_last=j == last)
                           for j, (name, op) in enumerate(layers))
                and not any(rule.match.matches(name, op) for name, op in others)]


#: Activations and weights narrower than this get MSE ranges by default, wider ones min-max.
MSE_BELOW_BITS = 8


def default_activation_range(bits: int) -> str:
    """The range method an activation of ``bits`` gets when its config names none.

    At 8 bits and above the full observed range costs nothing measurable (the shipped
    convnet: 91.99% min-max, 91.91% MSE, float 92.00%); below, rounding error dominates and
    clipping the rare large values pays: W4A4 PTQ 88.38% min-max, 89.69% MSE, 90.11%
    percentile, 89.97% entropy (``python benchmarks/compression_defaults.py``). MSE rather
    than percentile because it is the better start for QAT: W2A2 LSQ 81.56% from MSE
    ranges, 78.81% from percentile (2-bit logits; measured by hand, session 16). Rather
    than entropy (fixed in session 18), because entropy wins on the convnet only: W4A4 PTQ
    with bias correction, mean over calibration sets, MSE → entropy: convnet 91.32% →
    91.52%, jsc-three-linear 49.58% → 48.77% (W2A2 24.13% → 19.83%), resnet8 87.36% →
    86.30%, mobilenet-tiny 84.21% → 69.22% (its ReLU6 inputs are already bounded).

    >>> default_activation_range(8), default_activation_range(4)
    ('minmax', 'mse')
    """
    return "mse" if bits < MSE_BELOW_BITS else "minmax"


def _min_max(bits: int) -> str:
    return "minmax"


def default_weight_range(bits: int) -> str:
    """The range method a weight of ``bits`` gets when its config names none (per output
    channel, as weights are quantized by default).

    As for activations: min-max at 8 bits and above; below, the per-channel range that
    minimises the weights' squared rounding error, which clips a channel's few largest
    weights. The shipped convnet, ``kiln quantize`` defaults, min-max → MSE weights: W4A8
    91.37% → 91.73%, W4A4 91.07% → 91.33%, W3A8 84.76% → 88.92%, W2A8 19.37% → 74.83%;
    ``kiln qat`` W2A2 84.47 / 83.93% → 88.58 / 88.99% (seeds 0, 1); jsc-three-linear W3A8
    41.27% → 48.00% (measured session 17; ``benchmarks/compression_vs_peers.py``).

    >>> default_weight_range(8), default_weight_range(4)
    ('minmax', 'mse')
    """
    return "mse" if bits < MSE_BELOW_BITS else "minmax"


def uniform_config(weight_bits: int | None = 8, activation_bits: int | None = None, *,
                   weight: dict[str, Any] | None = None,
                   activation: dict[str, Any] | None = None,
                   last_output: bool = True, logit_bits: int = 8,
                   equalize: bool = False) -> QuantConfig:
    """The common case as a config: the same widths everywhere.

    Activations are quantized at every layer input, and (``last_output``) at the output
    of the last layer, so that every tensor the integer program moves is quantized. That
    output (the logits) is never narrower than ``logit_bits``: four 2-bit levels make most
    classes tie (the convnet at W2A2, QAT LSQ: 81.56% with 2-bit logits, 84.96% with 8),
    and in hardware it is one requantizer's clamp.

    >>> uniform_config(4, 2).layer("fc", OpKind.LINEAR, is_last=True).output.bits
    8
    """
    default: dict[str, Any] = {}
    if weight_bits is not None:
        default["weight"] = {"bits": weight_bits, "granularity": "channel", **(weight or {})}
    rules = []
    if activation_bits is not None:
        spec = {"bits": activation_bits, "signed": False, "symmetric": False, **(activation or {})}
        default["input"] = spec
        if last_output:
            rules.append({"match": {"name": ["@last"]},
                          "output": {**spec, "bits": max(spec["bits"], logit_bits),
                                     "signed": True, "symmetric": False}})
    return QuantConfig.parse({"default": default, "rules": rules, "equalize": equalize})
