"""``kiln lower``, ``kiln run`` and ``kiln export-onnx``: integer-only inference."""

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
    check_out_folder,
    console,
    print_json,
    table,
)


def _fake_quant_graph(model: str, data: str | None, config_data: dict | None,
                      weight_bits: int | None, activation_bits: int | None, batches: int,
                      input_scale: float | None = None, input_shape: str | None = None,
                      weights: Path | None = None):
    """(float graph or None, quantized graph, info, dataset, quant config or None, scale).

    A model that is already quantized (a model file from quantize or qat) is used as it
    is: no second quantization or calibration."""
    from kiln.cli.compress_cmd import _load
    from kiln.quant import QuantConfig, calibrate, quantize, uniform_config
    from kiln.quant.fake_quant import FakeQuantize

    graph, info, dataset, scale = _load(model, data, input_shape, weights, input_scale)
    if any(isinstance(m, FakeQuantize) for m in graph.module.modules()):
        if config_data is None:
            return None, graph, info, dataset, None, scale
        # Partly quantized (a QONNX model with float inputs, say): the config quantizes
        # what is not; the model's own quantizers stay as they are.
        config = QuantConfig.parse(config_data)
        quantized = calibrate(quantize(graph, config), dataset, batches=batches)
        return None, quantized, info, dataset, config, scale
    if config_data is not None:
        config = QuantConfig.parse(config_data)
    else:
        config = uniform_config(weight_bits or 8, activation_bits or 8)
    quantized = calibrate(quantize(graph, config), dataset, batches=batches)
    return graph, quantized, info, dataset, config, scale


def _model_files(model: str, weights: Path | None) -> tuple[str, dict[str, Path]]:
    """The program's reference to its model, and the files to copy into ``source/``: a
    model file travels with the program, so the folder works when moved or run from
    anywhere."""
    from kiln.models.user import is_user_module

    if is_user_module(model):
        file, _, name = model.rpartition(":")
        files = {f"source/{Path(file).name}": Path(file)}
        if weights is not None:
            files[f"source/{Path(weights).name}"] = Path(weights)
        return f"source/{Path(file).name}:{name}", files
    if Path(model).is_file():
        return f"source/{Path(model).name}", {f"source/{Path(model).name}": Path(model)}
    return model, {}


def _resolve_model_reference(program_dir: Path, meta: dict) -> tuple[str, Path | None]:
    model = meta["model"]
    weights = meta.get("weights")
    if model.startswith("source/"):
        model = str(program_dir / model)
        weights = str(program_dir / weights) if weights else None
    return model, Path(weights) if weights else None


def _agreement_table(title: str, agreement) -> None:
    rows = [["engine accuracy", f"{agreement.engine_accuracy:.2%}"]]
    if agreement.float_accuracy is not None:
        rows.append(["float model accuracy", f"{agreement.float_accuracy:.2%}"])
    if agreement.top1_agreement is not None:
        rows += [["fake-quant graph accuracy", f"{agreement.fake_quant_accuracy:.2%}"],
                 ["top-1 equal to fake-quant", f"{agreement.top1_agreement:.2%}"],
                 ["logits within 1 LSB", f"{agreement.within_one_lsb:.2%}"],
                 ["logits exactly equal", f"{agreement.exact:.2%}"]]
    console.print(table(title, ["measure", "value"], rows, right_align={"value"}))


