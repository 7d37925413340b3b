"""``kiln quantize``, ``kiln qat``, ``kiln prune`` and ``kiln experiment``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import (
    INPUT_SCALE_HELP,
    INPUT_SHAPE_HELP,
    MODEL_HELP,
    WEIGHTS_HELP,
    check_out_file,
    check_out_folder,
    console,
    error_console,
    print_json,
    progress,
    table,
)
from kiln.report.markdown import format_size

experiment_app = typer.Typer(help="Compression experiments that write Markdown tables and PNG "
                                  "plots into --out.", no_args_is_help=True)


def _load(model: str, data: str | None, input_shape: str | None = None, weights=None,
          input_scale: float | None = None):
    """(graph, info, dataset scaled for the model, the scale)."""
    from kiln.models.arguments import load_model_argument, model_dataset

    graph, info = load_model_argument(model, data=data, input_shape=input_shape,
                                      weights=weights)
    dataset, scale = model_dataset(info, data, input_scale)
    return graph, info, dataset, scale


def _save(graph, info, out: Path | None, step: dict, dataset, scale: float,
          metrics: dict) -> str | None:
    """Write the compressed model as a model file the next command reads."""
    if out is None:
        return None
    from kiln.models.artifacts import save_model

    recipe = dict(info.recipe or {})
    recipe["steps"] = [*recipe.get("steps", []), step]
    save_model(graph, out, recipe, dataset=dataset.name, input_scale=scale, metrics=metrics)
    return str(out)


def _check_model_out(out: Path | None) -> None:
    if out is not None:
        from kiln.errors import ConfigError

        check_out_file(out)
        if out.suffix != ".pt":
            raise ConfigError(f"--out {out}: model files end in .pt")


RANGE_METHODS = ("minmax", "percentile", "mse", "entropy")
ACTIVATION_RANGE_HELP = ("Without --config: how activation ranges are calibrated: minmax, "
                         "percentile, mse or entropy. Default: mse below 8 bits, minmax at 8 "
                         "and above.")
WEIGHT_RANGE_HELP = ("Without --config: how weight ranges are set: minmax, percentile, mse "
                     "or entropy (default: mse below 8 bits, minmax at 8 and above).")


EQUALIZE_HELP = ("Without --config: equalize consecutive layers' channel ranges before "
                 "quantizing (cross-layer equalization; pays with per-tensor weights). A "
                 "config file says 'equalize = true'.")


def _config(config: Path | None, weight_bits: int | None, activation_bits: int | None,
            activation_range: str | None = None, weight_range: str | None = None,
            equalize: bool = False):
    from kiln.errors import ConfigError
    from kiln.quant import QuantConfig, uniform_config

    for flag, method in (("--activation-range", activation_range),
                         ("--weight-range", weight_range)):
        if method is not None and method not in RANGE_METHODS:
            raise ConfigError(f"{flag} '{method}': use one of {', '.join(RANGE_METHODS)}")
    if config is not None:
        if activation_range is not None or weight_range is not None or equalize:
            raise ConfigError("--activation-range, --weight-range and --equalize go with "
                              "--weight-bits / --activation-bits; a --config file names its "
                              "ranges itself ('range: mse' in a spec, 'equalize: true')")
        return QuantConfig.load(config)
    if weight_bits is None and activation_bits is None:
        raise ConfigError("give --config FILE, or --weight-bits / --activation-bits")
    return uniform_config(weight_bits, activation_bits,
                          weight={"range": weight_range} if weight_range else None,
                          activation={"range": activation_range} if activation_range else None,
                          equalize=equalize)


def _quant_rows(graph) -> list[list[str]]:
    from kiln.graph.metadata import COMPUTE_KINDS
    from kiln.passes import model_size

    sizes = {layer.name: layer for layer in model_size(graph).layers}
    quantizers = dict(graph.module.named_modules())
    rows = []
    for info in graph.layers():
        if info.op not in COMPUTE_KINDS:
            continue
        module = quantizers.get(info.attrs.get("module", ""))
        weight = getattr(module, "weight_quantizer", None)
        input_quant = quantizers.get(f"{info.name}_input_quant")
        size = sizes.get(info.attrs.get("module", ""))
        rows.append([info.name, info.op.value, weight.spec.describe() if weight else "float",
                     input_quant.spec.describe() if input_quant else "float",
                     f"{size.bytes:,.0f}" if size else ""])
    return rows


def quantize(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    config: Annotated[Path | None, typer.Option(
        help="Quantization config (.toml/.yaml/.json): default + rules.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    weight_bits: Annotated[int | None, typer.Option(
        help="Without --config: per-channel symmetric weights at this width.")] = None,
    activation_bits: Annotated[int | None, typer.Option(
        help="Without --config: asymmetric activations at this width.")] = None,
    activation_range: Annotated[str | None, typer.Option(help=ACTIVATION_RANGE_HELP)] = None,
    weight_range: Annotated[str | None, typer.Option(help=WEIGHT_RANGE_HELP)] = None,
    equalize: Annotated[bool, typer.Option(help=EQUALIZE_HELP)] = False,
    calibration_batches: Annotated[int, typer.Option(help="Batches of 256 to calibrate.")] = 8,
    bias_correction: Annotated[bool | None, typer.Option(
        "--bias-correction/--no-bias-correction",
        help="Subtract from each layer's bias the mean output shift its weight rounding "
             "causes (measured on the calibration data). Default: on when weights are "
             "narrower than 8 bits.")] = None,
    adaround: Annotated[bool, typer.Option(
        "--adaround", help="Learn each weight's rounding direction (AdaRound) on the "
        "calibration data so that each layer's output, not each weight, stays closest to "
        "float (about a minute on the convnet; replaces bias correction).")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Model file (.pt) to write: lower, map, qat, prune and emit-rtl read it.")
    ] = None,
    input_scale: Annotated[float | None, typer.Option(help=INPUT_SCALE_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Quantize MODEL (post-training) and report accuracy before/after, size, per layer.

    Examples:

      kiln quantize convnet --weight-bits 8 --activation-bits 8 --out convnet-int8.pt

      kiln quantize convnet --config examples/quant/w4a8.toml

      kiln quantize model.onnx --data mnist-5k --input-scale 255 --weight-bits 8
    """
    from kiln.models import evaluate
    from kiln.passes import model_size
    from kiln.quant import UnmatchedRuleWarning, calibrate
    from kiln.quant import quantize as quantize_graph
    from kiln.quant.ptq import refine_weights

    _check_model_out(out)
    graph, info, dataset, scale = _load(model, data, input_shape, weights, input_scale)
    quant_config = _config(config, weight_bits, activation_bits, activation_range,
                           weight_range, equalize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnmatchedRuleWarning)
        quantized = quantize_graph(graph, quant_config)
    unmatched = [str(w.message) for w in caught if issubclass(w.category, UnmatchedRuleWarning)]
    for message in unmatched:
        error_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
    quantized = calibrate(quantized, dataset, batches=calibration_batches)
    with progress(quiet=as_json or not adaround) as bar:
        if adaround:
            bar.add_task("AdaRound, layer by layer", total=None, status="")
        quantized, bias_correction = refine_weights(
            quantized, dataset, batches=calibration_batches, bias_correction=bias_correction,
            adaround=adaround)
    before, after = evaluate(graph, dataset), evaluate(quantized, dataset)
    size_before, size_after = model_size(graph).total_bytes, model_size(quantized).total_bytes
    result = {"model": info.name, "dataset": dataset.name, "float_accuracy": before,
              "quantized_accuracy": after, "drop_points": 100 * (before - after),
              "bias_correction": bias_correction, "equalize": quant_config.equalize,
              "adaround": adaround,
              "float_bytes": size_before, "quantized_bytes": size_after,
              "warnings": unmatched, "layers": _quant_rows(quantized)}
    from kiln.models.artifacts import quantize_step

    result["model_file"] = _save(quantized, info, out, quantize_step(quant_config), dataset,
                                 scale, {"accuracy": after})
    if as_json:
        print_json(result)
        return
    console.print(table(f"{info.name} quantized", ["layer", "op", "weights", "input", "bytes"],
                        result["layers"], right_align={"bytes"}))
    console.print(f"accuracy {before:.2%} → [bold]{after:.2%}[/] "
                  f"({_versus_float(result['drop_points'])}"
                  f"{', biases corrected' if bias_correction else ''}); size "
                  f"{format_size(size_before)} → {format_size(size_after)}")
    if out is not None:
        console.print(f"wrote {out}")


