"""``kiln demo``: kiln's main job on the default model and dataset, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, human, print_json, progress, table

DEFAULT_MODEL = "convnet"
DEFAULT_DATASET = "fashion-mnist"


EXAMPLE_ACCELERATOR = (Path(__file__).resolve().parents[2] / "examples" / "hardware"
                       / "edge_npu.yaml")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the checkpoint and the summary.")] = Path(
        "out/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs for the fresh model.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for weights and shuffling.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Run the main job on the default model (convnet) and dataset (Fashion-MNIST).

    It inspects the model, trains it from scratch and compares it with kiln's shipped
    checkpoint, then carries the trained model to integers: int8 quantization
    (calibrated), lowering to an integer-only program, the bit-exact engine, and an
    ONNX export that ONNX Runtime must reproduce bit for bit; last, it costs the int8
    network on the edge NPU example accelerator with the best loop mapping of every
    layer. Results go to OUT (summary.json, convnet.pt, program/, convnet-int8.onnx).

    Example:  kiln demo --epochs 3 --out out/demo
    """
    import json
    import time

    check_out_folder(out)

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
    integer = _to_integers(graph, dataset, out)
    summary = {
        "model": DEFAULT_MODEL, "dataset": DEFAULT_DATASET, "params": totals.params,
        "macs": totals.macs, "epochs": epochs, "train_seconds": round(result.seconds, 1),
        "test_accuracy": result.final_accuracy, "checkpoint": str(checkpoint),
        "shipped_checkpoint": str(shipped_info.checkpoint),
        "shipped_test_accuracy": shipped_accuracy, **integer,
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
                            [f"{DEFAULT_MODEL} trained now, int8 engine", epochs,
                             f"{integer['int8_engine_accuracy']:.2%}"],
                        ], right_align={"epochs", "test accuracy"}))
    console.print(f"[bold]4. integers[/]: int8 program in {out / 'program'}; engine top-1 equals "
                  f"the fake-quant model on {integer['int8_top1_agreement']:.2%} of images; "
                  f"ONNX Runtime differs from the engine on {integer['onnx_mismatches']} of "
                  f"{integer['onnx_elements']:,} output integers"
                  + (f" ([yellow]ORT left {', '.join(integer['onnx_float_nodes'])} in float on "
                     "this CPU[/])" if integer["onnx_float_nodes"] else
                     ", every Conv/Gemm in its integer kernels"))
    console.print(f"[bold]5. accelerator[/]: on {integer['accelerator']} the int8 network takes "
                  f"{integer['accelerator_latency_cycles']:,.0f} cycles and "
                  f"{integer['accelerator_energy_pj'] / 1e6:.2f} µJ per image, MAC utilization "
                  f"{integer['accelerator_utilization']:.0%} (best mapping of each layer)")
    console.print(f"wrote {checkpoint}, {out / 'convnet-int8.onnx'} and "
                  f"{out / 'summary.json'} in {summary['seconds']} s")


def _to_integers(graph, dataset, out: Path) -> dict:
    """int8 quantization, lowering, engine agreement, ONNX export and its check."""
    from kiln.integer import export_onnx, lower
    from kiln.integer.agreement import measure_agreement
    from kiln.integer.onnx_check import check_onnx
    from kiln.quant import calibrate, quantize, uniform_config

    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset)
    program = lower(quantized, rounding="float32")
    program.metadata = {"model": DEFAULT_MODEL, "dataset": dataset.name}
    program.save(out / "program")
    agreement = measure_agreement(program, dataset, fake_quant=quantized)
    path = export_onnx(program, out / "convnet-int8.onnx")
    checked = check_onnx(program, path, dataset.x_test)
    cost = _accelerator_cost(quantized)
    return {**cost, "int8_engine_accuracy": agreement.engine_accuracy,
            "int8_top1_agreement": agreement.top1_agreement,
            "int8_within_one_lsb": agreement.within_one_lsb,
            "onnx_mismatches": checked.mismatches, "onnx_elements": checked.elements,
            "onnx_float_nodes": [name for name, _ in checked.float_nodes]}


def _accelerator_cost(quantized) -> dict:
    """The quantized network (its widths as operand precisions) on the edge NPU example."""
    from kiln.hw import load_accelerator
    from kiln.hw.workload_mapper import map_workload
    from kiln.hw.workload_sources import workload_from_graph

    hardware = load_accelerator(EXAMPLE_ACCELERATOR)
    result = map_workload(workload_from_graph(quantized, name=DEFAULT_MODEL), hardware, "latency")
    ideal = sum(layer.cost.ideal_cycles for layer in result.layers)
    return {"accelerator": hardware.name, "accelerator_latency_cycles": result.latency_cycles,
            "accelerator_energy_pj": result.energy_pj,
            "accelerator_utilization": ideal / result.latency_cycles}


def register(app: typer.Typer) -> None:
    app.command()(demo)
