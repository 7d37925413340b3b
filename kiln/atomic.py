"""Outputs written whole or not at all.

A folder artifact (an integer program, an RTL design) is built under a temporary name
beside its destination and put in place with one rename, so an interrupt (Ctrl-C,
SIGKILL) or an error leaves the destination as it was: absent, or the previous complete
version. A destination that holds something else than that kind of artifact is never
replaced. (One writer per destination: a second process writing the same folder at the same
time would remove the first one's partial folder.)

>>> with atomic_folder(tmp / "program", marker="manifest.json") as folder:   # doctest: +SKIP
...     (folder / "manifest.json").write_text("{}")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from kiln.errors import KilnError


@contextmanager
def atomic_folder(path: str | Path, *, marker: str) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``path``. ``marker`` is the file
    that identifies the artifact (``manifest.json``): an existing non-empty ``path``
    without it is refused rather than replaced."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise KilnError(f"{path} is a file, not a folder")
        if any(path.iterdir()) and not (path / marker).is_file():
            raise KilnError(f"{path} holds other files (no {marker}): kiln will not replace it",
                            hint="name a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A run killed outright (SIGKILL) leaves its partial folder: never used, removed now.
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        yield partial
        partial.chmod(0o755)
        if path.exists():
            previous = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(previous)
            partial.rename(path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            partial.rename(path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def atomic_write_file(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through ``write(handle)`` under a temporary name beside it, then put it
    in place with one rename (the usual file mode, not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
