"""``kiln fuzz``: random networks through kiln's stages, each compared with a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, print_json, progress, table


def fuzz(
    workers: Annotated[int, typer.Option(help="Worker processes (networks checked at once).")] = 1,
    stages: Annotated[str, typer.Option(
        help="Comma-separated stages: lower, engine, onnx, rtl, schedule.")] = "lower,engine,onnx",
    count: Annotated[int, typer.Option(help="Networks to generate.")] = 100,
    seed: Annotated[int, typer.Option(help="First seed; network i uses seed + i.")] = 0,
    simulator: Annotated[str, typer.Option(help="verilator or icarus (the rtl stage).")
                         ] = "verilator",
    icarus_every: Annotated[int, typer.Option(
        help="With rtl: also simulate every N-th network on Icarus (0: never).")] = 0,
    vectors: Annotated[int, typer.Option(help="Inputs simulated per network (rtl).")] = 3,
    shrink: Annotated[bool, typer.Option(help="Shrink each failing network.")] = True,
    out: Annotated[Path | None, typer.Option(
        help="Folder for fuzz.json and the failing cases (cases/seed-N.json).")] = None,
    replay: Annotated[Path | None, typer.Option(
        help="Run one saved case again instead of generating networks.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Generate random networks (seeded: kernels 1-7, strides 1-3, paddings 0-3 incl.
    asymmetric, dilation, odd sizes, pools, residual adds, BN, 2-8 bit widths, every
    rounding mode) and check each stage against an independent reference: the engine
    against a plain reference interpreter and the fake-quant graph, ONNX Runtime against
    the engine on every output integer (with no layer left in float), the simulated RTL
    against the engine on every beat, the multi-core schedule of PyTorch's ONNX export
    against the module (every output computed once, MACs, kiln's validator). A failure is
    shrunk to the smallest network that fails the same way and saved with the command that
    replays it.

    Examples:
      kiln fuzz --count 200 --seed 0
      kiln fuzz --stages lower,engine,onnx,rtl --count 20 --icarus-every 5 --out out/fuzz
      kiln fuzz --stages lower,schedule --count 100 --out out/fuzz-schedule
      kiln fuzz --replay out/fuzz/cases/seed-17.json
    """
    from rich.markup import escape

    from kiln.errors import KilnError
    from kiln.fuzz import fuzz as run_fuzz
    from kiln.fuzz import replay as run_replay
    from kiln.rtl.simulate import SIMULATORS

    if simulator not in SIMULATORS:
        raise KilnError(f"unknown simulator '{simulator}': use {', '.join(SIMULATORS)}")
    if out is not None:
        check_out_folder(out)
    if replay is not None:
        result = run_replay(replay, simulator=simulator)
        summary = {"case": str(replay), "network": result.spec.describe(), "ok": result.ok,
                   "passed": sorted(result.passed), "skipped": result.skipped,
                   "failure": result.failure.message if result.failure else None}
        if as_json:
            print_json(summary)
        else:
            console.print(f"{escape(summary['network'])}\n" + (
                "[green]passes every stage[/]" if result.ok else
                f"[red]fails at {result.failure.stage}[/]: {escape(result.failure.message)}"),
                highlight=False)
        raise typer.Exit(0 if result.ok else 1)
    chosen = tuple(stage.strip() for stage in stages.split(",") if stage.strip())
    with progress(quiet=as_json) as bar:
        task = bar.add_task("networks", total=count, status="")
        failures = [0]

        def advance(index: int, result) -> None:
            failures[0] += result.failure is not None
            bar.update(task, advance=1, status=f"{failures[0]} failing")

        report = run_fuzz(count=count, seed=seed, stages=chosen, simulator=simulator,
                          icarus_every=icarus_every, vectors=vectors, shrink_failures=shrink,
                          out=out, workers=workers, on_network=advance)
    if as_json:
        print_json(report.as_dict())
    else:
        rows = [[stage, report.passed[stage], report.failed.get(stage, 0),
                 report.skipped[stage]] for stage in report.stages]
        console.print(table(f"{count} random networks from seed {seed} ({report.seconds:.0f} s"
                            + (f", {report.icarus_checked} also on Icarus" if
                               report.icarus_checked else "") + ")",
                            ["stage", "passed", "failed", "skipped"], rows,
                            right_align={"passed", "failed", "skipped"}))
        if report.skips:
            seeds: dict[str, list[int]] = {}
            for skip in report.skips:
                seeds.setdefault(f"{skip['stage']}: {skip['reason']}", []).append(skip["seed"])
            console.print(table("why stages were skipped", ["stage: reason", "networks",
                                                            "seeds"],
                                [[escape(reason), len(found), ", ".join(map(str, found[:8]))
                                  + (" …" if len(found) > 8 else "")]
                                 for reason, found in seeds.items()],
                                right_align={"networks"}))
        for failure in report.failures:
            console.print(f"[red]seed {failure['seed']}[/] {failure['stage']}: "
                          f"{escape(failure['message'])}\n  shrunk to "
                          f"{escape(failure['shrunk'])}"
                          + (f"\n  replay: kiln fuzz --replay {failure['case']}"
                             if "case" in failure else ""), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(fuzz)
