"""The compression experiments behind ``kiln experiment quantization|pruning``.

Each returns its results as a dict and writes ``<name>.md`` (tables), PNG plots and
``<name>.json`` into the output folder. They start from a trained graph and never change
it: every configuration is a pass applied to a fresh copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.data import Dataset
from kiln.graph.core import Graph
from kiln.passes.size import model_size
from kiln.prune import apply_masks, prune_channels, prune_filters, shrink
from kiln.quant import calibrate, qat, quantize
from kiln.report.markdown import markdown_table, percent, write_text
from kiln.report.plots import line_plot
from kiln.training import evaluate, fit

Step = Callable[[str], None]


def _no_step(_: str) -> None:
    pass


@dataclass(frozen=True)
class ExperimentSettings:
    """Knobs of the experiments; the defaults are what the closing notes report."""

    calibration_batches: int = 8
    qat_epochs: int = 2
    finetune_epochs: int = 2
    fractions: tuple[float, ...] = (0.25, 0.5, 0.625, 0.75, 0.875)
    joint_bits: tuple[int, ...] = (8, 6, 4, 3)
    accuracy_targets: tuple[float, ...] = (0.80, 0.85, 0.90)
    keep_accuracy: float = 0.85
    seed: int = 0


def _weight_config(bits: int, *, symmetric: bool, clipped: bool, per_channel: bool
                   ) -> dict[str, Any]:
    spec = {"bits": bits, "symmetric": symmetric, "signed": True,
            "range": "mse" if clipped else "minmax",
            "granularity": "channel" if per_channel else "tensor"}
    return {"default": {"weight": spec}}


def _activation_spec(bits: int) -> dict[str, Any]:
    return {"bits": bits, "signed": False, "symmetric": False, "range": "minmax"}


def _wa_config(weight_bits: int, activation_bits: int, *, weight_symmetric: bool = False,
               per_channel: bool = False) -> dict[str, Any]:
    weight = {"bits": weight_bits, "symmetric": weight_symmetric,
              "granularity": "channel" if per_channel else "tensor"}
    activation = _activation_spec(activation_bits)
    return {"default": {"weight": weight, "input": activation},
            "rules": [{"match": {"name": ["@last"]}, "output": {**activation, "signed": True}}]}


def quantization_experiment(graph: Graph, dataset: Dataset, out: Path, *,
                            settings: ExperimentSettings = ExperimentSettings(),
                            step: Step = _no_step) -> dict[str, Any]:
    """Weight-only PTQ grid, weights+activations, int8 calibrated, and W4A8 QAT."""
    baseline = evaluate(graph, dataset)
    results: dict[str, Any] = {"model": graph.name, "dataset": dataset.name,
                               "float_accuracy": baseline}

    weight_only = []
    for bits in (4, 8, 12, 16):
        for symmetric in (True, False):
            for clipped in (False, True):
                for per_channel in (False, True):
                    step(f"weight-only int{bits}")
                    config = _weight_config(bits, symmetric=symmetric, clipped=clipped,
                                            per_channel=per_channel)
                    accuracy = evaluate(quantize(graph, config), dataset)
                    weight_only.append({"bits": bits,
                                        "scheme": "symmetric" if symmetric else "asymmetric",
                                        "range": "clipped (MSE)" if clipped else "full",
                                        "granularity": "per-channel" if per_channel
                                        else "per-tensor", "accuracy": accuracy})
    results["weight_only"] = weight_only

    range_methods = []
    for method in ("minmax", "percentile", "mse", "entropy"):
        step(f"4-bit range {method}")
        config = {"default": {"weight": {"bits": 4, "range": method, "granularity": "tensor"}}}
        range_methods.append({"range": method,
                              "accuracy": evaluate(quantize(graph, config), dataset)})
    results["range_methods_4bit_per_tensor"] = range_methods

    weights_and_activations = []
    for bits in (4, 6, 8, 12, 16):
        step(f"W{bits}A{bits}")
        wa = calibrate(quantize(graph, _wa_config(bits, bits)), dataset,
                       batches=settings.calibration_batches, seed=settings.seed)
        wonly = quantize(graph, {"default": {"weight": {"bits": bits, "symmetric": False}}})
        weights_and_activations.append({"bits": bits, "weight_only": evaluate(wonly, dataset),
                                         "weights_and_activations": evaluate(wa, dataset)})
    results["weights_and_activations"] = weights_and_activations

    step("int8 per-channel calibrated")
    int8 = calibrate(quantize(graph, _wa_config(8, 8, weight_symmetric=True, per_channel=True)),
                     dataset, batches=settings.calibration_batches, seed=settings.seed)
    int8_accuracy = evaluate(int8, dataset)
    results["int8"] = {"accuracy": int8_accuracy, "drop_points": 100 * (baseline - int8_accuracy),
                       "size_bytes": model_size(int8).total_bytes}

    w4a8 = calibrate(quantize(graph, _wa_config(4, 8, weight_symmetric=True, per_channel=True)),
                     dataset, batches=settings.calibration_batches, seed=settings.seed)
    qat_rows = [{"method": "PTQ (no training)", "accuracy": evaluate(w4a8, dataset)}]
    for method in ("ste", "lsq"):
        step(f"W4A8 QAT {method}")
        _, trained = qat(w4a8, dataset, method=method, epochs=settings.qat_epochs,
                         seed=settings.seed)
        qat_rows.append({"method": f"QAT {method.upper()} ({settings.qat_epochs} epochs)",
                         "accuracy": trained.final_accuracy})
    for row in qat_rows:
        row["drop_points"] = 100 * (baseline - row["accuracy"])
    results["w4a8_qat"] = qat_rows
    _write_quantization_report(results, out)
    return results


def _write_quantization_report(results: dict[str, Any], out: Path) -> None:
    baseline = results["float_accuracy"]
    lines = [f"# Quantization of `{results['model']}` on {results['dataset']}", "",
             f"Float baseline: **{percent(baseline)}** test accuracy.", "",
             "## Weight-only post-training quantization", ""]
    rows = results["weight_only"]
    columns = ["bits", "scheme", "range", "per-tensor", "per-channel"]
    table = []
    for row in rows:
        if row["granularity"] == "per-tensor":
            partner = next(r for r in rows if r["bits"] == row["bits"] and
                           r["scheme"] == row["scheme"] and r["range"] == row["range"] and
                           r["granularity"] == "per-channel")
            table.append([row["bits"], row["scheme"], row["range"], percent(row["accuracy"]),
                          percent(partner["accuracy"])])
    lines += [markdown_table(columns, table), ""]
    lines += ["Range methods at 4 bits, symmetric, per-tensor:", "",
              markdown_table(["range", "accuracy"],
                             [[r["range"], percent(r["accuracy"])]
                              for r in results["range_methods_4bit_per_tensor"]]), ""]
    lines += ["## Weights and activations (asymmetric, full range, per-tensor)", "",
              markdown_table(["bits", "weight-only", "weights + activations"],
                             [[r["bits"], percent(r["weight_only"]),
                               percent(r["weights_and_activations"])]
                              for r in results["weights_and_activations"]]), ""]
    int8 = results["int8"]
    lines += ["## int8 weights (per-channel) and activations, calibrated", "",
              f"Accuracy {percent(int8['accuracy'])}: a drop of {int8['drop_points']:.2f} "
              f"points from float; {int8['size_bytes'] / 1024:.1f} KiB of parameters.", "",
              "## 4-bit weights, 8-bit activations, quantization-aware training", "",
              markdown_table(["method", "accuracy", "drop (points)"],
                             [[r["method"], percent(r["accuracy"]), f"{r['drop_points']:.2f}"]
                              for r in results["w4a8_qat"]]), "",
              "![weight-only accuracy](weight_only.png)", ""]
    series = {}
    for scheme in ("symmetric", "asymmetric"):
        for range_name in ("full", "clipped (MSE)"):
            for granularity in ("per-tensor", "per-channel"):
                points = [r for r in rows if r["scheme"] == scheme and r["range"] == range_name
                          and r["granularity"] == granularity]
                series[f"{scheme}, {range_name}, {granularity}"] = (
                    [p["bits"] for p in points], [100 * p["accuracy"] for p in points])
    line_plot(out / "weight_only.png", series, title=f"{results['model']}: weight-only PTQ",
              xlabel="weight bits", ylabel="test accuracy (%)", baseline=100 * baseline)
    write_text(out / "quantization.md", "\n".join(lines))
    write_text(out / "quantization.json", json.dumps(results, indent=2) + "\n")


def _finetune(graph: Graph, dataset: Dataset, epochs: int, seed: int) -> float:
    if epochs == 0:
        return evaluate(graph, dataset)
    return fit(graph, dataset, epochs=epochs, lr=1e-3, seed=seed,
               after_step=apply_masks).final_accuracy


def pruning_experiment(graph: Graph, dataset: Dataset, out: Path, *,
                       settings: ExperimentSettings = ExperimentSettings(),
                       step: Step = _no_step) -> dict[str, Any]:
    """Filter- and channel-wise pruning (fine-tuned, shrunk), then pruning + quantization."""
    baseline = evaluate(graph, dataset)
    float_size = model_size(graph).total_bytes
    results: dict[str, Any] = {"model": graph.name, "dataset": dataset.name,
                               "float_accuracy": baseline, "float_bytes": float_size,
                               "fractions": list(settings.fractions), "structured": []}
    shrunk_models: list[tuple[str, float, Graph]] = []
    for method, prune in (("filters", prune_filters), ("channels", prune_channels)):
        for fraction in settings.fractions:
            step(f"prune {method} {fraction:.3f}")
            pruned = prune(graph, fraction=fraction, norm="l1", scope="layer")
            accuracy = _finetune(pruned, dataset, settings.finetune_epochs, settings.seed)
            small = shrink(pruned)
            shrunk_models.append((method, fraction, small))
            results["structured"].append({
                "method": method, "fraction": fraction, "params": small.total_params,
                "bytes": model_size(small).total_bytes, "accuracy": accuracy,
                "shrunk_accuracy": evaluate(small, dataset)})

    joint = []
    for method, fraction, small in [(None, 0.0, graph)] + shrunk_models:
        for bits in settings.joint_bits:
            step(f"joint {method or 'none'} {fraction:.3f} int{bits}")
            config = {"default": {"weight": {"bits": bits, "granularity": "channel",
                                             "range": "mse"}}}
            quantized = quantize(small, config)
            accuracy = evaluate(quantized, dataset)
            if bits <= 4 and settings.qat_epochs:
                quantized, trained = qat(quantized, dataset, epochs=1, seed=settings.seed)
                accuracy = trained.final_accuracy
            joint.append({"method": method or "none", "fraction": fraction, "bits": bits,
                          "bytes": model_size(quantized).total_bytes, "accuracy": accuracy})
    results["joint"] = joint
    results["joint_bits"] = list(settings.joint_bits)
    results["targets"] = _smallest_per_target(joint, settings.accuracy_targets)
    results["keep_accuracy"] = settings.keep_accuracy
    _write_pruning_report(results, out)
    return results


def _smallest_per_target(rows: list[dict[str, Any]], targets: tuple[float, ...]
                         ) -> list[dict[str, Any]]:
    found = []
    for target in targets:
        meeting = [r for r in rows if r["accuracy"] >= target]
        if meeting:
            best = min(meeting, key=lambda r: r["bytes"])
            found.append({"target": target, "reached": True, **best})
        else:
            closest = max(rows, key=lambda r: r["accuracy"])
            found.append({"target": target, "reached": False, **closest})
    return found


def _efficiency(rows: list[dict[str, Any]], baseline: float, float_bytes: float) -> float:
    """Best bytes saved per point of accuracy lost (higher is better)."""
    best = 0.0
    for row in rows:
        drop = max(100 * (baseline - row["accuracy"]), 0.05)
        best = max(best, (float_bytes - row["bytes"]) / drop)
    return best


def _write_pruning_report(results: dict[str, Any], out: Path) -> None:
    baseline, float_bytes = results["float_accuracy"], results["float_bytes"]
    keep = results["keep_accuracy"]
    lines = [f"# Pruning of `{results['model']}` on {results['dataset']}", "",
             f"Float baseline: {percent(baseline)}, {float_bytes / 1024:.1f} KiB (float32).", "",
             "Targets: L1-norm structured pruning per layer at a fixed grid of fractions "
             f"{results['fractions']} of each layer's filters (or input channels); each "
             "pruned model is fine-tuned with its masks, then shrunk (pruned filters and "
             "channels physically removed).", "",
             "## Structured pruning (float32 weights)", "",
             markdown_table(["method", "fraction", "params", "KiB", "accuracy (masked)",
                             "accuracy (shrunk)"],
                            [[r["method"], r["fraction"], f"{r['params']:,}",
                              f"{r['bytes'] / 1024:.1f}", percent(r["accuracy"]),
                              percent(r["shrunk_accuracy"])] for r in results["structured"]]),
             ""]
    for method in ("filters", "channels"):
        passing = [r for r in results["structured"] if r["method"] == method and
                   r["shrunk_accuracy"] > keep]
        if passing:
            best = min(passing, key=lambda r: r["bytes"])
            lines.append(f"- Smallest {method}-pruned model above {percent(keep)}: "
                         f"{best['bytes'] / 1024:.1f} KiB ({best['params']:,} params, fraction "
                         f"{best['fraction']}), {percent(best['shrunk_accuracy'])}.")
        else:
            lines.append(f"- No {method}-pruned model stays above {percent(keep)}.")
    structured_rows = [{"bytes": r["bytes"], "accuracy": r["shrunk_accuracy"]}
                       for r in results["structured"]]
    quant_rows = [r for r in results["joint"] if r["method"] == "none"]
    pruning_eff = _efficiency(structured_rows, baseline, float_bytes)
    quant_eff = _efficiency(quant_rows, baseline, float_bytes)
    winner = "quantization" if quant_eff > pruning_eff else "pruning"
    results["bytes_saved_per_point"] = {"pruning": pruning_eff, "quantization": quant_eff,
                                        "winner": winner}
    lines += ["", "## Pruning and quantization together", "",
              "Each shrunk model (and the unpruned one) with per-channel MSE-clipped weights at "
              f"{results['joint_bits']} bits (one epoch of QAT at 4 bits and below).", "",
              markdown_table(["accuracy target", "reached", "smallest KiB", "accuracy",
                              "pruning", "bits"],
                             [[percent(t["target"]), "yes" if t["reached"] else
                               "no (closest shown)", f"{t['bytes'] / 1024:.2f}",
                               percent(t["accuracy"]), f"{t['method']} {t['fraction']}",
                               t["bits"]] for t in results["targets"]]), "",
              f"Bytes saved per point of accuracy lost (best configuration of each): pruning "
              f"alone {pruning_eff:,.0f}, quantization alone {quant_eff:,.0f}: **{winner}** "
              "buys more size per point.", "", "![size vs accuracy](size_vs_accuracy.png)", ""]
    series = {}
    for method in ("none", "filters", "channels"):
        for bits in sorted({r["bits"] for r in results["joint"]}):
            points = sorted((r["bytes"] / 1024, 100 * r["accuracy"]) for r in results["joint"]
                            if r["method"] == method and r["bits"] == bits)
            if points:
                series[f"{method} pruning, int{bits}"] = ([p[0] for p in points],
                                                          [p[1] for p in points])
    series["structured, float32"] = (
        [r["bytes"] / 1024 for r in results["structured"]],
        [100 * r["shrunk_accuracy"] for r in results["structured"]])
    line_plot(out / "size_vs_accuracy.png", series, title=f"{results['model']}: size vs accuracy",
              xlabel="model size (KiB, log)", ylabel="test accuracy (%)",
              baseline=100 * baseline, logx=True)
    write_text(out / "pruning.md", "\n".join(lines))
    write_text(out / "pruning.json", json.dumps(results, indent=2) + "\n")
