"""Pre-quantized ONNX models in: ONNX Runtime's quantizer (QDQ), kiln's own QDQ export and
QONNX Quant nodes, lowered without calibrating again and checked against the runtime that
runs the file (ONNX Runtime, or qonnx's executor for QONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.data import load_dataset
from kiln.errors import UnsupportedOperatorError
from kiln.graph import from_onnx
from kiln.integer import export_onnx, lower, run
from kiln.integer.onnx_check import check_onnx, float_compute_nodes, optimized_graph
from kiln.models import resolve_model
from kiln.quant import calibrate, quantize, uniform_config
from kiln.quant.fake_quant import FakeQuantize
from kiln.quant.onnx_quantizers import ONNX_QUANTIZERS


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist")


def _ort_quantized_convnet(folder: Path, fashion) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph, _ = resolve_model("convnet", pretrained=True)
    float_path, path = folder / "convnet.onnx", folder / "convnet-qdq.onnx"
    torch.onnx.export(graph.module, (torch.zeros(1, 1, 28, 28),), str(float_path),
                      dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": fashion.x_train[i:i + 1]} for i in range(128))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return path


def test_onnx_runtime_quantizer_output_lowers_bit_exact_without_calibration(tmp_path, fashion):
    import onnxruntime as ort

    path = _ort_quantized_convnet(tmp_path, fashion)
    graph = from_onnx(path, quantizers=ONNX_QUANTIZERS)
    fixed = [m for m in graph.module.modules() if isinstance(m, FakeQuantize)]
    assert fixed and all(q.frozen for q in fixed)  # the file's scales, not calibrated
    program = lower(graph, rounding="float32")
    x = fashion.x_test[:2000]
    ours = program.output_quant.dequantize(run(program, program.input_quant.quantize(x)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"input": x})
    assert float_compute_nodes(optimized_graph(path)) == []  # ORT runs it in integers
    assert np.array_equal(ours, theirs)  # every output value, bit for bit


def test_kiln_qdq_export_round_trips(tmp_path, fashion):
    graph, _ = resolve_model("convnet", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), fashion),
                    rounding="float32")
    path = export_onnx(program, tmp_path / "qdq.onnx", export_format="qdq")
    with pytest.raises(UnsupportedOperatorError, match="pre-quantized model .*kiln.load"):
        from_onnx(path)  # the graph room does not build quantizers itself: it is handed them
    again = lower(from_onnx(path, quantizers=ONNX_QUANTIZERS), rounding="float32")
    x = fashion.x_test[:1000]
    first = program.output_quant.dequantize(run(program, program.input_quant.quantize(x)))
    second = again.output_quant.dequantize(run(again, again.input_quant.quantize(x)))
    assert np.array_equal(first, second)
    assert check_onnx(again, export_onnx(again, tmp_path / "again.onnx"), x).bit_exact


def _qonnx_mlp(path: Path) -> Path:
    """input -> Quant(8b unsigned) -> Gemm(Quant 4b weights, per channel) -> Relu ->
    Quant(6b unsigned) -> Gemm(Quant 4b weights) -> Quant(8b signed): a Brevitas-style
    QONNX file."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (16, 12)), rng.normal(0, 0.3, (12, 5))
    s1 = (np.abs(w1).max(axis=0) / 7).astype(np.float32)  # per output column
    inits = {
        "w1": w1.astype(np.float32), "w1_s": s1.reshape(1, 12), "b1": rng.normal(0, 0.1, 12)
        .astype(np.float32), "w2": w2.astype(np.float32),
        "w2_s": np.float32(np.abs(w2).max() / 7), "b2": np.zeros(5, np.float32),
        "zero": np.float32(0), "bits4": np.float32(4), "bits6": np.float32(6),
        "bits8": np.float32(8), "in_s": np.float32(1 / 255), "h_s": np.float32(0.05),
        "out_s": np.float32(0.02),
    }
    domain = "qonnx.custom_op.general"

    def quant(x, scale, bits, out, signed, name):
        return helper.make_node("Quant", [x, scale, "zero", bits], [out], name=name,
                                domain=domain, signed=signed, narrow=0, rounding_mode="ROUND")

    nodes = [quant("input", "in_s", "bits8", "xq", 0, "q_in"),
             quant("w1", "w1_s", "bits4", "w1q", 1, "q_w1"),
             helper.make_node("Gemm", ["xq", "w1q", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             quant("hr", "h_s", "bits6", "hq", 0, "q_h"),
             quant("w2", "w2_s", "bits4", "w2q", 1, "q_w2"),
             helper.make_node("Gemm", ["hq", "w2q", "b2"], ["y"], name="fc2"),
             quant("y", "out_s", "bits8", "output", 1, "q_out")]
    graph = helper.make_graph(
        nodes, "qonnx_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid(domain, 1)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _qonnx_execute(path: Path, x: np.ndarray) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(path)).transform(InferShapes())
    name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {name_in: row[None]})[name_out] for row in x])


