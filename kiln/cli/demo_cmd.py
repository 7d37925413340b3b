"""``kiln demo``: kiln's main job on the default model and dataset, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import console, human, print_json, progress, table

DEFAULT_MODEL = "convnet"
DEFAULT_DATASET = "fashion-mnist"


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the checkpoint and the summary.")] = Path(
        "out/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs for the fresh model.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for weights and shuffling.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Run the main job on the default model (convnet) and dataset (Fashion-MNIST).

    It inspects the model, trains it from scratch, evaluates it, and compares it with
    kiln's shipped checkpoint. Results go to OUT (summary.json, convnet.pt).

    Example:  kiln demo --epochs 3 --out out/demo
    """
    import json
    import time

    from kiln.data import load_dataset
    from kiln.models import evaluate, fit, resolve_model, save_checkpoint
    from kiln.passes import count

    started = time.perf_counter()
    dataset = load_dataset(DEFAULT_DATASET)
    graph, info = resolve_model(DEFAULT_MODEL, dataset=DEFAULT_DATASET)
    totals = count(graph)
    if not as_json:
        console.print(f"[bold]1. inspect[/] {DEFAULT_MODEL}: {totals.layers} layers, "
                      f"{totals.params:,} params, {totals.macs:,} MACs per image "
                      f"({human(totals.macs)})")
    batches = -(-len(dataset.x_train) // 128)
    with progress(quiet=as_json) as bar:
        task = bar.add_task(f"2. train {DEFAULT_MODEL}", total=epochs * batches, status="")
        result = fit(
            graph, dataset, epochs=epochs, seed=seed, lr=2e-3,
            on_batch=lambda e, b, loss: bar.update(task, advance=1,
                                                   status=f"epoch {e + 1} loss {loss:.3f}"),
            on_epoch=lambda e, loss, acc: bar.update(task, status=f"test acc {acc:.2%}"),
        )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(graph, out / f"{DEFAULT_MODEL}.pt", model=DEFAULT_MODEL,
                                 dataset=DEFAULT_DATASET,
                                 metrics={"test_accuracy": result.final_accuracy,
                                          "epochs": epochs, "seed": seed})
    shipped, shipped_info = resolve_model(DEFAULT_MODEL, pretrained=True)
    shipped_accuracy = evaluate(shipped, dataset)
    summary = {
        "model": DEFAULT_MODEL, "dataset": DEFAULT_DATASET, "params": totals.params,
        "macs": totals.macs, "epochs": epochs, "train_seconds": round(result.seconds, 1),
        "test_accuracy": result.final_accuracy, "checkpoint": str(checkpoint),
        "shipped_checkpoint": str(shipped_info.checkpoint),
        "shipped_test_accuracy": shipped_accuracy,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        print_json(summary)
        return
    console.print(table("3. results on the Fashion-MNIST test set (10,000 images)",
                        ["model", "epochs", "test accuracy"], [
                            [f"{DEFAULT_MODEL} trained now", epochs,
                             f"{result.final_accuracy:.2%}"],
                            [f"{DEFAULT_MODEL} shipped checkpoint",
                             shipped_info.metrics.get("epochs", "?"), f"{shipped_accuracy:.2%}"],
                        ], right_align={"epochs", "test accuracy"}))
    console.print(f"wrote {checkpoint} and {out / 'summary.json'} in {summary['seconds']} s")


def register(app: typer.Typer) -> None:
    app.command()(demo)
