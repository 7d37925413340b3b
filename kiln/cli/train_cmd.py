"""``kiln train`` and ``kiln evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import (
    INPUT_SCALE_HELP,
    INPUT_SHAPE_HELP,
    MODEL_HELP,
    WEIGHTS_HELP,
    check_out_file,
    console,
    print_json,
    progress,
    table,
)


def train(
    model: Annotated[str, typer.Argument(help="Zoo name (or a .pt checkpoint to fine-tune).")],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Dataset (default: the model's own, see 'kiln models').")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 3,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine-annealed).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for weights and shuffling.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Checkpoint to write (.pt, with a .json of its metrics beside it).")] = None,
    channels: Annotated[Path | None, typer.Option(
        help="YAML of per-layer width multipliers, 'multipliers: {layer: 2.0, ...}' (what "
             "kiln search writes as best_channels.yaml): scale those layers, then train "
             "from fresh weights.")] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Train MODEL on a dataset, report test accuracy, and save a checkpoint.

    Examples:

      kiln train convnet --data fashion-mnist --epochs 3 --out convnet.pt

      kiln train jsc-three-linear --data letter --channels best_channels.yaml --out wide.pt
    """
    from kiln.data import load_dataset
    from kiln.errors import ConfigError
    from kiln.models import fit, model_spec, resolve_model, save_checkpoint
    from kiln.models.arguments import load_model_argument
    from kiln.models.registry import MODELS

    if out is not None:
        check_out_file(out)
        if out.suffix != ".pt":
            raise ConfigError(f"--out {out}: checkpoints end in .pt")
    # A zoo model is shaped for the dataset it trains on (its head follows the dataset's
    # classes), also for its default dataset: jsc-tiny has 5 outputs, letter 26 classes.
    default = data or (model_spec(model).dataset if model in MODELS else None)
    if model in MODELS and input_shape is None:
        graph, info = resolve_model(model, dataset=default)
    else:
        graph, info = load_model_argument(model, data=default, input_shape=input_shape,
                                          weights=weights, pretrained=False)
    dataset_name = default or info.dataset
    if dataset_name is None:
        raise ConfigError(f"model '{model}' has no default dataset: pass --data")
    if channels is not None:
        from kiln.models.artifacts import channels_step
        from kiln.prune.scale import scale_channels
        from kiln.strict_yaml import load_layer_numbers

        factors = load_layer_numbers(channels, "multipliers")
        graph = scale_channels(graph, factors, seed=seed)
        info.recipe = {**(info.recipe or {}),
                       "steps": [*(info.recipe or {}).get("steps", []), channels_step(factors)]}
    dataset = load_dataset(dataset_name)
    batches = -(-len(dataset.x_train) // batch_size)
    with progress(quiet=as_json) as bar:
        task = bar.add_task(f"train {info.name}", total=epochs * batches, status="")

        def on_batch(epoch: int, batch: int, loss: float) -> None:
            bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}")

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            bar.update(task, status=f"epoch {epoch + 1}: test acc {accuracy:.2%}")

        result = fit(graph, dataset, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                     on_batch=on_batch, on_epoch=on_epoch)
    metrics = {"test_accuracy": result.final_accuracy, "epochs": epochs, "lr": lr,
               "batch_size": batch_size, "seed": seed}
    if out is not None and info.recipe and info.recipe["base"]["kind"] == "zoo" and \
            not info.recipe["steps"] and info.name in MODELS:
        save_checkpoint(graph, out, model=info.name, dataset=dataset_name, metrics=metrics)
    elif out is not None:  # an ONNX file, your own module, a compressed model file
        from kiln.models.artifacts import save_model

        save_model(graph, out, info.recipe or {}, dataset=dataset_name,
                   input_scale=info.input_scale, metrics=metrics)
    summary = {"model": info.name, "dataset": dataset_name, **result.as_dict(),
               "checkpoint": str(out) if out else None}
    if as_json:
        print_json(summary)
        return
    console.print(table(
        f"{info.name} on {dataset_name}", ["epoch", "train loss", "test accuracy"],
        [[i + 1, f"{loss:.4f}", f"{acc:.2%}"]
         for i, (loss, acc) in enumerate(zip(result.train_loss, result.test_accuracy,
                                             strict=True))],
        right_align={"epoch", "train loss", "test accuracy"}))
    console.print(f"test accuracy [bold]{result.final_accuracy:.2%}[/] after {epochs} epochs "
                  f"in {result.seconds:.1f} s" + (f"; checkpoint {out}" if out else ""))


def evaluate(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    split: Annotated[str, typer.Option(
        help="train, test, or all (both: for a model trained elsewhere).")] = "test",
    input_scale: Annotated[float | None, typer.Option(help=INPUT_SCALE_HELP)] = None,
    pretrained: Annotated[bool, typer.Option(
        help="For a zoo name, use kiln's shipped checkpoint.")] = True,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Top-1 accuracy of MODEL on a dataset split.

    Examples:

      kiln evaluate convnet                       (the shipped checkpoint)

      kiln evaluate model.onnx --data mnist-5k --input-scale 255
    """
    from kiln.models import evaluate as evaluate_model
    from kiln.models.arguments import load_model_argument, model_dataset

    graph, info = load_model_argument(model, data=data, input_shape=input_shape,
                                      weights=weights, pretrained=pretrained)
    dataset, _ = model_dataset(info, data, input_scale)
    dataset_name = dataset.name
    accuracy = evaluate_model(graph, dataset, split=split)
    result = {"model": info.name, "dataset": dataset_name, "split": split,
              "samples": len(dataset.arrays(split)[1]), "accuracy": accuracy}
    if as_json:
        print_json(result)
    else:
        console.print(f"{info.name} on {dataset_name} ({split}, {result['samples']:,} samples): "
                      f"accuracy [bold]{accuracy:.2%}[/]")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
