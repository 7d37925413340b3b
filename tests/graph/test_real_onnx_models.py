"""Real ONNX files shipped in packages: the onnx wheel's light zoo and qonnx's MNIST CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kiln.data import load_dataset
from kiln.graph import from_onnx
from kiln.models import evaluate
from kiln.quant.onnx_quantizers import ONNX_QUANTIZERS
from tests.conftest import onnxruntime_run

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name for p in LIGHT_DIR.glob("light_*.onnx"))
QONNX_MNIST = Path(__import__("qonnx").__file__).parent / "data/onnx/mnist-conv/model.onnx"


def expose_softmax_input(path: Path, out: Path) -> Path:
    """The light models end in Softmax over constant weights (uniform 1e-3): compare the
    logits feeding it as well, where the two runtimes could really differ."""
    model = onnx.load(str(path))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:
        model.graph.output[0].name = softmax[-1].input[0]
        model.graph.node.remove(softmax[-1])
    onnx.save(model, str(out))
    return out


def test_light_zoo_is_present():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnxruntime(tmp_path, name):
    path = expose_softmax_input(LIGHT_DIR / name, tmp_path / name)
    graph = from_onnx(path, quantizers=ONNX_QUANTIZERS)
    x = np.random.default_rng(0).standard_normal(graph.input_shape).astype(np.float32)
    reference = onnxruntime_run(path, x)
    with torch.no_grad():
        ours = graph(torch.from_numpy(x)).numpy()
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(ours - reference).max() <= 1e-4 * scale
    assert graph.total_macs > 1e8


def test_qonnx_mnist_matches_onnxruntime_and_scores():
    graph = from_onnx(QONNX_MNIST, quantizers=ONNX_QUANTIZERS)
    dataset = load_dataset("mnist-5k")
    x, _ = dataset.arrays("all")
    pixels = (x[:256] * 255).astype(np.float32)
    reference = np.concatenate([onnxruntime_run(QONNX_MNIST, pixels[i:i + 1]) for i in range(32)])
    with torch.no_grad():
        ours = graph(torch.from_numpy(pixels[:32])).numpy()
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    assert evaluate(graph, dataset, split="all", input_scale=255.0) >= 0.98
