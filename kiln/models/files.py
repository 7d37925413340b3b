"""What every model file reader shares: :class:`ModelInfo` (where a model came from) and
:func:`read_torch_file` (a ``.pt`` file read safely)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import ModelFormatError


@dataclass
class ModelInfo:
    """Where a resolved model came from and what it is known to score."""

    name: str
    dataset: str | None
    checkpoint: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # How to rebuild the graph: its base and the steps applied (kiln.models.artifacts).
    recipe: dict[str, Any] | None = None
    input_scale: float = 1.0  # what the dataset's inputs are multiplied by for this model


def read_torch_file(path: str | Path, what: str) -> Any:
    """What a ``.pt`` file holds, read with ``weights_only=True`` (tensors and plain data,
    never pickled code); a missing or unreadable file is a ``ModelFormatError`` naming
    ``what`` was expected."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (what torch raises depends on the damage: a
        # text file gives KeyError, a cut one EOFError or BadZipFile, pickled code a long
        # UnpicklingError about weights_only)
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            reason = "it holds pickled Python objects, which kiln does not execute"
        elif not isinstance(exc, (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile,
                                  EOFError)):
            reason = f"not a PyTorch file ({type(exc).__name__}: {reason})"
        raise ModelFormatError(f"{path}: not a readable PyTorch {what}: {reason}",
                               hint="kiln reads checkpoints and model files written by "
                                    "kiln (train, quantize, qat, prune), or a state dict "
                                    "with --weights") from exc
