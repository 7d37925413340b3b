"""PNG plots (matplotlib, imported lazily, drawn off-screen)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def save_figure(figure, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` whole or not at all: through a temporary file
    of this process's own, so that processes writing one report folder (search workers on
    one machine) never collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.png")
    try:
        figure.savefig(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def line_plot(path: Path, series: dict[str, tuple[list[float], list[float]]], *, title: str,
              xlabel: str, ylabel: str, baseline: float | None = None,
              logx: bool = False) -> Path:
    """One line per series name -> (xs, ys); an optional horizontal baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    if baseline is not None:
        axes.axhline(baseline, color="gray", linestyle="--", label="float baseline")
    if logx:
        axes.set_xscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path
