"""Lower an :class:`IntegerProgram` to what BARVINN's MVU computes.

The MVU has no zero points, no (M0, n) multiplier with rounding and no saturation: each
lane computes ``acc·scale + bias`` with a 16-bit signed scale and a 27-bit bias, an
optional ReLU, and keeps ``oprec`` bits from ``msbidx`` down. So for every conv and dense:

* weights must be symmetric (zero point 0); the input zero point moves into the bias
  (Σ(x−zx)·w = Σx·w − zx·Σw), and padded positions hold zx in the data RAM;
* the multiplier M becomes scale / 2^shift, the scale with as many bits (≤ 15 plus sign) as
  keep the bias within 27 bits; the output zero point and the rounding offset 2^(shift−1)
  move into the bias too (so the unit's truncation rounds half up);
* an unsigned output passes a ReLU, which the host applies (the unit has none): the unit
  writes every plane the value can reach (``relu_planes``, signed, within the scaler's 27
  bits) and the host clips it to [0, qmax], so it saturates; a signed output wraps (the
  unit keeps its low bits).

The result is again an IntegerProgram, with rounding mode ``mvu`` (see
:func:`kiln.integer.arith.requantize_mvu`), so kiln's engine runs exactly what the unit
computes and its accuracy can be measured against the usual int8 program.

>>> mvu_program = lower_for_mvu(program)          # doctest: +SKIP
>>> mvu_program.rounding
'mvu'
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.integer.arith import MVU_ROUNDING, quantize_multipliers
from kiln.integer.engine import _conv_accumulators
from kiln.integer.engine import run as run_engine
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant
from kiln.mvu.job import ACC_BITS, BIAS_BITS, MAX_PRECISION, SCALE_BITS, SCALER_OUT_BITS

SUPPORTED_OPS = ("conv", "dense", "maxpool", "flatten")


@dataclass(frozen=True)
class MvuScale:
    """One layer's per-channel requantization as the MVU holds it."""

    scale: np.ndarray  # [K] 16-bit signed
    bias: np.ndarray  # [K] 27-bit signed, added to acc·scale
    shift: int  # the output's lowest bit: msbidx = shift + oprec − 1
    scale_bits: int  # magnitude bits the scales use (≤ 15)


def _reject(op: IntOp, message: str, hint: str | None = None) -> KilnError:
    return KilnError(f"layer '{op.name}' ({op.kind}): {message}", hint=hint)


def _check_precision(op: IntOp, what: str, bits: int) -> None:
    if not 1 <= bits <= MAX_PRECISION:
        raise _reject(op, f"{what} precision {bits} is outside the MVU's 1..{MAX_PRECISION}")


def accumulator_bound(weight: np.ndarray, in_quant: TensorQuant) -> int:
    """Largest |Σ x·w| the unit's accumulator can see for this layer (raw integers, zero
    points not subtracted: that is what the hardware accumulates)."""
    largest_x = max(abs(in_quant.qmin), abs(in_quant.qmax))
    per_output = np.abs(weight.reshape(len(weight), -1)).sum(axis=1) * largest_x
    return int(per_output.max(initial=0))


def relu_planes(op: IntOp, weight: np.ndarray, in_quant: TensorQuant, scale: MvuScale,
                oprec: int) -> int:
    """Planes the unit writes for the host's ReLU: every bit of acc·scale + bias from the
    shift up that the layer can reach (signed), at most the scaler's 27 bits, at least one
    more than the output's.

    The host then sees the value whole whenever it fits, and saturates exactly."""
    largest_x = max(abs(in_quant.qmin), abs(in_quant.qmax))
    per_output = np.abs(weight.reshape(len(weight), -1)).sum(axis=1) * largest_x
    reach = int((per_output * np.abs(scale.scale) + np.abs(scale.bias)).max(initial=0))
    planes = ((reach >> scale.shift) + 1).bit_length() + 1
    return max(oprec + 1, min(planes, SCALER_OUT_BITS - scale.shift))