def qat(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    config: Annotated[Path | None, typer.Option(help="Quantization config file.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    weight_bits: Annotated[int | None, typer.Option(help="Without --config.")] = 4,
    activation_bits: Annotated[int | None, typer.Option(help="Without --config.")] = 8,
    activation_range: Annotated[str | None, typer.Option(help=ACTIVATION_RANGE_HELP)] = None,
    weight_range: Annotated[str | None, typer.Option(help=WEIGHT_RANGE_HELP)] = None,
    equalize: Annotated[bool, typer.Option(help=EQUALIZE_HELP)] = False,
    method: Annotated[str, typer.Option(
        help="lsq (learned step size, trained with the weights from the calibrated ranges) "
             "or ste (straight-through estimator, ranges as calibrated).")] = "lsq",
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 2,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Model file (.pt) to write: lower, map, prune and emit-rtl read it.")] = None,
    input_scale: Annotated[float | None, typer.Option(help=INPUT_SCALE_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Quantization-aware training: quantize, calibrate, correct biases (weights under 8
    bits), then fine-tune (STE or LSQ).

    Example:  kiln qat convnet --weight-bits 4 --activation-bits 8 --method lsq --out w4.pt
    """
    from kiln.models import evaluate
    from kiln.quant import calibrate
    from kiln.quant import qat as run_qat
    from kiln.quant import quantize as quantize_graph
    from kiln.quant.ptq import refine_weights

    _check_model_out(out)
    graph, info, dataset, scale = _load(model, data, input_shape, weights, input_scale)
    quant_config = _config(config, weight_bits, activation_bits, activation_range,
                           weight_range, equalize)
    # a better start for the fine-tuning: convnet W4A4 LSQ 91.58 / 91.45% -> 91.87 / 91.78%,
    # W2A2 88.28 / 88.54% -> 88.58 / 88.99% (seeds 0, 1; session 17)
    quantized, _ = refine_weights(calibrate(quantize_graph(graph, quant_config), dataset),
                                  dataset)
    before, ptq = evaluate(graph, dataset), evaluate(quantized, dataset)
    batches = -(-len(dataset.x_train) // 128)
    with progress(quiet=as_json) as bar:
        task = bar.add_task(f"QAT {method}", total=epochs * batches, status="")
        trained, result = run_qat(quantized, dataset, method=method, epochs=epochs, lr=lr,
                                  seed=seed, on_batch=lambda e, b, loss: bar.update(
                                      task, advance=1, status=f"loss {loss:.3f}"))
    summary = {"model": info.name, "dataset": dataset.name, "method": method,
               "float_accuracy": before, "ptq_accuracy": ptq,
               "qat_accuracy": result.final_accuracy,
               "drop_points": 100 * (before - result.final_accuracy)}
    from kiln.models.artifacts import quantize_step

    summary["model_file"] = _save(trained, info, out, quantize_step(quant_config), dataset,
                                  scale, {"accuracy": result.final_accuracy})
    if as_json:
        print_json(summary)
        return
    console.print(f"float {before:.2%}, PTQ {ptq:.2%}, after {epochs} epochs of QAT "
                  f"({method}) [bold]{result.final_accuracy:.2%}[/] "
                  f"({_versus_float(summary['drop_points'])})")
    if out is not None:
        console.print(f"wrote {out}")


def prune(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    method: Annotated[str, typer.Option(help="filters, channels or magnitude.")] = "filters",
    fraction: Annotated[float | None, typer.Option(help="Fraction to prune, in [0, 1).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Prune norms at or below.")] = None,
    norm: Annotated[str, typer.Option(help="l1 or l2 (structured).")] = "l1",
    scope: Annotated[str, typer.Option(help="layer or global.")] = "layer",
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning with masks.")] = 2,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Model file (.pt) to write: quantize, qat, lower and map read it.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML of per-layer fractions, 'fractions: {layer: 0.5, ...}' (what "
        "kiln search writes as best_pruning.yaml), instead of --fraction.")] = None,
    input_scale: Annotated[float | None, typer.Option(help=INPUT_SCALE_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Prune MODEL, fine-tune with masks, shrink (structured), report size and accuracy.

    Examples:

      kiln prune convnet --method filters --fraction 0.5 --finetune-epochs 2 --out half.pt

      kiln prune convnet --config out/search/convnet-prune-quant/best_pruning.yaml
    """
    from kiln.errors import ConfigError
    from kiln.models import evaluate, fit
    from kiln.passes import model_size
    from kiln.prune import apply_masks, prune_channels, prune_filters, prune_magnitude, shrink

    functions = {"filters": prune_filters, "channels": prune_channels,
                 "magnitude": prune_magnitude}
    if method not in functions:
        raise ConfigError(f"unknown pruning method '{method}': use {', '.join(functions)}")
    _check_model_out(out)
    graph, info, dataset, scale = _load(model, data, input_shape, weights, input_scale)
    options: dict = {"threshold": threshold, "scope": scope}
    if method != "magnitude":
        options["norm"] = norm
    if config is not None:
        pruned = _prune_per_layer(graph, functions[method], config, fraction, threshold,
                                  options)
    else:
        pruned = functions[method](graph, fraction=fraction, **options)
    if finetune_epochs:
        batches = -(-len(dataset.x_train) // 128)
        with progress(quiet=as_json) as bar:
            task = bar.add_task(f"fine-tune ({method})", total=finetune_epochs * batches,
                                status="")
            fit(pruned, dataset, epochs=finetune_epochs, lr=1e-3, seed=seed,
                after_step=apply_masks, on_batch=lambda e, b, loss: bar.update(
                    task, advance=1, status=f"epoch {e + 1} loss {loss:.3f}"))
    small = shrink(pruned) if method != "magnitude" else pruned
    sparse = "auto" if method == "magnitude" else "dense"
    summary = {"model": info.name, "method": method, "float_accuracy": evaluate(graph, dataset),
               "pruned_accuracy": evaluate(small, dataset), "params_before": graph.total_params,
               "params_after": small.total_params,
               "bytes_before": model_size(graph).total_bytes,
               "bytes_after": model_size(small, sparse_format=sparse).total_bytes}
    from kiln.models.artifacts import prune_step

    summary["model_file"] = _save(small, info, out,
                                  prune_step(pruned, shrunk=method != "magnitude"), dataset,
                                  scale, {"accuracy": summary["pruned_accuracy"]})
    if as_json:
        print_json(summary)
        return
    console.print(f"{info.name}: {summary['params_before']:,} → {summary['params_after']:,} "
                  f"params, {format_size(summary['bytes_before'])} → "
                  f"{format_size(summary['bytes_after'])}; accuracy "
                  f"{summary['float_accuracy']:.2%} → [bold]{summary['pruned_accuracy']:.2%}[/]")
    if out is not None:
        console.print(f"wrote {out}")


def _versus_float(drop_points: float) -> str:
    """A change of accuracy against the float model, in words with the right sign."""
    if abs(drop_points) < 0.005:
        return "equal to float"
    return f"{abs(drop_points):.2f} points {'below' if drop_points > 0 else 'above'} float"


def _prune_per_layer(graph, prune_function, config: Path, fraction: float | None,
                     threshold: float | None, options: dict):
    """Each layer of a fractions file pruned by its own fraction."""
    from kiln.errors import ConfigError, UnknownNameError
    from kiln.strict_yaml import load_layer_numbers

    if fraction is not None or threshold is not None:
        raise ConfigError("--config gives per-layer fractions: leave out --fraction and "
                          "--threshold")
    fractions = load_layer_numbers(config, "fractions")
    from kiln.graph.metadata import OpKind

    known = {info.name for info in graph.layers()
             if info.op in (OpKind.CONV, OpKind.CONV1D, OpKind.LINEAR)}
    unknown = sorted(set(fractions) - known)
    if unknown:
        raise UnknownNameError(f"{config}: no layers {unknown} in '{graph.name}'",
                               hint=f"its layers: {', '.join(sorted(known))}")
    pruned = graph
    for layer, layer_fraction in fractions.items():
        if layer_fraction > 0:
            pruned = prune_function(pruned, fraction=layer_fraction, layers=[layer],
                                    **{**options, "scope": "layer"})
    return pruned


def _run_experiment(kind: str, model: str, data: str | None, out: Path, quick: bool,
                    as_json: bool) -> None:
    from kiln.experiments.compression import (
        ExperimentSettings,
        pruning_experiment,
        quantization_experiment,
    )

    check_out_folder(out)
    graph, _, dataset, _ = _load(model, data)
    settings = ExperimentSettings()
    if quick:
        settings = ExperimentSettings(qat_epochs=1, finetune_epochs=1, fractions=(0.5, 0.75),
                                      joint_bits=(8, 4))
    steps = (32 + 4 + 5 + 1 + 2) if kind == "quantization" else (
        2 * len(settings.fractions) + (1 + 2 * len(settings.fractions)) *
        len(settings.joint_bits))
    runner = quantization_experiment if kind == "quantization" else pruning_experiment
    with progress(quiet=as_json) as bar:
        task = bar.add_task(f"{kind} experiment", total=steps, status="")
        results = runner(graph, dataset, out, settings=settings,
                         step=lambda label: bar.update(task, advance=1, status=label))
    if as_json:
        print_json(results)
    else:
        console.print((out / f"{kind}.md").read_text(), markup=False, highlight=False)
        console.print(f"wrote {out / f'{kind}.md'}, {out / f'{kind}.json'} and PNG plots")


@experiment_app.command("quantization")
def experiment_quantization(
    model: Annotated[str, typer.Option(help="Model (shipped checkpoint by default).")] = "convnet",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/quantization"),
    quick: Annotated[bool, typer.Option(help="Fewer epochs (for a fast look).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Weight-only PTQ grid, weights+activations, int8, and W4A8 QAT tables.

    Example:  kiln experiment quantization --model convnet --out out/quant
    """
    _run_experiment("quantization", model, data, out, quick, as_json)


@experiment_app.command("pruning")
def experiment_pruning(
    model: Annotated[str, typer.Option(help="Model (shipped checkpoint by default).")] = "convnet",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/pruning"),
    quick: Annotated[bool, typer.Option(help="Fewer fractions and epochs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Structured pruning (filters, channels) and pruning+quantization size tables.

    Example:  kiln experiment pruning --model convnet --out out/prune
    """
    _run_experiment("pruning", model, data, out, quick, as_json)


def register(app: typer.Typer) -> None:
    app.command()(quantize)
    app.command()(qat)
    app.command()(prune)
    app.add_typer(experiment_app, name="experiment")
