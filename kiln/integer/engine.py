"""The bit-exact integer engine: ``run(program, x)`` executes an IntegerProgram."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kiln.errors import KilnError
from kiln.integer.arith import narrow_dtype, requantize
from kiln.integer.ops import (
    Epilogue,
    conv_accumulate,
    pad_nchw,
    qmatmul,
    qmaxpool2d,
    requantize_channels,
    window_sums,
)
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant


def _quant(op: IntOp, key: str = "in_quant") -> TensorQuant:
    return TensorQuant(**op.attrs[key])


def _per_channel(values: np.ndarray, rank: int) -> np.ndarray:
    """[K] -> shape broadcasting along axis 1 of a rank-``rank`` tensor."""
    return np.asarray(values).reshape([1, -1] + [1] * (rank - 2))


def _conv_accumulators(op: IntOp, x: np.ndarray, epilogue: Epilogue | None = None
                       ) -> np.ndarray:
    quant = _quant(op)
    return conv_accumulate(x, op.arrays["weight"], op.arrays["bias"], x_zero=quant.zero_point,
                           w_zero=op.arrays["weight_zero"], stride=tuple(op.attrs["stride"]),
                           padding=tuple(op.attrs["padding"]),
                           dilation=tuple(op.attrs["dilation"]), groups=op.attrs["groups"],
                           input_range=max(quant.qmax - quant.zero_point,
                                           quant.zero_point - quant.qmin),
                           epilogue=epilogue)


def _requantize_conv(op: IntOp, acc: np.ndarray, rounding: str, axis: int = 1) -> np.ndarray:
    lo, hi = op.attrs["clamp"]
    return requantize_channels(acc, op.arrays["m0"], op.arrays["shift"],
                               op.out_quant.zero_point, rounding, lo, hi,
                               op.arrays["multiplier_f32"], axis=axis,
                               out_dtype=narrow_dtype(lo, hi))


def _conv(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    # requantized inside the convolution, chunk by chunk, channels on the last axis
    return _conv_accumulators(op, x, lambda acc: _requantize_conv(op, acc, rounding, axis=-1))


def _narrow_weight(op: IntOp) -> np.ndarray:
    """The op's weight in its narrowest integer type (int8 for 8-bit weights), made once
    per weight array: converting it on every batch cost as much as the product itself."""
    weight = op.arrays["weight"]
    cached = op.__dict__.get("_narrow_weight")
    if cached is None or cached[0] is not weight:
        low, high = (int(weight.min()), int(weight.max())) if weight.size else (0, 0)
        cached = (weight, weight.astype(narrow_dtype(low, high)))
        op.__dict__["_narrow_weight"] = cached
    return cached[1]


def _dense(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    lo, hi = op.attrs["clamp"]
    return qmatmul(x.reshape(len(x), -1), _narrow_weight(op).T, _quant(op).zero_point,
                   op.arrays["weight_zero"], op.out_quant.zero_point, op.arrays["m0"],
                   op.arrays["shift"], rounding=rounding, qmin=lo, qmax=hi,
                   bias=op.arrays["bias"], multiplier_f32=op.arrays["multiplier_f32"],
                   out_dtype=narrow_dtype(lo, hi))


def _affine(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    rank = x.ndim
    acc = ((x.astype(np.int64) - _quant(op).zero_point) * _per_channel(op.arrays["weight"], rank)
           + _per_channel(op.arrays["bias"], rank))
    lo, hi = op.attrs["clamp"]
    return requantize(acc, _per_channel(op.arrays["m0"], rank),
                      _per_channel(op.arrays["shift"], rank), op.out_quant.zero_point,
                      rounding, lo, hi,
                      multiplier_f32=_per_channel(op.arrays["multiplier_f32"], rank),
                      out_dtype=narrow_dtype(lo, hi))


def _scalar_requantize(op: IntOp, acc: np.ndarray, rounding: str) -> np.ndarray:
    lo, hi = op.attrs["clamp"]
    return requantize(acc, op.arrays["m0"][0], op.arrays["shift"][0], op.out_quant.zero_point,
                      rounding, lo, hi, multiplier_f32=op.arrays["multiplier_f32"][0],
                      out_dtype=narrow_dtype(lo, hi))


def _requantize(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    return _scalar_requantize(op, x.astype(np.int64) - _quant(op).zero_point, rounding)


def _avgpool(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    zero = _quant(op).zero_point
    sums = window_sums(x.astype(np.int64) - zero, tuple(op.attrs["kernel"]),
                       tuple(op.attrs["stride"]), (0, 0), 0)
    return _scalar_requantize(op, sums, rounding)


def _add(op: IntOp, a: np.ndarray, b: np.ndarray, rounding: str) -> np.ndarray:
    qa, qb = _quant(op, "a_quant"), _quant(op, "b_quant")
    lo, hi = op.attrs["clamp"]
    out_dtype = narrow_dtype(lo, hi)
    if rounding == "float32":
        # float32(a - za) is exact (small integers), so subtracting in float32 gives the
        # same products as from int64; the sum and rint are ONNX Runtime's float32 ones.
        # In float32 the zero point adds exactly below 2^24; above, the clip saturates.
        total = a.astype(np.float32)
        total -= np.float32(qa.zero_point)
        total *= np.float32(op.arrays["multiplier_f32"][0])
        other = b.astype(np.float32)
        other -= np.float32(qb.zero_point)
        other *= np.float32(op.arrays["multiplier_b_f32"][0])
        total += other
        np.rint(total, out=total)
        total += np.float32(op.out_quant.zero_point)
        return np.clip(total, lo, hi, out=total).astype(out_dtype)
    da = a.astype(np.int64) - qa.zero_point
    db = b.astype(np.int64) - qb.zero_point
    # Both terms to a common fixed-point exponent, summed exactly in int64, one rounding.
    shift_a, shift_b = 31 + int(op.arrays["shift"][0]), 31 + int(op.arrays["shift_b"][0])
    common = max(shift_a, shift_b)
    if common - min(shift_a, shift_b) > 20:
        raise KilnError(f"add '{op.name}': its inputs' scales differ by more than 2^20")
    total = (da * int(op.arrays["m0"][0]) << (common - shift_a)) + \
            (db * int(op.arrays["m0_b"][0]) << (common - shift_b))
    if rounding == "nearest":
        total = total + (1 << (common - 1))
    return np.clip((total >> common) + op.out_quant.zero_point, lo, hi).astype(out_dtype)


def _maxpool(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    return qmaxpool2d(x, tuple(op.attrs["kernel"]), tuple(op.attrs["stride"]),
                      tuple(op.attrs["padding"]), _quant(op).qmin, op.attrs["ceil_mode"])


def _flatten(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    return x.reshape(len(x), *op.attrs["shape"])


def _pad(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    return pad_nchw(x, tuple(op.attrs["padding"]), op.attrs["value"])


def _clamp(op: IntOp, x: np.ndarray, rounding: str) -> np.ndarray:
    lo, hi = op.attrs["clamp"]
    return np.clip(x, lo, hi)


_UNARY: dict[str, Callable[[IntOp, np.ndarray, str], np.ndarray]] = {
    "conv": _conv, "dense": _dense, "affine": _affine, "requantize": _requantize,
    "avgpool": _avgpool, "maxpool": _maxpool, "flatten": _flatten, "clamp": _clamp, "pad": _pad,
}


def run(program: IntegerProgram, x: np.ndarray, *, batch_size: int = 256,
        keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Run ``program`` on integer inputs ``x`` ([N, *input_shape], already quantized).

    Returns the integer output, or with ``keep=True`` every intermediate tensor by name
    (the golden values hardware simulation compares against).

    >>> q = program.input_quant.quantize(images)                 # doctest: +SKIP
    >>> logits = program.output_quant.dequantize(run(program, q))
    """
    x = np.asarray(x)
    if x.shape[1:] != tuple(program.input_shape):
        raise KilnError(f"program '{program.name}' takes inputs of shape "
                        f"{list(program.input_shape)}, got {list(x.shape[1:])}")
    quant = program.input_quant
    if x.size and (x.min() < quant.qmin or x.max() > quant.qmax):
        raise KilnError(f"program '{program.name}' takes integers in [{quant.qmin}, "
                        f"{quant.qmax}] (its input quantization), got values in "
                        f"[{x.min()}, {x.max()}]",
                        hint="quantize float inputs with program.input_quant.quantize(x)")
    if keep:
        return {name: tensor.astype(np.int64, copy=False)
                for name, tensor in _run_batch(program, x, keep=True).items()}
    starts = range(0, len(x), batch_size)
    workers = min(os.cpu_count() or 1, len(starts))
    if workers > 1:
        # Much of a batch is single-threaded NumPy that releases the GIL: one batch per
        # core keeps every core busy (results are the same integers in the same order),
        # each batch's PyTorch kernels on one thread: a PyTorch thread pool per batch put
        # twice as many threads as cores to work, spinning against each other.
        with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(
                lambda start: _run_batch(program, x[start:start + batch_size], keep=False),
                starts))
    else:
        outputs = [_run_batch(program, x[start:start + batch_size], keep=False)
                   for start in starts]
    # Activations travel in their narrowest integer type (uint8 for most layers: an eighth
    # of int64's memory traffic); results are int64 like every other kiln integer API.
    return (np.concatenate(outputs).astype(np.int64) if outputs
            else np.zeros((0,), dtype=np.int64))


