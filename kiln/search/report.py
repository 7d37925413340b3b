"""A study's results as files: trials (JSON, CSV), plots (PNG) and a Markdown summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from kiln.report.markdown import format_size, write_text
from kiln.report.plots import save_figure
from kiln.search.results import SearchResult

LABELS = {
    "size": "size (bytes)",
    "bits": "average weight bits",
    "accuracy": "accuracy",
    "accuracy_drop": "accuracy drop (points)",
    "latency": "latency (cycles)",
    "energy": "energy (pJ)",
}


def format_metric(name: str, value: float) -> str:
    """A metric with its unit, as a person reads it: 106,848 bytes is '104.3 KiB'."""
    if name == "size":
        return format_size(value)
    if name == "accuracy":
        return f"{value:.2%}"
    if name == "accuracy_drop":
        return f"{value:+.2f} points"
    if name == "bits":
        return f"{value:.2f} bits"
    if name == "latency":
        return f"{value:,.0f} cycles"
    if name == "energy":
        return f"{value / 1e6:,.3f} µJ" if value >= 1e6 else f"{value:,.0f} pJ"
    return f"{value:.5g}"


def best_table(result: SearchResult) -> tuple[list[str], list[list[str]]]:
    """The best configuration(s) as (columns, rows): the objectives with units, accuracy
    once (also when it is an objective), the parameters."""
    shown = list(result.objectives) + ([] if "accuracy" in result.objectives else ["accuracy"])
    columns = ["trial", *(LABELS.get(name, name) for name in shown), "parameters"]
    rows = [[str(t["number"]), *(format_metric(name, t["metrics"][name]) for name in shown),
             " ".join(f"{k}={v}" for k, v in t["params"].items())] for t in result.best]
    return columns, rows


def write_report(
    result: SearchResult, out: Path, extra_points: dict[str, dict[str, float]] | None = None
) -> list[Path]:
    """Write trials.json, trials.csv, plots and summary.md into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    trials_json = out / "trials.json"
    write_text(trials_json, json.dumps(result.as_dict(), indent=1))
    paths.append(trials_json)
    complete = [t for t in result.trials if t["state"] == "COMPLETE" and t["metrics"]]
    if complete:
        param_names = sorted({k for t in complete for k in t["params"]})
        metric_names = sorted({k for t in complete for k in t["metrics"]})
        trials_csv = out / "trials.csv"
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["number", "feasible", *param_names, *metric_names])
        for t in complete:
            writer.writerow([t["number"], t["feasible"],
                             *(t["params"].get(p) for p in param_names),
                             *(t["metrics"].get(m) for m in metric_names)])
        # Atomic: processes of one search on one machine write the same report folder.
        write_text(trials_csv, table.getvalue())
        paths.append(trials_csv)
        pairs = [("size", "accuracy")]
        if "latency" in complete[0]["metrics"]:
            pairs += [("latency", "accuracy"), ("energy", "accuracy")]
        first, second = (result.objectives + [None])[:2]
        if second is not None and (first, second) not in pairs and (second, first) not in pairs:
            pairs.insert(0, (first, second))
        for x, y in pairs:
            paths.append(_scatter(result, complete, x, y, out / f"{y}_vs_{x}.png", extra_points))
    summary = out / "summary.md"
    write_text(summary, markdown_summary(result))
    paths.append(summary)
    return paths


def _scatter(
    result: SearchResult,
    complete: list[dict],
    x: str,
    y: str,
    path: Path,
    extra_points: dict[str, dict[str, float]] | None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    feasible = [t for t in complete if t["feasible"]]
    infeasible = [t for t in complete if not t["feasible"]]
    for group, label, style in (
        (feasible, "feasible trials", "o"),
        (infeasible, "infeasible", "x"),
    ):
        if group:
            axes.scatter(
                [t["metrics"][x] for t in group],
                [t["metrics"][y] for t in group],
                marker=style,
                s=18,
                alpha=0.6,
                label=label,
            )
    best = sorted(result.best, key=lambda t: t["metrics"][x])
    if best:
        axes.plot(
            [t["metrics"][x] for t in best],
            [t["metrics"][y] for t in best],
            "r-o",
            markersize=5,
            label="best / Pareto front",
        )
    for name, metrics in (extra_points or {}).items():
        if x in metrics and y in metrics:
            axes.scatter([metrics[x]], [metrics[y]], marker="*", s=140, label=name, zorder=5)
    axes.set_xlabel(LABELS.get(x, x))
    axes.set_ylabel(LABELS.get(y, y))
    axes.set_title(f"{result.study}: {len(complete)} trials")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path


def _directed(result: SearchResult) -> list[str]:
    return [f"{d} {o}" for o, d in zip(result.objectives, result.directions, strict=True)]


def markdown_summary(result: SearchResult) -> str:
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    summary = result.as_dict()
    lines = [
        f"# Search `{result.study}`",
        "",
        f"Objectives: {', '.join(_directed(result))}. "
        f"Model evaluations: {result.evaluations:g} over {len(result.trials)} trials "
        f"({summary['reused_trials']} reused a stored result, {summary['pruned_trials']} "
        f"pruned at low fidelity); finished trials: {len(complete)} "
        f"({sum(t['feasible'] for t in complete)} feasible)"
        + (f"; every one of the {result.space_size} configurations is known"
           if result.exhausted else "")
        + f". Baseline ({result.baseline}) accuracy on the validation half: "
          f"{result.baseline_accuracy:.2%}.",
        "",
    ]
    if result.best:
        columns, rows = best_table(result)
        lines += [
            "## Best feasible configuration" + ("s (Pareto front)" if len(result.best) > 1 else ""),
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if result.holdout_accuracy is not None:
            lines += [
                "",
                f"Accuracy of the first on the held-out half (never seen by the search): "
                f"{result.holdout_accuracy:.2%}.",
            ]
    else:
        lines += ["## No configuration meets the constraints", ""]
        if result.best_infeasible:
            t = result.best_infeasible
            lines.append(
                f"Closest: trial {t['number']}, constraint excess {t['constraints']}, "
                f"metrics {json.dumps(t['metrics'])}."
            )
    if result.files:
        lines += ["", "Files: " + ", ".join(f"`{f}`" for f in result.files)]
    return "\n".join(lines) + "\n"
