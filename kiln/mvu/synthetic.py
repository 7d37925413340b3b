"""Random integer programs of plain CNNs and MLPs at any MVU precision, for differential
tests of the MVU path (lowering, plan, model) against kiln's engine, and for networks that
exist only as shapes here (BARVINN's shortcut-free CIFAR ResNet-18).

Layers are given as small dicts: ``{"conv": K, "kernel": 3, "stride": 1, "padding": 1}``,
``{"maxpool": 2}``, ``{"flatten": True}``, ``{"dense": K}``. Multipliers are chosen from the
accumulators' spread so that outputs use their whole range (with some wrapping, as the
unit does).

>>> program = synthetic_program((3, 8, 8), [{"conv": 8, "kernel": 3, "padding": 1},
...                                         {"flatten": True}, {"dense": 5}],
...                             aprec=2, wprec=2, oprec=2)
>>> [op.kind for op in program.ops]
['conv', 'flatten', 'dense']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.integer.arith import quantize_multipliers
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant

RESNET18_PLAIN_CIFAR: list[dict[str, Any]] = (
    [{"conv": 64, "kernel": 3, "stride": 1, "padding": 1}]
    + [layer for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2))
       for layer in ({"conv": width, "kernel": 3, "stride": stride, "padding": 1},
                     {"conv": width, "kernel": 3, "stride": 1, "padding": 1},
                     {"conv": width, "kernel": 3, "stride": 1, "padding": 1},
                     {"conv": width, "kernel": 3, "stride": 1, "padding": 1})]
)
"""BARVINN's distilled ResNet-18 without shortcuts: its 17 convolutions (3×32×32 input)."""


def _quant(bits: int, signed: bool, zero_point: int = 0) -> TensorQuant:
    return TensorQuant(1.0, zero_point, bits, signed)


def _range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def random_weights(rng: np.random.Generator, shape: tuple[int, ...], bits: int,
                   signed: bool) -> np.ndarray:
    low, high = _range(bits, signed)
    return rng.integers(low, high + 1, size=shape, dtype=np.int64)


def synthetic_program(input_shape: tuple[int, ...], layers: list[dict[str, Any]], *,
                      aprec: int, wprec: int, oprec: int | None = None,
                      isigned: bool = False, wsigned: bool = True, input_zero_point: int = 0,
                      last_oprec: int | None = None, seed: int = 0,
                      name: str = "synthetic") -> IntegerProgram:
    """A random plain CNN/MLP IntegerProgram (rounding ``nearest``; lower it for the MVU
    with :func:`kiln.mvu.lower.lower_for_mvu`). Hidden activations are unsigned ``oprec``
    bits after a ReLU; the last layer's output is signed ``last_oprec`` bits."""
    rng = np.random.default_rng(seed)
    oprec = oprec or aprec
    last_oprec = last_oprec or oprec
    compute = [i for i, layer in enumerate(layers) if "conv" in layer or "dense" in layer]
    shape = tuple(input_shape)
    source = "input"
    in_quant = _quant(aprec, isigned, input_zero_point)
    input_quant = in_quant
    ops: list[IntOp] = []
    for index, layer in enumerate(layers):
        name_ = f"layer{index}"
        if "maxpool" in layer:
            size = int(layer["maxpool"])
            ops.append(IntOp("maxpool", name_, [source], name_, {
                "kernel": [size, size], "stride": [size, size], "padding": [0, 0],
                "ceil_mode": False, "in_quant": in_quant.as_dict(),
                "out_quant": in_quant.as_dict()}))
            shape = (shape[0], shape[1] // size, shape[2] // size)
            source = name_
            continue
        if "flatten" in layer:
            flat = int(np.prod(shape))
            ops.append(IntOp("flatten", name_, [source], name_, {
                "shape": [flat], "in_quant": in_quant.as_dict(),
                "out_quant": in_quant.as_dict()}))
            shape = (flat,)
            source = name_
            continue
        last = index == compute[-1]
        out_quant = (_quant(last_oprec, True) if last else _quant(oprec, False))
        attrs: dict[str, Any] = {"in_quant": in_quant.as_dict(), "weight_bits": wprec,
                                 "weight_signed": wsigned}
        if "conv" in layer:
            kernels, size = int(layer["conv"]), int(layer.get("kernel", 3))
            stride, padding = int(layer.get("stride", 1)), int(layer.get("padding", 0))
            weight = random_weights(rng, (kernels, shape[0], size, size), wprec, wsigned)
            attrs.update(stride=[stride, stride], padding=[padding, padding],
                         dilation=[1, 1], groups=1)
            kind = "conv"
            out_shape = (kernels, (shape[1] + 2 * padding - size) // stride + 1,
                         (shape[2] + 2 * padding - size) // stride + 1)
        else:
            kernels = int(layer["dense"])
            weight = random_weights(rng, (kernels, int(np.prod(shape))), wprec, wsigned)
            kind = "dense"
            out_shape = (kernels,)
        reduction = int(np.prod(weight.shape[1:]))
        low, high = _range(aprec if index == 0 else in_quant.bits, in_quant.signed)
        # Spread of an accumulator over uniform inputs and weights: scale it onto the
        # output range (a few wrap, as they may on the unit).
        w_low, w_high = _range(wprec, wsigned)
        spread = np.sqrt(reduction) * max(high - low, 1) * max(w_high - w_low, 1) / 4 + 1
        levels = 1 << out_quant.bits
        multiplier = levels / (3 * spread) * rng.uniform(0.7, 1.4, size=kernels)
        m0, shift = quantize_multipliers(multiplier)
        centre = 0 if out_quant.signed else -int(levels / multiplier.mean() / 4)
        bias = rng.integers(-int(spread), int(spread) + 1, size=kernels) + centre
        lo, hi = out_quant.qmin, out_quant.qmax
        ops.append(IntOp(kind, name_, [source], name_, {
            **attrs, "out_quant": out_quant.as_dict(), "clamp": [lo, hi],
            "acc_bits": 32}, {
            "weight": weight, "weight_zero": np.zeros(kernels, dtype=np.int64),
            "bias": bias.astype(np.int64), "m0": m0, "shift": shift,
            "multiplier_f32": multiplier.astype(np.float32)},
            {"weight": wprec, "bias": 32, "m0": 32, "shift": 8}))
        shape = out_shape
        in_quant = out_quant
        source = name_
    output = ops[-1]
    return IntegerProgram(name, tuple(input_shape), input_quant, output.out_quant, "nearest",
                          ops, "input", output.output)


def random_inputs(program: IntegerProgram, count: int, seed: int = 0) -> np.ndarray:
    """Uniform integers over the program's input range, [count, *input_shape]."""
    quant = program.input_quant
    rng = np.random.default_rng(seed)
    return rng.integers(quant.qmin, quant.qmax + 1, size=(count, *program.input_shape),
                        dtype=np.int64)