def test_qonnx_quant_nodes_import_with_their_widths_and_agree_with_qonnx(tmp_path):
    path = _qonnx_mlp(tmp_path / "mlp.onnx")
    graph = from_onnx(path, quantizers=ONNX_QUANTIZERS)
    program = lower(graph, rounding="float32")  # no calibration: the file's scales
    assert [op.kind for op in program.ops] == ["dense", "dense"]
    assert [op.array_bits["weight"] for op in program.ops] == [4, 4]
    assert program.input_quant.bits == 8 and program.ops[0].out_quant.bits == 6
    x = np.random.default_rng(1).random((200, 16)).astype(np.float32)
    ours = run(program, program.input_quant.quantize(x))
    theirs = np.rint(_qonnx_execute(path, x) / program.output_quant.scale).astype(np.int64)
    theirs += program.output_quant.zero_point
    difference = np.abs(ours - theirs)
    # qonnx keeps the float bias; integer inference rounds it to the accumulator's step
    # (a one-step difference in the 6-bit hidden layer moves the 8-bit output by up to 2)
    assert difference.max() <= 2 and (difference == 0).mean() >= 0.95


def test_qonnx_model_from_the_qonnx_package_imports_and_lowers(tmp_path):
    """qonnx's eltwise test case: conv, per-channel Mul and Add (folded), ReLU, a positive
    Mul after it (folded through the ReLU), a 4-bit Quant. Its input (uint8 pixels, as
    integers) and weights are float, so kiln quantizes those (8 bits) and keeps the file's
    4-bit output quantizer."""
    path = Path(__import__("qonnx").__file__).parent / \
        "data/onnx/eltwise_chanlast_testcase.onnx"
    graph = from_onnx(path, quantizers=ONNX_QUANTIZERS)
    rng = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 224, 224), generator=rng).float()
    config = {"default": {"weight": {"bits": 8, "granularity": "channel"},
                          "input": {"bits": 8, "signed": False, "symmetric": False}}}
    quantized = calibrate(quantize(graph, config), x)
    imported = [m for m in quantized.module.modules() if isinstance(m, FakeQuantize)
                and m.frozen]
    assert len(imported) == 1 and imported[0].spec.bits == 4
    program = lower(quantized, rounding="float32")
    assert [op.kind for op in program.ops] == ["conv"] and program.output_quant.bits == 4
    ours = run(program, program.input_quant.quantize(x[:2].numpy()))
    theirs = np.rint(_qonnx_execute(path, x[:2].numpy()) / program.output_quant.scale)
    # the 8-bit input and weights kiln added: the 4-bit outputs agree within one step
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() > 0.95


def test_unsupported_quantized_forms_are_named(tmp_path):
    path = _qonnx_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name == "q_h":
            node.input[3] = "bits_fraction"
    model.graph.initializer.append(numpy_helper.from_array(np.float32(2.5), "bits_fraction"))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(UnsupportedOperatorError, match="bit width 2.5"):
        from_onnx(tmp_path / "bad.onnx", quantizers=ONNX_QUANTIZERS)
