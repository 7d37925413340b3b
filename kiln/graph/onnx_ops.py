"""Functions with ONNX semantics that imported graphs call (fx leaf functions).

They are wrapped with ``torch.fx.wrap`` so that re-tracing an imported graph keeps them
as single nodes instead of tracing through their shape logic.
"""

from __future__ import annotations

from math import prod

import torch
import torch.fx


def onnx_flatten(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """ONNX Flatten: a 2-D tensor [prod(dims before axis), prod(dims from axis)]."""
    axis = axis if axis >= 0 else x.dim() + axis
    return x.reshape(prod(x.shape[:axis]), -1)


def onnx_reshape(x: torch.Tensor, shape: tuple[int, ...], allowzero: int = 0) -> torch.Tensor:
    """ONNX Reshape: a 0 in ``shape`` copies the input's dimension (unless allowzero)."""
    if not allowzero:
        shape = tuple(x.shape[i] if s == 0 else s for i, s in enumerate(shape))
    return x.reshape(shape)


def onnx_softmax(x: torch.Tensor, axis: int, legacy: bool) -> torch.Tensor:
    """ONNX Softmax; ``legacy`` (opset < 13) coerces to 2-D at ``axis`` first."""
    if not legacy:
        return torch.softmax(x, dim=axis)
    axis = axis if axis >= 0 else x.dim() + axis
    flat = x.reshape(prod(x.shape[:axis]), -1)
    return torch.softmax(flat, dim=1).reshape(x.shape)


def onnx_sum(*inputs: torch.Tensor) -> torch.Tensor:
    """ONNX Sum: elementwise sum of any number of tensors."""
    total = inputs[0]
    for tensor in inputs[1:]:
        total = total + tensor
    return total


def onnx_transpose(x: torch.Tensor, perm: tuple[int, ...] | None = None) -> torch.Tensor:
    """ONNX Transpose; no ``perm`` reverses the dimensions."""
    if perm is None:
        perm = tuple(reversed(range(x.dim())))
    return x.permute(*perm)


def onnx_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None,
    alpha: float = 1.0,
    beta: float = 1.0,
    trans_a: int = 0,
    trans_b: int = 0,
) -> torch.Tensor:
    """ONNX Gemm with two variable operands: alpha * A' @ B' + beta * C."""
    a = a.t() if trans_a else a
    b = b.t() if trans_b else b
    out = alpha * (a @ b)
    return out if c is None else out + beta * c


for _name in (
    "onnx_flatten", "onnx_reshape", "onnx_softmax", "onnx_sum", "onnx_transpose", "onnx_gemm"
):
    torch.fx.wrap(_name)


def onnx_avgpool_exclude_pad(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    ceil_mode: bool = False,
) -> torch.Tensor:
    """ONNX AveragePool with any (also asymmetric) pads and ``count_include_pad=0``.

    ``pads`` is ONNX's [top, left, bottom, right]. Each window's sum is divided by the
    number of real (unpadded) elements it covers: the pooled zero-padded input over the
    pooled zero-padded mask of ones, whatever divisor torch uses for both.
    """
    torch_pads = (pads[1], pads[3], pads[0], pads[2])
    padded = torch.nn.functional.pad(x, torch_pads)
    ones = torch.nn.functional.pad(torch.ones_like(x[:1, :1]), torch_pads)
    sums = torch.nn.functional.avg_pool2d(padded, kernel, stride, ceil_mode=ceil_mode)
    counts = torch.nn.functional.avg_pool2d(ones, kernel, stride, ceil_mode=ceil_mode)
    return sums / counts


torch.fx.wrap("onnx_avgpool_exclude_pad")
