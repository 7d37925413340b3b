"""Range setting: which [lo, hi] a tensor is clipped to before quantization.

Every method works on a [C, N] matrix of samples (C = 1 per tensor, one row per channel)
and returns ``lo`` and ``hi`` of shape [C]:

* ``minmax``: the full observed range;
* ``percentile``: the given percentile of |x| (symmetric) or of each tail;
* ``mse``: the clipping ratio of the full range (searched on a grid) that minimizes the
  mean squared quantization error;
* ``entropy``: the threshold that minimizes the KL divergence between the histogram of
  |x| and its quantized version (the calibration used by TensorRT), over the non-zero
  values (zeros are exact at any threshold) and, for a tensor that is never negative,
  into all of the levels.
"""

from __future__ import annotations

import torch

from kiln.quant.functional import fake_quant_int, scale_and_zero_point
from kiln.quant.spec import QuantSpec

MSE_GRID = torch.linspace(0.05, 1.0, 96)


def as_channel_matrix(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """[C, N] view of ``x`` (channels along ``spec.axis`` when per-channel)."""
    x = x.detach().float()
    if spec.granularity == "channel" and x.dim() > 0:
        return x.movedim(spec.axis % x.dim(), 0).reshape(x.shape[spec.axis % x.dim()], -1)
    return x.reshape(1, -1)


def find_range(samples: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``lo``, ``hi`` per row of ``samples`` [C, N] by the spec's range method."""
    lo = samples.amin(dim=1)
    hi = samples.amax(dim=1)
    if spec.range == "minmax" or spec.format != "int":
        return lo, hi
    if spec.range == "percentile":
        return _percentile(samples, spec)
    if spec.range == "mse":
        return _mse(samples, lo, hi, spec)
    return _entropy(samples, lo, hi, spec)


def _quantile(samples: torch.Tensor, q: float) -> torch.Tensor:
    # torch.quantile refuses more than 2^24 elements per row: subsample evenly.
    if samples.shape[1] > 4_000_000:
        samples = samples[:, :: samples.shape[1] // 4_000_000 + 1]
    return torch.quantile(samples, q, dim=1)


def _percentile(samples: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    fraction = spec.percentile / 100.0
    if spec.symmetric:
        bound = _quantile(samples.abs(), fraction)
        return -bound, bound
    return _quantile(samples, 1.0 - fraction), _quantile(samples, fraction)


def _mse(samples: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec
         ) -> tuple[torch.Tensor, torch.Tensor]:
    if samples.shape[1] > 200_000:  # the error estimate needs no more
        samples = samples[:, :: samples.shape[1] // 200_000 + 1]
    best_error = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for ratio in MSE_GRID:
        trial_lo, trial_hi = lo * ratio, hi * ratio
        scale, zero_point = scale_and_zero_point(trial_lo, trial_hi, spec)
        error = (fake_quant_int(samples, scale[:, None], zero_point[:, None], spec.qmin,
                                spec.qmax) - samples).square().mean(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_lo = torch.where(better, trial_lo, best_lo)
        best_hi = torch.where(better, trial_hi, best_hi)
    return best_lo, best_hi


def entropy_levels(spec: QuantSpec, non_negative: bool) -> int:
    """Quantized magnitude bins the KL search merges the histogram into: every level for a
    tensor that never goes below zero (after a ReLU: [0, t] takes all of them), half of
    them (one side) otherwise."""
    if spec.symmetric:
        return max(spec.qmax + 1, 2)
    if non_negative:
        return max(spec.qmax - spec.qmin + 1, 2)
    return max((spec.qmax - spec.qmin + 1) // 2, 2)


def _entropy(samples: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec,
             bins: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    thresholds = []
    for row, row_lo in zip(samples, lo, strict=True):
        # Exact zeros (most of a tensor after a ReLU) are quantized without error whatever
        # the threshold: left in, their spike makes the divergence of a tiny range small.
        magnitudes = row.abs()
        magnitudes = magnitudes[magnitudes > 0]
        levels = entropy_levels(spec, non_negative=bool(row_lo >= 0))
        thresholds.append(_kl_threshold(magnitudes, max(bins, 16 * levels), levels))
    bound = torch.stack(thresholds)
    if spec.symmetric:
        return -bound, bound
    # Asymmetric: clip each side at the threshold, never beyond the observed range.
    return torch.maximum(lo, -bound), torch.minimum(hi, bound)


def _kl_threshold(magnitudes: torch.Tensor, bins: int, levels: int) -> torch.Tensor:
    peak = float(magnitudes.max()) if magnitudes.numel() else 0.0
    if peak == 0.0:
        return torch.tensor(0.0)
    histogram = torch.histc(magnitudes, bins=bins, min=0.0, max=peak).double()
    width = peak / bins
    best_divergence, best_bin = float("inf"), bins
    for stop in range(levels, bins + 1, max(1, (bins - levels) // 128)):
        reference = histogram[:stop].clone()
        reference[stop - 1] += histogram[stop:].sum()  # clipped mass lands in the last bin
        # Merge ``stop`` bins into ``levels`` quantized bins, spread back over non-empty ones.
        edges = torch.linspace(0, stop, levels + 1).round().long()
        candidate = torch.zeros(stop, dtype=torch.float64)
        for i in range(levels):
            a, b = int(edges[i]), int(edges[i + 1])
            if b <= a:
                continue
            chunk = histogram[a:b]
            nonzero = chunk > 0
            count = int(nonzero.sum())
            if count:
                candidate[a:b][nonzero] = chunk.sum() / count
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-30)
        mask = p > 0
        divergence = float((p[mask] * torch.log(p[mask] / torch.clamp(q[mask], min=1e-12))).sum())
        if divergence < best_divergence:
            best_divergence, best_bin = divergence, stop
    return torch.tensor(best_bin * width, dtype=torch.float32)
