"""The ``kiln`` command. Each command group lives in its own module.

Heavy libraries (torch, onnx) are imported inside commands, so ``kiln --help`` is fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kiln.cli import (
    compress_cmd,
    data_cmd,
    demo_cmd,
    flow_cmd,
    fuzz_cmd,
    hw_cmd,
    inspect_cmd,
    integer_cmd,
    mvu_cmd,
    rtl_cmd,
    schedule_cmd,
    search_cmd,
    train_cmd,
)

app = typer.Typer(
    name="kiln",
    help=(
        "kiln carries a trained neural network to an accelerator: import (PyTorch, ONNX), "
        "inspect, train, compress, lower to integers, cost, schedule and generate hardware."
        "\n\n"
        "Start with:  kiln flow convnet --out out/flow   (the main job: the default model "
        "and dataset, from float to a placed FPGA design, one report)\n\n"
        "MODEL arguments take a zoo name (kiln models), a .pt checkpoint or model file, an "
        ".onnx file, or your own module as file.py:Name (with --input-shape)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

def _version(value: bool) -> None:
    if value:
        from kiln import __version__

        print(f"kiln {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print kiln's version and exit.")
        ] = False) -> None:
    """kiln's global options."""


inspect_cmd.register(app)
train_cmd.register(app)
data_cmd.register(app)
demo_cmd.register(app)
compress_cmd.register(app)
hw_cmd.register(app)
schedule_cmd.register(app)
integer_cmd.register(app)
rtl_cmd.register(app)
mvu_cmd.register(app)
search_cmd.register(app)
fuzz_cmd.register(app)
flow_cmd.register(app)


def _unwrap_help(typer_app: typer.Typer) -> None:
    """Join the single line breaks inside each paragraph of every command's help, so that
    rich wraps the text to the terminal (in rich markup mode typer keeps a docstring's
    line breaks, and an 80-column terminal showed ragged half-lines). Paragraphs stay
    apart; one that starts with ``\\b`` (click's convention) or has indented lines (a
    list of examples) keeps its lines."""
    import inspect

    def keeps_lines(paragraph: str) -> bool:
        return paragraph.startswith("\b") or any(
            line.startswith(" ") for line in paragraph.split("\n")[1:])

    for info in typer_app.registered_commands:
        text = info.help or inspect.getdoc(info.callback) or ""
        paragraphs = [p if keeps_lines(p) else " ".join(p.split("\n"))
                      for p in text.split("\n\n")]
        info.help = "\n\n".join(paragraphs)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_help(group.typer_instance)


_unwrap_help(app)


def _interrupted(exit_: BaseException) -> bool:
    """Typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130: find it in the chain."""
    seen: BaseException | None = exit_
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _print_interrupt() -> None:
    from kiln.cli.common import error_console

    # Every artifact is written whole or not at all (kiln.atomic, temp file + rename).
    error_console.print("interrupted: nothing half-written was left (outputs are written "
                        "whole or not at all)", highlight=False, soft_wrap=True)


_python_warning = None  # Python's own warnings.showwarning, for others' warnings


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """kiln's own warnings as one line a user reads (not Python's file and source line)."""
    if category.__module__.startswith("kiln"):
        from kiln.cli.common import error_console

        error_console.print(f"warning: {message}", highlight=False, soft_wrap=True)
    else:
        _python_warning(message, category, filename, lineno, file, line)


def main() -> None:
    """Entry point: user errors print one or two lines and exit with status 2; Ctrl-C
    prints one line and exits with status 130."""
    import warnings

    from kiln.errors import InterruptError, KilnError

    global _python_warning
    _python_warning = _python_warning or warnings.showwarning
    warnings.showwarning = _one_line_warning

    try:
        app()
    except KeyboardInterrupt:
        _print_interrupt()
        sys.exit(130)
    except SystemExit as exit_:
        if exit_.code == 130 and _interrupted(exit_):
            _print_interrupt()
        raise
    except KilnError as exc:
        from rich.markup import escape

        from kiln.cli.common import error_console

        error_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False,
                            soft_wrap=True)
        if exc.hint:
            error_console.print(f"  hint: {exc.hint}", highlight=False, markup=False,
                                soft_wrap=True)
        sys.exit(130 if isinstance(exc, InterruptError) else 2)


if __name__ == "__main__":
    main()
