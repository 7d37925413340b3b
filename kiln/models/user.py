"""A user's own PyTorch module as a MODEL: ``path/to/file.py:ClassOrFactory``.

The file is imported, ``ClassOrFactory`` is called with no arguments (a module class, or a
function that returns an ``nn.Module``), and the result is traced with torch.fx at
``input_shape`` (channels and size, without the batch). An optional state dict (a ``.pt``
file holding a ``state_dict``, or a kiln/PyTorch checkpoint with one) loads its weights.

>>> graph = load_user_module("examples/models/tiny_cnn.py:TinyCNN", (1, 28, 28))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, ModelFormatError
from kiln.graph import from_torch
from kiln.graph.core import Graph
from kiln.models.files import read_torch_file


def is_user_module(spec: str) -> bool:
    """``file.py:Name`` (the only MODEL form with a colon after a .py file)."""
    file, _, name = spec.rpartition(":")
    return file.endswith(".py") and bool(name)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``1x28x28`` -> (1, 28, 28)."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x") if part)
    except ValueError:
        raise KilnError(f"input shape '{text}': give sizes like 1x28x28 (no batch)") from None
    if not shape or any(size < 1 for size in shape):
        raise KilnError(f"input shape '{text}': every size must be at least 1")
    return shape


def import_module_file(path: Path, source: str | None = None) -> Any:
    """Import a Python file (or its stored source, when the file has moved) as a module."""
    text = source if source is not None else path.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = f"kiln_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    if source is not None and not path.is_file():
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="kiln-user-module-"))
        path = folder / path.name
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFormatError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: whatever it raises, name the file
        del sys.modules[name]
        raise ModelFormatError(f"{path}: importing it failed: {type(exc).__name__}: {exc}"
                               ) from exc
    return module


def build_user_module(spec: str, *, source: str | None = None) -> Any:
    """The ``nn.Module`` that ``file.py:Name`` makes (fresh weights)."""
    from torch import nn

    file, _, attribute = spec.rpartition(":")
    path = Path(file)
    if source is None and not path.is_file():
        raise ModelFormatError(f"{file}: no such Python file (MODEL '{spec}')")
    module = import_module_file(path, source)
    factory = getattr(module, attribute, None)
    if factory is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ModelFormatError(f"{file} has no '{attribute}'",
                               hint=f"it defines: {', '.join(names[:12])}")
    try:
        network = factory()
    except TypeError as exc:
        raise ModelFormatError(f"{spec}: calling it with no arguments failed: {exc}",
                               hint="give a class whose arguments all have defaults, or a "
                                    "function that returns the module") from exc
    if not isinstance(network, nn.Module):
        raise ModelFormatError(f"{spec} made a {type(network).__name__}, not a torch nn.Module")
    return network


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A state dict from a ``.pt`` file: a bare one, or the ``state_dict`` of a checkpoint."""

    data = read_torch_file(path, "state-dict")
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: holds no state dict")
    return data


def load_user_module(spec: str, input_shape: tuple[int, ...] | None, *,
                     weights: str | Path | dict[str, Any] | None = None,
                     source: str | None = None) -> Graph:
    """Build, (optionally) load weights into, and trace a user's module."""
    import torch

    if input_shape is None:
        raise KilnError(f"MODEL '{spec}' is a Python module: give its input shape "
                        "(--input-shape 1x28x28, channels and size without the batch)")
    network = build_user_module(spec, source=source)
    if weights is not None:
        state = load_state_dict_file(weights) if not isinstance(weights, dict) else weights
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFormatError(f"weights {weights} do not fit {spec}: "
                                   f"{str(exc).splitlines()[0]}") from exc
    network.eval()
    name = spec.rpartition(":")[2]
    return from_torch(network, torch.zeros(1, *input_shape), name=name)
