"""``kiln models`` and ``kiln datasets``: what the zoo and the offline datasets hold."""

from __future__ import annotations

from typing import Annotated

import typer

from kiln.cli.common import console, print_json, shape, table


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the model zoo: names, input shapes, default datasets, shipped checkpoints.

    Example:  kiln models
    """
    from kiln.models import MODELS
    from kiln.models.checkpoints import load_checkpoint, shipped_checkpoint

    rows = []
    for spec in MODELS.values():
        checkpoint = shipped_checkpoint(spec.name)
        accuracy = None
        if checkpoint is not None:
            accuracy = load_checkpoint(checkpoint)[1].metrics.get("test_accuracy")
        rows.append({"name": spec.name, "input_shape": list(spec.input_shape),
                     "dataset": spec.dataset, "description": spec.description,
                     "checkpoint": checkpoint.name if checkpoint else None,
                     "checkpoint_accuracy": accuracy})
    if as_json:
        print_json(rows)
        return
    console.print(table("kiln model zoo", ["name", "input", "dataset", "shipped", "description"], [
        [r["name"], shape(r["input_shape"]), r["dataset"] or "",
         f"{r['checkpoint_accuracy']:.2%}" if r["checkpoint_accuracy"] else "", r["description"]]
        for r in rows]))


def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the offline datasets and whether each is installed here.

    Example:  kiln datasets
    """
    from kiln.data import DATASETS

    rows = [{"name": spec.name, "installed": spec.is_installed(),
             "description": spec.description, "install": spec.install_hint}
            for spec in DATASETS.values()]
    if as_json:
        print_json(rows)
        return
    console.print(table("kiln datasets (offline)", ["name", "installed", "description"], [
        [r["name"], "yes" if r["installed"] else f"no: {r['install']}", r["description"]]
        for r in rows]))


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(datasets)
