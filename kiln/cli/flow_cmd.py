"""``kiln flow``: the whole path, model to verified hardware, as one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import (
    INPUT_SCALE_HELP,
    INPUT_SHAPE_HELP,
    MODEL_HELP,
    WEIGHTS_HELP,
    check_out_folder,
    console,
    print_json,
    table,
)

#: Exit status when every stage ran but some were refused (or skipped after a refusal).
EXIT_REFUSED = 3


def flow(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)] = "convnet",
    out: Annotated[Path, typer.Option(help="Folder for every stage's artifact and the report.")
                   ] = Path("out/flow"),
    config: Annotated[Path | None, typer.Option(
        help="Flow config (TOML): data, compression, rounding, accelerator, RTL parallelism, "
             "simulator, synthesis target, stages; every field has a default (see "
             "examples/flow/flow.toml).")] = None,
    stages: Annotated[str | None, typer.Option(
        help="Comma-separated stages to run (default: the config's, else all but train): "
             "train, float, compress, integer, onnx, cost, schedule, mvu, rtl, simulate, "
             "synth, fpga.")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Dataset (default: the model's own; \\[data] dataset).")] = None,
    input_shape: Annotated[str | None, typer.Option(
        help=INPUT_SHAPE_HELP + " (\\[model] input_shape)")] = None,
    weights: Annotated[Path | None, typer.Option(
        help=WEIGHTS_HELP + " (\\[model] weights)")] = None,
    input_scale: Annotated[float | None, typer.Option(
        help=INPUT_SCALE_HELP + " (\\[data] input_scale)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Carry MODEL through every stage: (training →) float evaluation → compression →
    integer program → ONNX Runtime check → cost on the accelerator → multi-core schedule →
    BARVINN MVU jobs (proven on its RTL) → RTL → simulation → synthesis → FPGA place and
    route (Fmax), and write DIR/report.md, DIR/report.html and DIR/summary.json.

    Each stage writes DIR/<stage>/ whole or not at all and is skipped when its inputs have
    not changed, so a re-run after a kill or a config change redoes only what changed. A
    stage that cannot take the model says why; the stages that do not need it still run.
    The flow trains only when asked (--stages train,... with \\[train] in --config): else
    give it trained weights (a zoo name's shipped checkpoint, a model file from kiln
    train/quantize/qat, an ONNX file, or --weights for your module); a model at chance
    accuracy is flagged as untrained. A file.py:Name module needs
    --input-shape, and an ONNX file or a module --data (or \\[model] / \\[data] in --config).

    Exit status: 0 every selected stage done (or cached); 3 some stage refused the model
    (or was skipped after a refusal), report written; 2 the model cannot be loaded, does
    not fit the dataset (input shape, classes) or a config is wrong (nothing written), or
    a stage broke (the stages before it are kept).

    Examples:

      kiln flow convnet --out out/flow

      kiln flow model.onnx --config examples/flow/mnist.toml --out out/mnist

      kiln flow examples/models/tiny_cnn.py:TinyCNN --config my.toml --out out/tiny
    """
    from rich.live import Live
    from rich.table import Table

    from kiln.flow import (
        STAGES,
        load_flow_config,
        parse_flow_config,
        run_flow,
        summary,
        write_report,
    )

    check_out_folder(out)
    flow_config = load_flow_config(config)
    settings = flow_config.model_dump(mode="json")
    if stages is not None:
        settings["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    for section, key, value in (("model", "input_shape", input_shape),
                                ("model", "weights", str(weights) if weights else None),
                                ("data", "dataset", data), ("data", "input_scale", input_scale)):
        if value is not None:
            settings[section][key] = value
    if weights is not None and not weights.is_file():
        from kiln.errors import ConfigError

        raise ConfigError(f"--weights {weights}: no such file")
    flow_config = parse_flow_config(settings, "command-line options")
    state: dict[str, tuple[str, str, float]] = {s: ("waiting", "", 0.0) for s in STAGES
                                                if s in flow_config.stages}
    started: dict[str, float] = {}

    def view() -> Table:
        grid = Table(title=f"kiln flow {model} → {out}", title_justify="left")
        for column in ("stage", "state", "seconds", "note"):
            grid.add_column(column)
        colours = {"done": "green", "cached": "cyan", "refused": "yellow", "skipped": "yellow",
                   "failed": "red", "running": "bold"}
        for stage, (status, note, seconds) in state.items():
            if status == "running":
                seconds = time.perf_counter() - started[stage]
            colour = colours.get(status, "")
            grid.add_row(stage, f"[{colour}]{status}[/]" if colour else status,
                         f"{seconds:.1f}" if seconds else "", note[:90])
        return grid

    with Live(view(), console=console, refresh_per_second=4, transient=True,
              redirect_stderr=False) as live:
        def on_stage(stage: str, record) -> None:
            if record.status == "running":
                started[stage] = time.perf_counter()
            if stage in state:
                state[stage] = (record.status, record.message, record.seconds)
            if not as_json:
                live.update(view())

        if as_json:
            live.stop()
        records = run_flow(model, flow_config, out, on_stage=on_stage)
    paths = write_report(model, records, out)
    refused = [r for r in records if r.status in ("refused", "skipped")]
    if as_json:
        print_json({**summary(model, records), "files": [str(p) for p in paths]})
        if refused:
            raise typer.Exit(EXIT_REFUSED)
        return
    console.print(table(f"kiln flow {model} → {out}", ["stage", "state", "seconds", "note"],
                        [[r.stage, r.status, f"{r.seconds:.1f}" if r.seconds else "",
                          r.message[:100]] for r in records if r.status != "not selected"],
                        right_align={"seconds"}))
    for record in records:  # a refusal's reason in full (the table cuts it)
        if record.status == "refused":
            console.print(f"[yellow]{record.stage} refused:[/] {record.message}",
                          highlight=False, markup=True)
    facts = summary(model, records)
    lines = []
    if facts["float_accuracy"] is not None:
        lines.append(f"accuracy float {facts['float_accuracy']:.2%}"
                     + (f" → quantized {facts['quantized_accuracy']:.2%}"
                        if facts["quantized_accuracy"] is not None else "")
                     + (f" → integer {facts['integer_accuracy']:.2%}"
                        if facts["integer_accuracy"] is not None else ""))
    if facts["onnx_formats"]:
        lines.append("ONNX Runtime: " + ", ".join(
            f"{f} {'bit-exact' if ok else 'DIFFERS'}" for f, ok in facts["onnx_formats"].items()))
    if facts["latency_cycles"] is not None:
        lines.append(f"{facts['accelerator']}: {facts['latency_cycles']:,.0f} cycles, "
                     f"{facts['energy_pj'] / 1e6:.2f} µJ per inference")
    if facts["rtl_bit_exact"] is not None:
        lines.append(f"RTL: {'bit-exact' if facts['rtl_bit_exact'] else 'DIFFERS'}, "
                     f"{facts['rtl_cycles_per_inference']:,.0f} cycles per inference")
    if facts["cells"] is not None:
        from kiln.flow.report import resources_text

        lines.append("Yosys: " + resources_text(next(r for r in records if r.stage == "synth")))
    if facts["schedule_latency_cycles"] is not None:
        lines.append(f"multi-core schedule: {facts['schedule_latency_cycles']:,.0f} cycles, "
                     f"{facts['schedule_gap_to_lower_bound']:.1%} above its lower bound")
    if facts["mvu_cycles"] is not None:
        lines.append(f"BARVINN MVU: {facts['mvu_cycles']:,} cycles per inference"
                     + ("" if facts["mvu_rtl_mismatches"] is None else
                        f", {facts['mvu_rtl_mismatches']} mismatches on its RTL"))
    if facts["fmax_mhz"] is not None:
        from kiln.flow.report import fpga_text

        lines.append("FPGA: " + fpga_text(next(r for r in records if r.stage == "fpga")))
    for line in lines:
        console.print(line, highlight=False)
    if facts.get("untrained_warning"):
        console.print(f"[bold red]warning:[/] {facts['untrained_warning']}", highlight=False)
    console.print(f"report: {paths[0]} and {paths[1]}; figures for scripts: {paths[2]}")
    if refused:
        console.print(f"{len(refused)} stage(s) refused or skipped: exit status "
                      f"{EXIT_REFUSED}", highlight=False)
        raise typer.Exit(EXIT_REFUSED)


def register(app: typer.Typer) -> None:
    app.command()(flow)
