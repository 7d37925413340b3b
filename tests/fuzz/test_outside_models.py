"""The outside-model corpus: models kiln was not built around, through every stage that
takes them. The qonnx MNIST CNN (the ONNX model zoo's, unmodified: biases as Add nodes,
5x5 convs with padding 2, a 3x3/3 pool, MatMul classifier, inputs 0..255); the zoo's
architectures with random weights; the onnx wheel's light models through the mapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kiln.data import load_dataset
from kiln.errors import KilnError
from kiln.fuzz.reference import reference_run
from kiln.graph import from_onnx
from kiln.integer import export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx
from kiln.models import build_graph
from kiln.quant import calibrate, quantize, uniform_config
from kiln.training import predict

QONNX_MNIST = Path(__import__("qonnx").__file__).parent / "data/onnx/mnist-conv/model.onnx"
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _onnx_bit_exact(program, x, tmp_path) -> None:
    for export_format in ("qoperator", "qdq"):
        path = export_onnx(program, tmp_path / f"{export_format}.onnx",
                           export_format=export_format)
        result = check_onnx(program, path, x)
        assert result.bit_exact, (export_format, result.verdict(), result.mismatches)


def test_qonnx_mnist_cnn_from_the_unmodified_file(tmp_path):
    from kiln.rtl import emit
    from kiln.rtl.simulate import simulate

    dataset = load_dataset("mnist-5k")
    x, y = dataset.arrays("all")
    pixels = (x * 255).astype(np.float32)  # the model takes 0..255
    graph = from_onnx(QONNX_MNIST)
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), torch.from_numpy(pixels[:2048]))
    program = lower(quantized, rounding="float32")
    kinds = [op.kind for op in program.ops]
    assert kinds.count("conv") == 2 and kinds.count("dense") == 1  # the Adds are biases
    engine = run(program, program.input_quant.quantize(pixels))
    int8_accuracy = float((engine.argmax(1) == y).mean())
    float_accuracy = float((predict(graph, pixels).argmax(1) == y).mean())
    assert float_accuracy >= 0.98 and int8_accuracy >= float_accuracy - 0.005
    _onnx_bit_exact(program, pixels[:1000], tmp_path)
    program.metadata = {"dataset": "mnist-5k"}
    design = emit(program, (4, 4), tmp_path / "rtl")
    result = simulate(design, simulator="verilator",
                      inputs=program.input_quant.quantize(pixels[:6]))
    assert result.passed and result.vectors == 6


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("vgg-small", (3, 16, 16)),
                                        ("resnet18-cifar", (3, 16, 16)),
                                        ("mobilenetv2-cifar", (3, 16, 16))])
def test_zoo_architectures_with_random_weights(name, shape, tmp_path):
    """lower -> engine (against the reference interpreter) -> ONNX Runtime, bit-exact;
    the RTL emitter refuses what it does not take (residual adds in float32), by name."""
    from kiln.rtl import emit

    graph = build_graph(name, shape, 10)
    calibration = torch.rand(64, *shape, generator=torch.Generator().manual_seed(0))
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), calibration)
    program = lower(quantized, rounding="float32")
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    x_int = program.input_quant.quantize(x)
    assert np.array_equal(run(program, x_int), reference_run(program, x_int)[program.output_name])
    _onnx_bit_exact(program, x, tmp_path)
    if any(op.kind == "add" for op in program.ops):
        with pytest.raises(KilnError, match=r"the RTL emitter cannot build .*\(add\): float32"):
            emit(program, (4, 4), tmp_path / "rtl")
    else:  # lenet5's and vgg-small's pools, convs and dense layers all have units
        assert emit(program, (4, 4), tmp_path / "rtl").layers


@pytest.mark.parametrize("name", sorted(p.name for p in LIGHT_DIR.glob("light_*.onnx")))
def test_light_models_import_and_map(name):
    """Import -> workload -> mapper (a narrower search than kiln map's default, to keep the
    suite fast: lpf_limit 4, one spatial candidate)."""
    from kiln.hw import load_accelerator
    from kiln.hw.workload import workload_from_onnx
    from kiln.hw.workload_mapper import map_workload

    graph = from_onnx(LIGHT_DIR / name)
    workload = workload_from_onnx(LIGHT_DIR / name)
    assert len(workload.layers) == sum(info.op.value in ("conv2d", "linear", "matmul")
                                       for info in graph.nodes())
    hw = load_accelerator(Path(__file__).parents[2] / "examples/hardware/edge_npu.yaml")
    result = map_workload(workload, hw, "latency", lpf_limit=4, spatial_keep=1)
    assert len(result.layers) == len(workload.layers)
    assert all(layer.cost.latency_cycles > 0 and layer.cost.energy_pj > 0
               for layer in result.layers)
