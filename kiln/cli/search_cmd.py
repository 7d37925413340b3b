"""``kiln search``: mixed precision, channel multipliers, pruning + quantization studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, print_json, progress, table


def search(
    target: Annotated[
        str, typer.Argument(help="A search config (.toml), or 'show' followed by a study name.")
    ],
    study_name: Annotated[
        str | None, typer.Argument(help="With 'show': the study to show.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Study storage URL (default: \\[study].storage, else sqlite in \\[study].out); "
            "postgresql://user:pass@host/db to share a study between machines."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(
        help="Worker processes on this machine. Other machines (or later commands) join "
             "the same study with the same config and --storage.")] = 1,
    resume: Annotated[
        bool, typer.Option(help="Continue a stopped or killed study with this config (its "
                                "\\[study].trials may be larger): finished trials are kept, "
                                "a dead run's trials are taken over at once. Not needed "
                                "to join a running study: the same command joins it.")
    ] = False,
    trials: Annotated[int | None, typer.Option(help="Override \\[study].trials.")] = None,
    strategy: Annotated[
        str | None, typer.Option(
            help="Override \\[study].strategy: grid, random, tpe or nsga2.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Search configurations under constraints, e.g. the smallest mixed-precision model
    within 1 point of the float accuracy, as an Optuna study that resumes after a kill.

    The config names the model, data, space, objectives, constraints, strategy, trials
    and storage (see examples/search/). Results: the best configuration as a quantization
    config that 'kiln quantize --config' and 'kiln lower --config' read, a trials table,
    plots and summary.md in \\[study].out.

    Example:  kiln search examples/search/convnet_mixed.toml

    Example:  kiln search examples/search/convnet_mixed.toml --resume

    Example:  kiln search show convnet-mixed --storage sqlite:///out/search/convnet-mixed/convnet-mixed.db
    """
    from kiln.errors import ConfigError
    from kiln.search import load_config, run_search
    from kiln.search.report import write_report
    from kiln.search.results import collect, load_study_config

    if target == "show":
        if study_name is None or storage is None:
            raise ConfigError("usage: kiln search show STUDY --storage URL")
        config = load_study_config(study_name, storage)
        result = collect(config, storage)
        _print(result, as_json)
        return
    if study_name is not None:
        raise ConfigError(f"unexpected argument '{study_name}' (only 'show' takes a study name)")
    config = load_config(Path(target))
    check_out_folder(config.out_dir, "[study].out")
    if trials is not None:
        config.study.trials = trials
    if strategy is not None:
        if strategy not in ("grid", "random", "tpe", "nsga2"):
            raise ConfigError(f"--strategy must be grid, random, tpe or nsga2, got '{strategy}'")
        config.study.strategy = strategy  # type: ignore[assignment]
    with progress(quiet=as_json) as bar:
        task = bar.add_task(f"search {config.study.name}", total=None, status="loading")

        def on_progress(spent: float, budget: int, best: str) -> None:
            bar.update(task, completed=spent, total=budget, status=f"best: {best}")

        try:
            result = run_search(
                config, storage=storage, workers=workers, resume=resume,
                on_progress=on_progress
            )
        except KeyboardInterrupt:
            from kiln.errors import InterruptError

            raise InterruptError(f"interrupted: the finished trials of study "
                              f"'{config.study.name}' are kept in its storage",
                              hint=f"continue with: kiln search {target} --resume") from None
    result.files += [str(p) for p in write_report(result, config.out_dir)]
    _print(result, as_json)


def _print(result, as_json: bool) -> None:
    from kiln.search.report import best_table, format_metric

    if as_json:
        print_json(result.as_dict())
        return
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    summary = result.as_dict()
    console.print(
        f"study [bold]{result.study}[/] in {result.storage}: {result.evaluations:g} "
        f"evaluations over {len(result.trials)} trials ({summary['reused_trials']} reused "
        f"results, {summary['pruned_trials']} pruned at low fidelity), "
        f"{sum(t['feasible'] for t in complete)} feasible; baseline ({result.baseline}) "
        f"{result.baseline_accuracy:.2%}"
        + (f"; every one of the {result.space_size} configurations is known (space "
           "exhausted)" if result.exhausted else "")
    )
    if result.best:
        columns, rows = best_table(result)
        title = "best feasible configuration" + (" (Pareto front)" if len(result.best) > 1 else "")
        console.print(table(title, columns, rows))
        if result.holdout_accuracy is not None:
            console.print(
                f"held-out accuracy of trial {result.best[0]['number']}: "
                f"{result.holdout_accuracy:.2%}"
            )
    else:
        console.print("[bold red]no configuration meets the constraints[/]")
        if result.best_infeasible:
            t = result.best_infeasible
            console.print(
                f"closest: trial {t['number']} (constraint excess {t['constraints']}), "
                f"accuracy {t['metrics']['accuracy']:.2%}, size "
                f"{format_metric('size', t['metrics']['size'])}"
            )
    for path in result.files:
        console.print(f"wrote {path}")



def register(app: typer.Typer) -> None:
    app.command()(search)