@contextlib.contextmanager
def _torch_threads(count: int):
    """PyTorch's intra-op threads set to ``count`` for the block (a process-wide setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pool_first(op: IntOp, pool: IntOp | None, consumers: dict[str, int]) -> bool:
    """A conv whose only consumer is a max pool: pool its int32 accumulators first.

    Requantization is monotone per channel (M > 0, then saturation), so max-pooling
    accumulators and then requantizing equals requantizing and then max-pooling, with a
    quarter of the requantization work for 2x2 pools."""
    return (op.kind == "conv" and pool is not None and pool.kind == "maxpool"
            and pool.inputs == [op.output] and consumers.get(op.output, 0) == 1)


def _lowest(dtype: np.dtype) -> int | float:
    """A padding value below every accumulator of this type (for max-pooling them)."""
    return int(np.iinfo(dtype).min) if dtype.kind in "iu" else -np.inf


def _run_batch(program: IntegerProgram, x: np.ndarray, *, keep: bool):
    quant = program.input_quant
    tensors: dict[str, np.ndarray] = {
        program.input_name: x.astype(narrow_dtype(quant.qmin, quant.qmax), copy=False)}
    consumers: dict[str, int] = {}
    for op in program.ops:
        for name in op.inputs:
            consumers[name] = consumers.get(name, 0) + 1
    skip = set()
    for index, op in enumerate(program.ops):
        if op.name in skip:
            continue
        following = program.ops[index + 1] if index + 1 < len(program.ops) else None
        # The MVU's requantization wraps (not monotone): pool after it, never before.
        if not keep and program.rounding != "mvu" and _pool_first(op, following, consumers):
            acc = _conv_accumulators(op, tensors[op.inputs[0]])
            pooled = qmaxpool2d(acc, tuple(following.attrs["kernel"]),
                                tuple(following.attrs["stride"]),
                                tuple(following.attrs["padding"]),
                                _lowest(acc.dtype), following.attrs["ceil_mode"])
            tensors[following.output] = _requantize_conv(op, pooled, program.rounding)
            skip.add(following.name)
            continue
        if op.kind == "add":
            result = _add(op, tensors[op.inputs[0]], tensors[op.inputs[1]], program.rounding)
        else:
            result = _UNARY[op.kind](op, tensors[op.inputs[0]], program.rounding)
        tensors[op.output] = result
    return tensors if keep else tensors[program.output_name]


def run_float(program: IntegerProgram, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Quantize float inputs, run the integer program, dequantize its output."""
    q = program.input_quant.quantize(x)
    return program.output_quant.dequantize(run(program, q, batch_size=batch_size))
