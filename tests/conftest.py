"""Shared helpers: small ONNX models built with onnx.helper, and onnxruntime references."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest


def save_onnx(model, path: Path) -> Path:
    # onnx writes IR version 14 by default; onnxruntime 1.31 reads at most 13.
    model.ir_version = 10
    import onnx

    onnx.save(model, str(path))
    return path


def onnxruntime_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def start_interruptible(command: list[str], **popen_args) -> subprocess.Popen:
    """Start ``command`` so that SIGINT interrupts it as a terminal's Ctrl-C would. A
    shell's background job starts with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored, so a suite run in the background would otherwise test nothing."""
    return subprocess.Popen(command, text=True, preexec_fn=_default_sigint, **popen_args)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

