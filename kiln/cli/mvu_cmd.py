"""``kiln mvu``: configurations and bit-serial images for BARVINN's matrix-vector unit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kiln.cli.common import (
    INPUT_SCALE_HELP,
    MODEL_HELP,
    WEIGHTS_HELP,
    check_out_folder,
    console,
    print_json,
    table,
)


def _program_from_model(model: str, data: str | None, aprec: int, wprec: int,
                        last_oprec: int, batches: int, input_scale: float | None,
                        weights: Path | None):
    """(float graph or None, program, dataset). A float model is quantized to --aprec /
    --wprec (logits at --last-oprec); a quantized model file (from ``kiln qat``) keeps its
    own quantizers, so its precisions are the program's."""
    from kiln.cli.integer_cmd import _fake_quant_graph
    from kiln.integer import lower as lower_graph
    from kiln.quant import uniform_config

    config = uniform_config(wprec, aprec).model_dump(mode="json", exclude_unset=True)
    config["rules"] = [{"match": {"name": ["@last"]},
                        "output": {"bits": last_oprec, "signed": True, "symmetric": False}}]
    if _is_quantized(model, weights):
        config = None
    graph, quantized, info, dataset, _, scale = _fake_quant_graph(
        model, data, config, None, None, batches, input_scale, None, weights)
    program = lower_graph(quantized, rounding="nearest")
    program.metadata = {"model": model, "dataset": dataset.name, "input_scale": scale}
    return graph, program, dataset


def _is_quantized(model: str, weights: Path | None) -> bool:
    from kiln.models.arguments import load_model_argument
    from kiln.quant.fake_quant import FakeQuantize

    graph, _ = load_model_argument(model, weights=weights)
    return any(isinstance(m, FakeQuantize) for m in graph.module.modules())


def _check_precisions(aprec: int, wprec: int, oprec: int, last_oprec: int) -> None:
    from kiln.errors import ConfigError
    from kiln.mvu.job import MAX_PRECISION

    for name, value in (("--aprec", aprec), ("--wprec", wprec), ("--oprec", oprec),
                        ("--last-oprec", last_oprec)):
        if not 1 <= value <= MAX_PRECISION:
            raise ConfigError(f"{name} {value}: the MVU's precisions are 1..{MAX_PRECISION} "
                              "bits")
    if oprec != aprec:
        raise ConfigError(f"--oprec {oprec} differs from --aprec {aprec}: a hidden layer's "
                          "output is the next layer's input, so they are one precision",
                          hint="--last-oprec sets the last layer's output precision")


