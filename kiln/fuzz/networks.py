"""Seeded random networks of the shapes kiln's stages claim to accept.

A :class:`NetworkSpec` is plain data (JSON), so a failing network can be written out,
shrunk and replayed. :func:`random_network` draws one from a seed; :func:`build_module`
turns it into an ``nn.Module`` with seeded random weights.

>>> spec = random_network(7)
>>> spec == NetworkSpec.from_json(spec.to_json())
True
>>> module = build_module(spec)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROUNDINGS = ("floor", "nearest", "float32")


@dataclass
class NetworkSpec:
    """A small network and how to quantize it.

    ``layers`` is a list of dicts, each with an ``op``: ``conv`` (out, kernel, stride,
    padding [top, left, bottom, right], dilation, bias, bn, act), ``maxpool`` / ``avgpool``
    (kernel, stride, padding, ceil), ``residual`` (a shape-keeping conv whose output is
    added to its input), ``flatten``, ``global_avgpool``, ``linear`` (out, bias, act).
    """

    seed: int
    input_shape: list[int]
    layers: list[dict[str, Any]]
    weight: dict[str, Any] = field(default_factory=lambda: {"bits": 8})
    activation: dict[str, Any] = field(default_factory=lambda: {"bits": 8})
    rounding: str = "float32"
    via_onnx: bool = False  # import through torch.onnx.export and kiln's ONNX importer

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        return cls(**json.loads(text))

    def with_layers(self, layers: list[dict[str, Any]]) -> NetworkSpec:
        return replace(self, layers=[dict(layer) for layer in layers])

    def describe(self) -> str:
        parts = ["x".join(map(str, self.input_shape))]
        for layer in self.layers:
            op = layer["op"]
            if op == "conv":
                pads = layer["padding"]
                pad = str(pads[0]) if len(set(pads)) == 1 else "/".join(map(str, pads))
                groups = layer.get("groups", 1)
                parts.append(f"conv{layer['out']}k{'x'.join(map(str, layer['kernel']))}"
                             + (f"g{groups}" if groups > 1 else "")
                             + f"s{layer['stride']}p{pad}d{layer['dilation']}"
                             + ("+bn" if layer["bn"] else "") + _act(layer))
            elif op in ("maxpool", "avgpool"):
                parts.append(f"{op[:3]}k{layer['kernel']}s{layer['stride']}p{layer['padding']}"
                             + ("c" if layer["ceil"] else ""))
            elif op == "residual":
                parts.append(f"res(k{layer['kernel']}{_act(layer)})")
            elif op == "linear":
                parts.append(f"fc{layer['out']}{_act(layer)}")
            else:
                parts.append(op)
        quant = (f"w{self.weight['bits']}{self.weight.get('granularity', 'channel')[0]}"
                 f"{'' if self.weight.get('symmetric', True) else 'a'} "
                 f"a{self.activation['bits']}{'s' if self.activation.get('signed') else 'u'}"
                 f"{'' if self.activation.get('symmetric') else 'a'} {self.rounding}")
        return " > ".join(parts) + f" [{quant}{' onnx' if self.via_onnx else ''}]"


def _act(layer: dict[str, Any]) -> str:
    return f"+{layer['act']}" if layer.get("act") else ""


# --- drawing ---------------------------------------------------------------------------


def _conv_output(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _pool_output(size: int, kernel: int, stride: int, padding: int, ceil: bool) -> int:
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + padding:  # the last window starts in the padding
        out -= 1
    return out


def _draw_conv(rng: random.Random, channels: int, height: int, width: int,
               rtl: bool, extra: random.Random | None = None) -> dict[str, Any] | None:
    for _ in range(20):
        kernel_y = rng.randint(1, 7)
        kernel_x = kernel_y if rng.random() < 0.7 else rng.randint(1, 7)
        dilation = 1 if rng.random() < 0.75 else 2
        stride = rng.choice([1, 1, 1, 2, 2, 3])
        if rtl or rng.random() < 0.8:
            pad = rng.randint(0, min(3, kernel_y - 1 if kernel_y > 1 else 1))
            padding = [pad] * 4
        else:
            padding = [rng.randint(0, 3) for _ in range(4)]
        out_h = _conv_output(height, kernel_y, stride, padding[0] + padding[2], dilation)
        out_w = _conv_output(width, kernel_x, stride, padding[1] + padding[3], dilation)
        if out_h >= 1 and out_w >= 1:
            out = rng.choice([rng.randint(1, 8), rng.randint(1, 16), rng.randint(1, 40)])
            conv = {"op": "conv", "out": out, "kernel": [kernel_y, kernel_x], "stride": stride,
                    "padding": padding, "dilation": dilation, "bias": rng.random() < 0.8,
                    "bn": rng.random() < 0.3, "act": rng.choice(["relu", "relu", "relu6", None])}
            if extra is not None:
                _draw_groups(extra, channels, conv)
            return conv
    return None


def _draw_groups(rng: random.Random, channels: int, conv: dict[str, Any]) -> None:
    """Make some convs depthwise (groups = channels, sometimes a channel multiplier) or
    grouped (groups dividing both channel counts). From a random stream of its own: the
    networks drawn before groups existed stay what they were."""
    draw = rng.random()
    if draw < 0.25 and channels > 1:
        conv["groups"] = channels
        conv["out"] = channels * rng.choice([1, 1, 1, 2])
    elif draw < 0.4:
        divisors = [g for g in range(2, channels + 1) if channels % g == 0]
        if divisors:
            groups = rng.choice(divisors)
            conv["groups"] = groups
            conv["out"] = groups * rng.randint(1, 3)


def _draw_pool(rng: random.Random, height: int, width: int, rtl: bool) -> dict[str, Any] | None:
    op = "maxpool" if rng.random() < 0.7 else "avgpool"
    for _ in range(20):
        kernel = rng.randint(1, 4)
        stride = rng.randint(1, 3)
        padding = 0 if op == "avgpool" or rng.random() < 0.6 else rng.randint(
            0, kernel // 2)
        ceil = False if rtl or op == "avgpool" else rng.random() < 0.3
        if kernel > min(height, width) + 2 * padding:
            continue
        if _pool_output(height, kernel, stride, padding, ceil) >= 1 and \
                _pool_output(width, kernel, stride, padding, ceil) >= 1:
            return {"op": op, "kernel": kernel, "stride": stride, "padding": padding,
                    "ceil": ceil}
    return None


def random_network(seed: int, *, rtl: bool = False) -> NetworkSpec:
    """Draw a small network from ``seed``. With ``rtl``, only what the RTL emitter takes
    (equal padding on every side, floor-mode pools, adds in integer rounding), and
    more residual blocks and global pools."""
    rng = random.Random(seed)
    extra = random.Random(seed * 1_000_003 + 17)  # groups and rtl roundings
    layers: list[dict[str, Any]] = []
    if rng.random() < 0.3:  # an MLP on a vector, or on an image it flattens first
        input_shape = ([rng.randint(1, 100)] if rng.random() < 0.5 else
                       [rng.randint(1, 3), rng.randint(2, 12), rng.randint(2, 12)])
        if len(input_shape) == 3:
            layers.append({"op": "flatten"})
    else:
        size = rng.randint(5, 20)
        input_shape = [rng.randint(1, 4), size, size if rng.random() < 0.6 else rng.randint(5, 20)]
        channels, height, width = input_shape
        for _ in range(rng.randint(1, 4)):
            if rng.random() < (0.35 if rtl else 0.2) and height >= 1:
                kernel = rng.choice([1, 3, 5])
                layers.append({"op": "residual", "kernel": kernel,
                               "act": rng.choice(["relu", None])})
                continue
            conv = _draw_conv(rng, channels, height, width, rtl, extra)
            if conv is None:
                break
            layers.append(conv)
            pads = conv["padding"]
            height = _conv_output(height, conv["kernel"][0], conv["stride"], pads[0] + pads[2],
                                  conv["dilation"])
            width = _conv_output(width, conv["kernel"][1], conv["stride"], pads[1] + pads[3],
                                 conv["dilation"])
            channels = conv["out"]
            if rng.random() < 0.4:
                pool = _draw_pool(rng, height, width, rtl)
                if pool is not None:
                    layers.append(pool)
                    height = _pool_output(height, pool["kernel"], pool["stride"],
                                          pool["padding"], pool["ceil"])
                    width = _pool_output(width, pool["kernel"], pool["stride"],
                                         pool["padding"], pool["ceil"])
        layers.append({"op": "global_avgpool"} if rng.random() < (0.3 if rtl else 0.2)
                      else {"op": "flatten"})
    for index in range(rng.randint(1, 3)):
        last = index == 2 or rng.random() < 0.5
        layers.append({"op": "linear", "out": rng.randint(1, 40) if not last else
                       rng.randint(2, 12), "bias": rng.random() < 0.85,
                       "act": None if last else rng.choice(["relu", "relu", "relu6", None])})
        if last:
            break
    weight = {"bits": rng.choice([2, 3, 4, 5, 6, 7, 8, 8, 8]),
              "granularity": rng.choice(["channel", "channel", "tensor"]),
              "symmetric": rng.random() < 0.85}
    signed = rng.random() < 0.3
    activation = {"bits": rng.choice([2, 3, 4, 5, 6, 7, 8, 8, 8]), "signed": signed,
                  "symmetric": signed and rng.random() < 0.5}  # unsigned is asymmetric
    rounding = rng.choice(ROUNDINGS)
    if rtl and rounding == "float32" and any(layer["op"] == "residual" for layer in layers):
        rounding = extra.choice(("floor", "nearest"))  # kiln_add: integer roundings
    return NetworkSpec(seed, input_shape, layers, weight, activation, rounding,
                       via_onnx=rng.random() < 0.25)


# --- building --------------------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self, channels: int, kernel: int, act: str | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(x))


class _Pad(nn.Module):
    def __init__(self, padding: list[int]) -> None:
        super().__init__()
        top, left, bottom, right = padding
        self.padding = (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.padding)


def _activation(act: str | None) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), None: nn.Identity()}[act]


def build_module(spec: NetworkSpec) -> nn.Sequential:
    """The network as an ``nn.Sequential`` with weights drawn from ``spec.seed``."""
    torch.manual_seed(spec.seed)
    modules: list[nn.Module] = []
    shape = list(spec.input_shape)
    for layer in spec.layers:
        op = layer["op"]
        if op == "conv":
            top, left, bottom, right = layer["padding"]
            if top == bottom and left == right:
                padding: tuple[int, int] = (top, left)
            else:
                modules.append(_Pad(layer["padding"]))
                padding = (0, 0)
            modules.append(nn.Conv2d(shape[0], layer["out"], tuple(layer["kernel"]),
                                     stride=layer["stride"], padding=padding,
                                     dilation=layer["dilation"], bias=layer["bias"],
                                     groups=layer.get("groups", 1)))
            if layer["bn"]:
                bn = nn.BatchNorm2d(layer["out"])
                with torch.no_grad():  # statistics that are not the identity
                    bn.running_mean.uniform_(-0.5, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.3, 0.3)
                modules.append(bn)
            modules.append(_activation(layer["act"]))
        elif op == "maxpool":
            modules.append(nn.MaxPool2d(layer["kernel"], layer["stride"], layer["padding"],
                                        ceil_mode=layer["ceil"]))
        elif op == "avgpool":
            modules.append(nn.AvgPool2d(layer["kernel"], layer["stride"], layer["padding"],
                                        ceil_mode=layer["ceil"]))
        elif op == "residual":
            modules.append(_Residual(shape[0], layer["kernel"], layer["act"]))
        elif op == "global_avgpool":
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif op == "flatten":
            modules.append(nn.Flatten())
        elif op == "linear":
            modules += [nn.Linear(shape[0], layer["out"], bias=layer["bias"]),
                        _activation(layer["act"])]
        else:
            raise ValueError(f"unknown layer op '{op}'")
        with torch.no_grad():
            probe = nn.Sequential(*modules).eval()
            shape = list(probe(torch.zeros(1, *spec.input_shape)).shape[1:])
    module = nn.Sequential(*modules).eval()
    return module


def random_inputs(spec: NetworkSpec, count: int, seed: int | None = None) -> torch.Tensor:
    """Inputs for the network: mostly in [0, 1] like images, some outliers."""
    generator = torch.Generator().manual_seed(spec.seed if seed is None else seed)
    x = torch.rand(count, *spec.input_shape, generator=generator)
    if spec.activation.get("signed"):
        x = x * 2 - 1
    return x