def mvu_scale(op: IntOp, multiplier: np.ndarray, bias_acc: np.ndarray, out_zero: int,
              oprec: int) -> MvuScale:
    """Scales, biases and shift for real multipliers ``multiplier`` [K] and accumulator-unit
    biases ``bias_acc`` [K]: the finest scale whose bias still fits 27 bits."""
    if np.any(multiplier <= 0) or not np.all(np.isfinite(multiplier)):
        raise _reject(op, "a requantization multiplier is not positive and finite")
    top = max(math.frexp(float(m))[1] for m in multiplier)  # largest M < 2^top
    limit = 1 << (BIAS_BITS - 1)
    for scale_bits in range(SCALE_BITS - 1, 0, -1):
        shift = scale_bits - top
        if shift < 0 or shift + oprec - 1 >= SCALER_OUT_BITS:
            continue
        scale = np.round(multiplier * 2.0**shift).astype(np.int64)
        if scale.max() >= 1 << (SCALE_BITS - 1) or scale.min() < 1:
            continue
        # The output zero point and the rounding offset (round half up) ride in the bias.
        rounding = (1 << (shift - 1)) if shift > 0 else 0
        bias = bias_acc.astype(np.int64) * scale + (int(out_zero) << shift) + rounding
        if np.abs(bias).max(initial=0) < limit:
            return MvuScale(scale, bias, shift, scale_bits)
    raise _reject(op, f"no 16-bit scale keeps its bias within {BIAS_BITS} bits (the input "
                  "zero point times the weights, or the bias, is too large for the unit)",
                  hint="use a symmetric input quantization or smaller biases")


def _fit_logits(program: IntegerProgram, calibration: np.ndarray) -> None:
    """Give the last layer a symmetric output scale that holds its largest accumulator on
    ``calibration`` (its multiplier and the program's output quantization change with it)."""
    last = program.ops[-1]
    if last.kind not in ("conv", "dense") or last.output != program.output_name:
        return
    source = run_engine(program, calibration, keep=True)[last.inputs[0]]
    if last.kind == "conv":
        acc = _conv_accumulators(last, source)
    else:
        zero = TensorQuant(**last.attrs["in_quant"]).zero_point
        acc = ((source.reshape(len(source), -1) - zero) @ last.arrays["weight"].T.astype(
            np.int64) + last.arrays["bias"])
    largest = float(np.abs(acc).max(initial=0))
    out = last.out_quant
    if largest == 0:
        return
    multiplier = (last.arrays["m0"].astype(np.float64)
                  * 2.0 ** -(31 + last.arrays["shift"].astype(np.float64)))
    # acc · M_new must stay within the signed range: M_new = qmax / largest (one common
    # output scale for every channel, so the logits stay comparable).
    qmax = (1 << (out.bits - 1)) - 1
    ratio = qmax / (largest * float(np.max(multiplier)))
    new_multiplier = multiplier * ratio
    m0, shift = quantize_multipliers(new_multiplier)
    quant = TensorQuant(out.scale / ratio, 0, out.bits, True)
    last.arrays.update(m0=m0, shift=shift,
                       multiplier_f32=new_multiplier.astype(np.float32))
    last.attrs.update(out_quant=quant.as_dict(), clamp=[quant.qmin, quant.qmax],
                      logits_fitted_on=len(calibration))
    program.output_quant = quant


