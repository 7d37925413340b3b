"""ONNX import: every supported operator against onnxruntime, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.errors import ModelFormatError, UnsupportedOperatorError
from kiln.graph import OpKind, from_onnx
from tests.conftest import onnxruntime_run, save_onnx


def make_model(tmp_path, name, nodes, input_shape, initializers=(), opset=13,
               output="Y"):
    rng = np.random.default_rng(len(name))
    inits = [numpy_helper.from_array(np.asarray(value), key) if not callable(value)
             else numpy_helper.from_array(value(rng), key) for key, value in initializers]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return save_onnx(model, tmp_path / f"{name}.onnx")


def weights(*shape):
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def assert_matches_onnxruntime(path, batch=3):
    graph = from_onnx(path)
    shape = list(graph.input_shape)
    x = np.random.default_rng(7).standard_normal([batch, *shape[1:]]).astype(np.float32)
    if shape[0] != 1:  # a model with a fixed batch size
        x = x[: shape[0]]
    reference = onnxruntime_run(path, x)
    with torch.no_grad():
        ours = graph(torch.from_numpy(x)).numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4
    return graph


CASES = {
    "conv_padded_strided": (
        [helper.make_node("Conv", ["X", "W", "B"], ["Y"], pads=[1, 1, 1, 1], strides=[2, 2])],
        [3, 4, 9, 9], [("W", weights(6, 4, 3, 3)), ("B", weights(6))], OpKind.CONV),
    "conv_grouped_dilated": (
        [helper.make_node("Conv", ["X", "W"], ["Y"], group=2, dilations=[2, 2])],
        [3, 4, 9, 9], [("W", weights(6, 2, 3, 3))], OpKind.CONV),
    "conv_depthwise_asymmetric_pads": (
        [helper.make_node("Conv", ["X", "W"], ["Y"], group=4, pads=[0, 1, 1, 2])],
        [3, 4, 8, 8], [("W", weights(4, 1, 3, 3))], OpKind.CONV),
    "conv_same_upper": (
        [helper.make_node("Conv", ["X", "W"], ["Y"], auto_pad="SAME_UPPER", strides=[2, 2])],
        [3, 2, 7, 7], [("W", weights(3, 2, 4, 4))], OpKind.CONV),
    "gemm_transb_alpha_beta": (
        [helper.make_node("Gemm", ["X", "W", "C"], ["Y"], transB=1, alpha=0.5, beta=2.0)],
        [3, 5], [("W", weights(4, 5)), ("C", weights(4))], OpKind.LINEAR),
    "gemm_plain": (
        [helper.make_node("Gemm", ["X", "W"], ["Y"])], [3, 5], [("W", weights(5, 4))],
        OpKind.LINEAR),
    "matmul_constant": (
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], [3, 2, 5], [("W", weights(5, 4))],
        OpKind.LINEAR),
    "matmul_dynamic": (
        [helper.make_node("Transpose", ["X"], ["T"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["X", "T"], ["Y"])], [3, 4, 5], [], OpKind.MATMUL),
    "relu": ([helper.make_node("Relu", ["X"], ["Y"])], [3, 6], [], OpKind.RELU),
    "clip_relu6": (
        [helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])], [3, 6],
        [("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))], OpKind.RELU6),
    "clip_range": (
        [helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])], [3, 6],
        [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))], OpKind.CLIP),
    "batchnorm": (
        [helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"], epsilon=1e-3)],
        [3, 4, 5, 5], [("s", weights(4)), ("b", weights(4)), ("m", weights(4)),
                       ("v", lambda rng: rng.uniform(0.5, 2, 4).astype(np.float32))],
        OpKind.BATCHNORM),
    "maxpool_padded": (
        [helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1])], [3, 2, 9, 9], [], OpKind.MAXPOOL),
    "maxpool_ceil": (
        [helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2], strides=[2, 2],
                          ceil_mode=1)], [3, 2, 7, 7], [], OpKind.MAXPOOL),
    "avgpool_exclude_pad": (
        [helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [3, 2, 6, 6], [], OpKind.AVGPOOL),
    "avgpool_asymmetric": (
        [helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[1, 1],
                          pads=[0, 0, 1, 1])], [3, 2, 6, 6], [], OpKind.AVGPOOL),
    "global_avgpool": (
        [helper.make_node("GlobalAveragePool", ["X"], ["Y"])], [3, 4, 5, 5], [],
        OpKind.GLOBAL_AVGPOOL),
    "add_constant": (
        [helper.make_node("Add", ["X", "c"], ["Y"])], [3, 4], [("c", weights(4))], OpKind.ADD),
    "concat": (
        [helper.make_node("Relu", ["X"], ["R"]),
         helper.make_node("Concat", ["X", "R"], ["Y"], axis=1)], [3, 2, 4], [], OpKind.CONCAT),
    "flatten": ([helper.make_node("Flatten", ["X"], ["Y"], axis=1)], [3, 2, 3, 4], [],
                OpKind.FLATTEN),
    "flatten_axis2": ([helper.make_node("Flatten", ["X"], ["Y"], axis=2)], [3, 2, 3, 4], [],
                      OpKind.FLATTEN),
    "reshape": (
        [helper.make_node("Reshape", ["X", "s"], ["Y"])], [3, 2, 6],
        [("s", np.array([0, 3, -1], np.int64))], OpKind.RESHAPE),
    "softmax": ([helper.make_node("Softmax", ["X"], ["Y"], axis=-1)], [3, 7], [],
                OpKind.SOFTMAX),
    "dropout": ([helper.make_node("Dropout", ["X"], ["Y"])], [3, 7], [], OpKind.IDENTITY),
    "lrn": ([helper.make_node("LRN", ["X"], ["Y"], size=3, alpha=1e-2, beta=0.75, bias=2.0)],
            [3, 5, 4, 4], [], OpKind.LRN),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(tmp_path, case):
    nodes, shape, inits, kind = CASES[case]
    path = make_model(tmp_path, case, nodes, shape, inits)
    graph = assert_matches_onnxruntime(path)
    assert kind in {info.op for info in graph.layers()}


def test_legacy_softmax_and_clip_opset9(tmp_path):
    nodes = [helper.make_node("Clip", ["X"], ["C"], min=-1.0, max=2.0),
             helper.make_node("Softmax", ["C"], ["Y"], axis=1)]
    path = make_model(tmp_path, "legacy", nodes, [3, 2, 5], opset=9)
    assert_matches_onnxruntime(path)


def test_constant_subgraphs_are_folded(tmp_path):
    nodes = [helper.make_node("Constant", [], ["shape"],
                              value=numpy_helper.from_array(np.array([4, 3], np.int64))),
             helper.make_node("ConstantOfShape", ["shape"], ["W"],
                              value=numpy_helper.from_array(np.array([0.25], np.float32))),
             helper.make_node("MatMul", ["X", "W"], ["Y"])]
    path = make_model(tmp_path, "folded", nodes, [2, 4])
    graph = assert_matches_onnxruntime(path)
    assert [info.op for info in graph.layers()] == [OpKind.LINEAR]


def test_imported_graph_is_trainable(tmp_path):
    path = make_model(tmp_path, "train", [helper.make_node("Gemm", ["X", "W", "C"], ["Y"])],
                      [3, 5], [("W", weights(5, 4)), ("C", weights(4))])
    graph = from_onnx(path)
    params = list(graph.parameters())
    assert params and all(p.requires_grad for p in params)
    loss = graph(torch.randn(8, 5)).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in params)


def test_unsupported_ops_are_all_listed(tmp_path):
    nodes = [helper.make_node("Erf", ["X"], ["A"], name="erf_1"),
             helper.make_node("Relu", ["A"], ["B"]),
             helper.make_node("Gelu", ["B"], ["C"], name="gelu_2"),
             helper.make_node("Erf", ["C"], ["Y"], name="erf_3")]
    path = make_model(tmp_path, "unsupported", nodes, [2, 3], opset=20)
    with pytest.raises(UnsupportedOperatorError) as caught:
        from_onnx(path)
    message = str(caught.value)
    assert "3 unsupported" in message
    for expected in ("Erf (node 'erf_1')", "Gelu (node 'gelu_2')", "Erf (node 'erf_3')"):
        assert expected in message


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    good = make_model(tmp_path, "good", [helper.make_node("Relu", ["X"], ["Y"])], [1, 3])
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ModelFormatError, match="truncated.onnx"):
        from_onnx(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 5)
    with pytest.raises(ModelFormatError, match="notes.onnx"):
        from_onnx(text)
    with pytest.raises(ModelFormatError, match="no such ONNX file"):
        from_onnx(tmp_path / "missing.onnx")


@pytest.mark.parametrize("name", ["convnet", "lenet5", "resnet18-cifar", "mobilenetv2-cifar"])
def test_zoo_models_round_trip_through_torch_onnx_export(tmp_path, name):
    from kiln.models import build_graph
    from kiln.models.registry import model_spec

    spec = model_spec(name)
    torch.manual_seed(0)
    module = spec.build(spec.input_shape, spec.num_classes).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module, (torch.zeros(1, *spec.input_shape),), str(path), dynamo=False,
                      opset_version=13, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    graph = assert_matches_onnxruntime(path)
    assert graph.total_macs == build_graph(name).total_macs


def test_a_custom_domain_operator_is_named_as_unsupported_not_folded():
    """qonnx's FP8 model: Brevitas' FloatQuant (domain onnx.brevitas) on the weights (all
    inputs constant) and on the activations; both named, as operators kiln does not take."""
    from pathlib import Path

    import qonnx

    path = (Path(qonnx.__file__).parent / "data" / "onnx" / "floatquant_exec" /
            "qonnx_act_weight_fp8.onnx")
    with pytest.raises(UnsupportedOperatorError) as raised:
        from_onnx(path)
    message = raised.value.message
    assert "2 unsupported operator node(s)" in message
    assert message.count("FloatQuant of domain 'onnx.brevitas'") == 2
    assert "fold" not in message
