"""``kiln inspect``: the per-layer table of a model."""

from __future__ import annotations

from typing import Annotated

import typer

from kiln.cli.common import console, human, print_json, shape, table


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    from kiln.errors import ConfigError

    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"--input-shape '{text}': write dimensions like 3,32,32") from exc
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape '{text}': dimensions must be positive integers")
    return dims


def inspect(
    model: Annotated[str, typer.Argument(help="Zoo name, .pt checkpoint or .onnx file.")],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Dataset whose input width and classes a zoo model follows.")] = None,
    input_shape: Annotated[str | None, typer.Option(
        help="Per-sample input shape for a zoo model, e.g. 3,32,32.")] = None,
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
    """
    from kiln.models import build_graph, resolve_model
    from kiln.passes import count, layer_summary
    from kiln.passes.counts import format_loops

    shape_override = _parse_shape(input_shape)
    if shape_override is not None:
        graph = build_graph(model, shape_override)
    else:
        graph, _ = resolve_model(model, dataset=data)
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
        f"weights {human(totals.weight_bytes)}B at {weight_bits} bits, "
        f"peak activation {totals.peak_activation_elements:,} elements"
    )


def register(app: typer.Typer) -> None:
    app.command()(inspect)
