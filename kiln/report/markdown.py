"""Markdown tables and atomic file writing for reports."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table.

    >>> print(markdown_table(["a", "b"], [[1, 2]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def format_size(num_bytes: float) -> str:
    """A size in bytes as kiln prints sizes everywhere: binary units, named as such.

    >>> format_size(106_848), format_size(300)
    ('104.3 KiB', '300 B')
    """
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):,.2f} MiB"
    if num_bytes >= 1024:
        return f"{num_bytes / 1024:,.1f} KiB"
    return f"{num_bytes:,.0f} B"
