"""``FakeQuantize``: the module a quantized graph runs at every quantization point."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.graph.shapes import is_probing_shapes
from kiln.quant.functional import (
    channel_view,
    fake_quant_bfp,
    fake_quant_int,
    fake_quant_lsq,
    fake_quant_minifloat,
    scale_and_zero_point,
)
from kiln.quant.ranges import as_channel_matrix, find_range
from kiln.quant.spec import QuantSpec

Role = Literal["weight", "bias", "activation"]
MAX_SAMPLES = 1_000_000


class FakeQuantize(nn.Module):
    """Quantize-dequantize a tensor according to a :class:`QuantSpec`.

    A ``weight`` (or ``bias``) quantizer derives its range from the tensor it is given,
    again whenever that tensor changes (so QAT sees the current weights). An
    ``activation`` quantizer must be calibrated first: :func:`kiln.quant.calibrate`
    switches it to observing, feeds data, and freezes the range. With ``learn_scale()``
    the scale becomes a parameter trained by LSQ.

    >>> fq = FakeQuantize(QuantSpec(bits=2), role="weight")
    >>> fq(torch.tensor([-1.0, -0.4, 0.2, 0.9])).tolist()
    [-1.0, 0.0, 0.0, 1.0]
    """

    kiln_kind = "quantize"

    def __init__(self, spec: QuantSpec, role: Role = "activation") -> None:
        super().__init__()
        self.spec = spec
        self.role = role
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0))
        self.observing = False
        self.learned = False
        # Scale and zero point fixed from outside (a pre-quantized ONNX model): calibration
        # and the weight range refresh leave them as they are.
        self.frozen = False
        self._samples: list[torch.Tensor] = []
        self._running: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cached_version: tuple[int, int] | None = None

    # --- state -----------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return self.scale.numel() > 0 or self.spec.format == "bfp"

    def extra_repr(self) -> str:
        return f"{self.role}: {self.spec.describe()}" + (" (LSQ)" if self.learned else "") + (
            " (fixed)" if self.frozen else "")

    @classmethod
    def fixed(cls, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor,
              role: Role = "activation") -> FakeQuantize:
        """A quantizer with a given scale and zero point that calibration does not change
        (per channel along ``spec.axis`` when ``scale`` has several values)."""
        quantizer = cls(spec, role)
        quantizer.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone()
        quantizer.zero_point = torch.as_tensor(zero_point, dtype=torch.float32).reshape(
            -1).clone()
        quantizer.frozen = True
        return quantizer

    def start_observing(self) -> None:
        if self.frozen:
            return
        self.observing = True
        self._samples, self._running = [], None

    def finish_observing(self) -> None:
        """Freeze the range from everything observed since :meth:`start_observing`."""
        if self.frozen:
            return
        self.observing = False
        if self._running is None:
            raise KilnError(f"{self.role} quantizer saw no data during calibration",
                            hint="is the quantized layer reachable from the graph input?")
        if self.spec.range == "minmax" or self.spec.format != "int":
            lo, hi = self._running
        else:
            lo, hi = find_range(torch.cat(self._samples, dim=1), self.spec)
        self._set_range(lo, hi)
        self._samples, self._running = [], None

    def learn_scale(self) -> None:
        """Make the scale a trainable parameter (LSQ); the zero point stays fixed."""
        if self.spec.format != "int":
            raise KilnError(f"LSQ learns integer step sizes; this quantizer is {self.spec.format}")
        if not self.calibrated:
            raise KilnError("calibrate before learning the scale (LSQ needs a starting step)")
        scale = self.scale.detach().clone()
        del self.scale
        self.scale = nn.Parameter(scale)
        self.learned = True

    # --- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        if self.role != "activation" and not self.learned and not self.frozen:
            self._refresh_from(x)
        elif not self.calibrated:
            if is_probing_shapes():  # shapes are propagated before calibration
                return x
            raise KilnError(
                f"activation quantizer ({self.spec.describe()}) is not calibrated",
                hint="run kiln.quant.calibrate(graph, dataset) after quantize()")
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.format == "bfp":
            return fake_quant_bfp(x, spec, axis=-1 if x.dim() > 1 else 0)
        axis = spec.axis if spec.granularity == "channel" else 0
        scale = channel_view(self.scale, x, axis)
        if spec.format == "minifloat":
            return fake_quant_minifloat(x, spec, scale)
        zero_point = channel_view(self.zero_point, x, axis)
        if self.learned:
            return fake_quant_lsq(x, scale, zero_point, spec.qmin, spec.qmax)
        return fake_quant_int(x, scale, zero_point, spec.qmin, spec.qmax)

    # --- ranges ----------------------------------------------------------------------
    def _refresh_from(self, tensor: torch.Tensor) -> None:
        version = (tensor.data_ptr(), tensor._version)
        if version == self._cached_version and self.calibrated:
            return
        samples = as_channel_matrix(tensor, self.spec)
        self._set_range(*find_range(samples, self.spec))
        self._cached_version = version

    def _observe(self, x: torch.Tensor) -> None:
        samples = as_channel_matrix(x, self.spec)
        lo, hi = samples.amin(dim=1), samples.amax(dim=1)
        if self._running is None:
            self._running = (lo, hi)
        else:
            self._running = (torch.minimum(self._running[0], lo),
                             torch.maximum(self._running[1], hi))
        if self.spec.range != "minmax" and self.spec.format == "int":
            kept = sum(s.shape[1] for s in self._samples)
            if kept < MAX_SAMPLES:
                step = max(1, samples.shape[1] // 100_000)
                self._samples.append(samples[:, ::step].clone())

    def _set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.spec.format == "minifloat":
            bound = torch.maximum(lo.abs(), hi.abs())
            scale = torch.clamp(bound / self.spec.max_value, min=torch.finfo(torch.float32).tiny)
            zero_point = torch.zeros_like(scale)
        else:
            scale, zero_point = scale_and_zero_point(lo, hi, self.spec)
        self.scale = scale.detach().clone()
        self.zero_point = zero_point.detach().clone()