def lower_for_mvu(program: IntegerProgram, *, calibration: np.ndarray | None = None
                  ) -> IntegerProgram:
    """A copy of ``program`` whose conv/dense layers requantize as the MVU does; raises a
    :class:`KilnError` naming the layer for anything the unit cannot run.

    The unit wraps where the program saturates. ``calibration`` (integer inputs) rescales
    the last layer's output (the logits, which no later layer reads) so that none of them
    wraps on these inputs: a logit beyond the range would otherwise come back with the
    wrong sign and decide the argmax.
    """
    lowered = copy.deepcopy(program)
    if calibration is not None and len(calibration):
        _fit_logits(lowered, np.asarray(calibration))
    for op in lowered.ops:
        if op.kind not in SUPPORTED_OPS:
            if op.kind == "add":
                raise _reject(op, "residual additions are not supported by the MVU (BARVINN "
                              "refuses models with residual connections too)",
                              hint="use a shortcut-free network")
            raise _reject(op, f"the MVU does not run '{op.kind}' ops (it runs conv, dense, "
                          "and max pooling between jobs)")
        if op.kind not in ("conv", "dense"):
            continue
        if op.kind == "conv":
            if op.attrs["groups"] != 1:
                raise _reject(op, f"grouped convolution (groups={op.attrs['groups']}) is not "
                              "supported: the MVU sums over all input channel blocks")
            if list(op.attrs["dilation"]) != [1, 1]:
                raise _reject(op, f"dilation {op.attrs['dilation']} is not supported")
        in_quant = TensorQuant(**op.attrs["in_quant"])
        out_quant = op.out_quant
        _check_precision(op, "input", in_quant.bits)
        _check_precision(op, "output", out_quant.bits)
        weight = op.arrays["weight"].astype(np.int64)
        wprec = int(op.attrs.get("weight_bits", 8))
        _check_precision(op, "weight", wprec)
        signed = bool(op.attrs.get("weight_signed", weight.min(initial=0) < 0
                                   or weight.max(initial=0) < 1 << (wprec - 1)))
        low, high = ((-(1 << (wprec - 1)), (1 << (wprec - 1)) - 1) if signed
                     else (0, (1 << wprec) - 1))
        if weight.size and (weight.min() < low or weight.max() > high):
            raise _reject(op, f"weights span {weight.min()}..{weight.max()}, outside the "
                          f"{'signed' if signed else 'unsigned'} {wprec}-bit range")
        op.attrs["weight_signed"] = signed
        if np.any(op.arrays["weight_zero"] != 0):
            raise _reject(op, "weights have a nonzero zero point; the MVU multiplies raw "
                          "two's complement weights", hint="quantize weights symmetrically")
        bound = accumulator_bound(weight, in_quant)
        if bound >= 1 << (ACC_BITS - 1):
            raise _reject(op, f"its accumulator can reach {bound} and overflow the MVU's "
                          f"{ACC_BITS}-bit accumulators",
                          hint="use narrower weights or activations, or fewer input channels")
        multiplier = (op.arrays["m0"].astype(np.float64)
                      * 2.0 ** -(31 + op.arrays["shift"].astype(np.float64)))
        channels = len(weight)
        multiplier = np.broadcast_to(multiplier, (channels,))
        weight_sums = weight.reshape(channels, -1).sum(axis=1)
        bias_acc = op.arrays["bias"].astype(np.int64) - in_quant.zero_point * weight_sums
        # A ReLU output needs one more plane from the unit: the sign the host's ReLU reads.
        planes = out_quant.bits + int(not out_quant.signed)
        scale = mvu_scale(op, multiplier, bias_acc, out_quant.zero_point, planes)
        op.arrays["m0"] = scale.scale
        op.arrays["shift"] = np.full(channels, scale.shift - 31, dtype=np.int64)
        op.arrays["mvu_bias"] = scale.bias
        op.array_bits.update(m0=SCALE_BITS, shift=8, mvu_bias=BIAS_BITS)
        op.attrs["clamp"] = [out_quant.qmin, out_quant.qmax]
        op.attrs["mvu"] = {"shift": scale.shift, "scale_bits": scale.scale_bits,
                           "relu": not out_quant.signed, "accumulator_bound": bound}
        if not out_quant.signed:
            op.attrs["mvu"]["relu_planes"] = relu_planes(op, weight, in_quant, scale,
                                                         out_quant.bits)
    lowered.rounding = MVU_ROUNDING
    lowered.metadata = {**lowered.metadata, "lowered_for": "barvinn-mvu"}
    return lowered
