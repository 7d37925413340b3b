"""Helpers every CLI command shares: JSON output, tables, progress bars, errors."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Wide tables when piped to a file or a log; the terminal's own width otherwise.
console = Console(width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (nothing else is printed with --json)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def table(title: str, columns: list[str], rows: list[list[Any]], *,
          right_align: set[str] | None = None) -> Table:
    """A terminal table. Cells and the title are plain text: a name such as
    ``edge_npu [array.D1=4]`` is printed as it is, not read as rich markup."""
    from rich.markup import escape
    from rich.text import Text

    right_align = right_align or set()
    result = Table(title=escape(title), title_justify="left", header_style="bold")
    for column in columns:
        result.add_column(escape(column), justify="right" if column in right_align else "left")
    for row in rows:
        result.add_row(*[Text(str(cell)) for cell in row])
    return result


def progress(*, transient: bool = False, quiet: bool = False) -> Progress:
    """A rich progress bar (drawn on stderr so --json stdout stays clean)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=error_console, transient=transient, disable=quiet,
    )


def human(number: float) -> str:
    """1234567 -> '1.23M' (tables); JSON keeps exact numbers."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:g}"


def shape(values: Any) -> str:
    if not values:
        return ""
    if isinstance(values[0], (list, tuple)):
        return ", ".join("x".join(str(v) for v in s) for s in values)
    return "x".join(str(v) for v in values)


def check_out_folder(path: Any, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one, before any work starts."""
    from pathlib import Path

    from kiln.errors import KilnError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KilnError(f"{option} {path} is a file, not a folder",
                        hint="name a folder (it is created if missing)")
    _check_parents(path, option)


def check_out_file(path: Any, option: str = "--out") -> None:
    """Refuse an output file that is a folder or lies under a file, before any work."""
    from pathlib import Path

    from kiln.errors import KilnError

    path = Path(path)
    if path.is_dir():
        raise KilnError(f"{option} {path} is a folder, not a file")
    _check_parents(path, option)


def _check_parents(path: Any, option: str) -> None:
    from kiln.errors import KilnError

    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise KilnError(f"{option} {path}: {parent} is a file, not a folder")
            break

# --- the MODEL argument, the same on every command (read by kiln.models.arguments) -----

MODEL_HELP = ("Zoo name (kiln models), .pt checkpoint or model file (from train, quantize, "
              "qat, prune), .onnx file, or your own module as path/to/file.py:ClassOrFactory "
              "(with --input-shape).")
INPUT_SHAPE_HELP = ("Input shape without the batch, e.g. 1x28x28: needed for a "
                    "file.py:Name model.")
WEIGHTS_HELP = "State dict (.pt) to load into a file.py:Name model."
INPUT_SCALE_HELP = ("Multiply the dataset's inputs (0..1) by this, e.g. 255 for a model "
                    "trained on 0..255 pixels; default: what a model file records, else 1.")