def mvu(
    source: Annotated[str, typer.Argument(
        help="A program directory from 'kiln lower', or a model. " + MODEL_HELP)],
    out: Annotated[Path | None, typer.Option(help="Folder for the configurations and images.")
                   ] = None,
    aprec: Annotated[int, typer.Option(help="From a model: activation (input) bits.")] = 2,
    wprec: Annotated[int, typer.Option(help="From a model: weight bits.")] = 2,
    oprec: Annotated[int, typer.Option(
        help="From a model: output bits of hidden layers (= --aprec).")] = 2,
    last_oprec: Annotated[int, typer.Option(
        help="From a model: the last layer's output bits (its logits).")] = 8,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Calibration dataset.")
                    ] = None,
    prove_inputs: Annotated[int, typer.Option(
        "--prove", help="Test inputs the MVU model runs and compares with the engine.")] = 100,
    samples: Annotated[int, typer.Option(help="Test vectors written to DIR/data.")] = 1,
    rtl: Annotated[int, typer.Option(
        "--rtl", help="Also run every job on BARVINN's own MVU RTL (Verilator; built once, "
                      "~20 s) for the first N proof inputs, and compare each layer's data-RAM "
                      "words with the model and its tensor with the engine.")] = 0,
    barvinn_compat: Annotated[bool, typer.Option(
        "--barvinn-compat", help="Print what BARVINN's own generator prints (its formulas, "
                                 "known to be wrong for most layers) and stop.")] = False,
    calibration_batches: Annotated[int, typer.Option(help="Batches of 256.")] = 8,
    input_scale: Annotated[float | None, typer.Option(help=INPUT_SCALE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Configure BARVINN's matrix-vector unit for a network, proven on a model of the unit.

    Writes per-job CSR values (JSON and a C header), bit-serial weight, scaler and bias
    images and test vectors, then runs every job on kiln's bit-accurate MVU model against
    the integer engine. From a program directory, its precisions are used. From a model, it
    is quantized to --aprec/--wprec bits and lowered first (the float and int8 accuracies
    are shown beside).

    Example:  kiln mvu out/convnet-int8 --out out/convnet-mvu

    Example:  kiln mvu convnet --aprec 4 --wprec 4 --oprec 4 --out out/convnet-mvu4

    Example:  kiln mvu convnet --aprec 4 --wprec 4 --oprec 4 --out out/mvu4 --rtl 5

    Example:  kiln mvu resnet18-cifar-plain --barvinn-compat --aprec 2 --wprec 2 --oprec 2
    """
    from kiln.errors import ConfigError
    from kiln.integer import IntegerProgram
    from kiln.mvu.compat import barvinn_text

    if out is not None:
        check_out_folder(out)
    is_program = Path(source, "manifest.json").is_file()
    if barvinn_compat:
        if is_program:
            from kiln.mvu.compat import plan_shapes
            from kiln.mvu.lower import lower_for_mvu
            from kiln.mvu.plan import plan_mvu

            plan = plan_mvu(lower_for_mvu(IntegerProgram.load(source)))
            job = plan.layers[0].jobs[0]
            text = barvinn_text(plan_shapes(plan), (job.iprec, job.wprec, job.oprec))
        else:
            from kiln.models.arguments import load_model_argument
            from kiln.mvu.generate import graph_conv_shapes

            _check_precisions(aprec, wprec, oprec, last_oprec)
            graph, _ = load_model_argument(source, data=data, weights=weights)
            text = barvinn_text(graph_conv_shapes(graph), (aprec, wprec, oprec))
        if out is not None:
            from kiln.atomic import atomic_folder
            from kiln.report.markdown import write_text

            with atomic_folder(out, marker="barvinn.txt") as partial:
                write_text(partial / "barvinn.txt", text)
        if as_json:
            print_json({"barvinn_compat": text})
        else:
            typer.echo(text, nl=False)
        return
    if out is None:
        raise ConfigError("give --out DIR for the configurations and images")
    from kiln.mvu.emit import LAYER_HEADER, layer_rows
    from kiln.mvu.generate import accuracy, calibration_inputs, generate, program_dataset
    from kiln.mvu.lower import lower_for_mvu

    measured: dict[str, float] = {}
    if is_program:
        program = IntegerProgram.load(source)
    else:
        _check_precisions(aprec, wprec, oprec, last_oprec)
        graph, program, dataset = _program_from_model(
            source, data, aprec, wprec, last_oprec, calibration_batches, input_scale, weights)
        if graph is not None:
            from kiln.training import predict

            x, y = dataset.arrays("test")
            measured["float"] = float((predict(graph, x).argmax(axis=1) == y).mean())
            _, int8, _ = _program_from_model(source, data, 8, 8, 8, calibration_batches,
                                             input_scale, weights)
            measured["int8 program"] = accuracy(int8, dataset)
        layer = program.layers()[0]
        measured[f"program w{layer.attrs['weight_bits']}a{program.input_quant.bits}"] = \
            accuracy(program, dataset)
    mvu_program = lower_for_mvu(program, calibration=calibration_inputs(program))
    dataset = program_dataset(mvu_program)
    if dataset is not None:
        measured["MVU lowering"] = accuracy(mvu_program, dataset)
    if rtl < 0:
        raise ConfigError(f"--rtl {rtl}: give a number of inputs (0 to skip the RTL)")
    with console.status("proving the configurations on the MVU model"
                        + (" and on BARVINN's RTL" if rtl else "")) as status:
        def rtl_progress(layer: Any) -> None:
            status.update(f"BARVINN's RTL: layer '{layer.name}' done, {layer.mismatches} "
                          "mismatching words")

        result = generate(mvu_program, out, prove_count=prove_inputs, samples=samples,
                          rtl_count=rtl, rtl_progress=rtl_progress)
    proof = result.proof
    if as_json:
        print_json({"out": str(out), "proof": proof.as_dict(), "inputs": result.inputs_from,
                    "accuracy": measured, "countdown": result.plan.countdown,
                    "layers": result.description["layers"],
                    "rtl": result.rtl.as_dict() if result.rtl is not None else None})
    else:
        console.print(table(f"{program.name} on BARVINN's MVU → {out}", LAYER_HEADER,
                            layer_rows(result.plan)))
        notes = [[layer["name"], note] for layer in result.description["layers"]
                 for note in layer.get("differs_from_barvinn", []) + layer.get("notes", [])]
        if notes:
            console.print(table("where kiln differs from BARVINN's generator, and why",
                                ["layer", "difference"], notes))
        rows = [[layer.name, layer.jobs, layer.countdown, layer.cycles,
                 f"{layer.outputs}/{layer.expected_outputs}", layer.mismatches]
                for layer in proof.layers]
        console.print(table(f"proof on the MVU model: {proof.samples} inputs "
                            f"({result.inputs_from})",
                            ["layer", "jobs", "countdown", "model cycles", "outputs",
                             "mismatches"], rows, right_align={"jobs", "countdown",
                                                               "model cycles", "mismatches"}))
        if result.rtl is not None:
            rows = [[layer.name, layer.jobs, layer.words, layer.mismatches,
                     layer.element_mismatches, layer.model_cycles, layer.rtl_run_cycles,
                     layer.rtl_cycles_to_irq, f"{layer.writes}/{layer.expected_writes}",
                     f"{layer.seconds:.1f}"] for layer in result.rtl.layers]
            console.print(table(
                f"on BARVINN's RTL (Verilator): {result.rtl.samples} inputs, built in "
                f"{result.rtl.build_seconds:.0f} s", ["layer", "jobs", "words", "mismatches",
                                                       "tensor mismatches", "model cycles",
                                                       "RTL run cycles", "RTL to irq",
                                                       "writes", "s"], rows,
                right_align={"jobs", "words", "mismatches", "tensor mismatches",
                             "model cycles", "RTL run cycles", "RTL to irq", "s"}))
        if measured:
            console.print(table("accuracy (kiln's engine, test set)", ["program", "top-1"],
                                [[k, f"{v:.2%}"] for k, v in measured.items()],
                                right_align={"top-1"}))
        console.print(f"total countdown {result.plan.countdown:,} cycles; "
                      f"{proof.mismatches} mismatches")
    if proof.mismatches:
        from kiln.mvu.run import check_proof

        check_proof(proof)
    if result.rtl is not None:
        from kiln.mvu.rtl_run import check_rtl_proof

        check_rtl_proof(result.rtl)


def register(app: typer.Typer) -> None:
    app.command("mvu")(mvu)