def lower(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    out: Annotated[Path, typer.Option(help="Program directory to write.")],
    config: Annotated[Path | None, typer.Option(help="Quantization config file.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Calibration dataset.")] = None,
    weight_bits: Annotated[int | None, typer.Option(
        help="Without --config: weight width (8; a quantized model file keeps its own).")
    ] = None,
    activation_bits: Annotated[int | None, typer.Option(
        help="Without --config: activation width (8).")] = None,
    rounding: Annotated[str, typer.Option(
        help="floor, nearest (round half up) or float32 (as ONNX Runtime).")] = "nearest",
    calibration_batches: Annotated[int, typer.Option(help="Batches of 256.")] = 8,
    input_scale: Annotated[float | None, typer.Option(
        help=INPUT_SCALE_HELP + " Stored in the program for run, export-onnx and simulate.")
    ] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Quantize, calibrate and lower MODEL to an integer-only program in OUT.

    Example:  kiln lower convnet --rounding float32 --out out/convnet-int8

    Example:  kiln lower model.onnx --data mnist-5k --input-scale 255 --out out/mnist-int8
    """
    from kiln.errors import ConfigError
    from kiln.integer import lower as lower_graph
    from kiln.integer.agreement import measure_agreement
    from kiln.quant import QuantConfig

    check_out_folder(out)

    config_data = (QuantConfig.load(config).model_dump(mode="json", exclude_unset=True)
                   if config else None)
    graph, quantized, info, dataset, quant_config, scale = _fake_quant_graph(
        model, data, config_data, weight_bits, activation_bits, calibration_batches,
        input_scale, input_shape, weights)
    if quant_config is None and (weight_bits or activation_bits):
        raise ConfigError(f"'{model}' is already quantized: drop --weight-bits / "
                          "--activation-bits")
    program = lower_graph(quantized, rounding=rounding)
    reference, files = _model_files(model, weights)
    program.metadata = {"model": reference, "dataset": dataset.name,
                        "calibration_batches": calibration_batches, "input_scale": scale}
    if quant_config is not None:
        program.metadata["quant_config"] = quant_config.model_dump(mode="json",
                                                                   exclude_unset=True)
    if input_shape is not None:
        program.metadata["input_shape_option"] = input_shape
    if weights is not None:
        program.metadata["weights"] = f"source/{Path(weights).name}"
    program.save(out, extra_files=files)
    agreement = measure_agreement(program, dataset, fake_quant=quantized, float_graph=graph)
    layers = [[op.name, op.kind, "x".join(map(str, op.arrays["weight"].shape)),
               op.attrs.get("acc_bits", ""), f"{op.arrays['m0'][0]}",
               f"{op.arrays['shift'][0]}", "{}..{}".format(*op.attrs["clamp"])]
              for op in program.layers()]
    if as_json:
        print_json({"program": str(out), "ops": [op.kind for op in program.ops],
                    "agreement": agreement.as_dict()})
        return
    console.print(table(f"{info.name} → {out} ({rounding} rounding)",
                        ["layer", "kind", "weights", "acc bits", "M0[0]", "n[0]", "clamp"],
                        layers))
    _agreement_table(f"{dataset.name} test set", agreement)


def run(
    program_dir: Annotated[Path, typer.Argument(help="A directory written by 'kiln lower'.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Run an integer program on a test set: accuracy and agreement with the float model.

    Example:  kiln run out/convnet-int8
    """
    from kiln.integer import IntegerProgram
    from kiln.integer.agreement import measure_agreement, program_dataset

    program = IntegerProgram.load(program_dir)
    meta = program.metadata
    dataset = program_dataset(program, data)
    dataset_name = dataset.name
    fake_quant = float_graph = None
    if "model" in meta:
        model, weights = _resolve_model_reference(Path(program_dir), meta)
        float_graph, fake_quant, *_ = _fake_quant_graph(
            model, dataset_name, meta.get("quant_config"), None, None,
            meta.get("calibration_batches", 8), float(meta.get("input_scale", 1.0)),
            meta.get("input_shape_option"), weights)
    agreement = measure_agreement(program, dataset, fake_quant=fake_quant,
                                  float_graph=float_graph)
    if as_json:
        print_json({"program": str(program_dir), "dataset": dataset_name,
                    **agreement.as_dict()})
        return
    _agreement_table(f"{program.name} ({program.rounding}) on {dataset_name}", agreement)


def export_onnx(
    program_dir: Annotated[Path, typer.Argument(help="A directory written by 'kiln lower'.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    format: Annotated[str, typer.Option(help="qoperator or qdq.")] = "qoperator",
    check: Annotated[bool, typer.Option(
        help="Run ONNX Runtime on the test set and compare with the engine.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Export an integer program to ONNX and check ONNX Runtime against the engine.

    Example:  kiln export-onnx out/convnet-int8 --format qdq --out convnet-int8.onnx
    """
    from kiln.integer import IntegerProgram
    from kiln.integer import export_onnx as export
    from kiln.integer.onnx_check import check_onnx

    check_out_file(out)
    program = IntegerProgram.load(program_dir)
    path = export(program, out, export_format=format)
    result = {"onnx": str(path), "format": format, "rounding": program.rounding}
    dataset_name = program.metadata.get("dataset")
    if check:
        from kiln.integer.agreement import program_dataset

        inputs = program_dataset(program).x_test if dataset_name else None
        checked = check_onnx(program, path, inputs)
        result.update(ort_node_types=checked.node_types,
                      ort_float_nodes=[list(node) for node in checked.float_nodes],
                      integer_only=checked.integer_only)
        if inputs is not None:
            result.update(dataset=dataset_name, elements=checked.elements,
                          mismatches=checked.mismatches, bit_exact=checked.bit_exact)
    if as_json:
        print_json(result)
        return
    console.print(f"wrote {path} ({format})")
    if "ort_node_types" in result:
        kinds = ", ".join(f"{kind} {count}" for kind, count in result["ort_node_types"].items())
        console.print(f"ONNX Runtime's optimized graph on this CPU: {kinds}")
        for name, kind in result["ort_float_nodes"]:
            console.print(f"[yellow]ONNX Runtime runs {name} ({kind}) in float here: its "
                          "integers match the engine only by luck[/]")
    if "mismatches" in result:
        verdict = "bit-exact" if result["bit_exact"] else "differs" if result["mismatches"] \
            else "equal, but not integer-only"
        console.print(f"ONNX Runtime vs engine on {result['dataset']} test set: "
                      f"{result['mismatches']} of {result['elements']:,} output integers differ "
                      f"([bold]{verdict}[/], {program.rounding} rounding)")


def register(app: typer.Typer) -> None:
    app.command()(lower)
    app.command()(run)
    app.command("export-onnx")(export_onnx)

