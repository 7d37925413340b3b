"""Reading ONNX files with clear errors (constant folding lives in kiln.onnx_constants)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.errors import ModelFormatError


def load_onnx_model(path: str | Path) -> Any:
    """Load an ONNX ``ModelProto``; a missing, truncated or non-ONNX file is a ``KilnError``."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFormatError(
            f"{path}: not a readable ONNX model (truncated or not ONNX): {exc}"
        ) from exc
    if model.ir_version == 0 or not model.graph.output or not model.graph.node:
        raise ModelFormatError(
            f"{path}: the file parsed but holds no ONNX graph (no IR version, nodes or outputs)",
            hint="is this really an .onnx file?",
        )
    return model
