"""``kiln inspect``: the per-layer table of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import (
    MODEL_HELP,
    WEIGHTS_HELP,
    console,
    human,
    print_json,
    shape,
    table,
)
from kiln.report.markdown import format_size


def inspect(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Dataset whose input width and classes a zoo model follows.")] = None,
    input_shape: Annotated[str | None, typer.Option(
        help="Per-sample input shape, e.g. 3x32x32: for a file.py:Name model, or to size a "
             "zoo model.")] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    weight_bits: Annotated[int, typer.Option(help="Bits per weight for the size total.")] = 32,
    all_nodes: Annotated[bool, typer.Option(
        "--all", help="Also list identity and dropout nodes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show every layer of MODEL: op, shapes, parameters, MACs and loop dimensions.

    Examples:

      kiln inspect resnet18

      kiln inspect convnet --json

      kiln inspect model.onnx --weight-bits 8

      kiln inspect examples/models/tiny_cnn.py:TinyCNN --input-shape 1x28x28
    """
    from kiln.models.arguments import load_model_argument
    from kiln.passes import count, layer_summary
    from kiln.passes.counts import format_loops

    graph, _ = load_model_argument(model, data=data, input_shape=input_shape, weights=weights,
                                   pretrained=False)
    rows = layer_summary(graph, include_trivial=all_nodes)
    totals = count(graph, weight_bits=weight_bits)
    if as_json:
        print_json({"model": graph.name, "source": graph.source,
                    "input_shape": list(graph.input_shape), "layers": rows,
                    "totals": totals.as_dict()})
        return
    console.print(table(
        f"{graph.name}  input {shape(graph.input_shape)}",
        ["name", "op", "input", "output", "params", "MACs", "loops"],
        [[r["name"], r["op"], shape(r["input_shapes"]), shape(r["output_shape"]),
          f"{r['params']:,}", f"{r['macs']:,}", format_loops(r["loops"])] for r in rows],
        right_align={"params", "MACs"},
    ))
    console.print(
        f"[bold]total[/]: {totals.layers} layers ({totals.compute_layers} conv/linear/matmul), "
        f"{totals.params:,} params, {totals.macs:,} MACs ({human(totals.macs)}), "
        f"weights {format_size(totals.weight_bytes)} at {weight_bits} bits, "
        f"peak activation {totals.peak_activation_elements:,} elements"
    )


def register(app: typer.Typer) -> None:
    app.command()(inspect)
