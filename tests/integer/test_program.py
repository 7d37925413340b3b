"""lower(), the engine, saving/loading, ONNX export on the shipped models."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from kiln.data import load_dataset
from kiln.errors import KilnError
from kiln.integer import IntegerProgram, export_onnx, lower, run
from kiln.integer.agreement import measure_agreement
from kiln.integer.onnx_check import INTEGER_COMPUTE, check_onnx
from kiln.integer.program import from_mem
from kiln.models import build_graph, resolve_model
from kiln.quant import calibrate, quantize, uniform_config


@pytest.fixture(scope="module")
def convnet_int8():
    dataset = load_dataset("fashion-mnist")
    graph, _ = resolve_model("convnet", pretrained=True)
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset)
    return graph, quantized, dataset


@pytest.mark.parametrize("rounding", ["nearest", "float32"])
def test_engine_agrees_with_fake_quant_graph(convnet_int8, rounding):
    graph, quantized, dataset = convnet_int8
    program = lower(quantized, rounding=rounding)
    agreement = measure_agreement(program, dataset, fake_quant=quantized)
    assert agreement.top1_agreement >= 0.995
    assert agreement.within_one_lsb >= 0.99
    assert agreement.engine_accuracy >= 0.915


def _shipped_program(model: str):
    """A shipped model at int8 (float32 rounding) and its dataset; resnet18-cifar has
    random weights (no checkpoint) on 8x8 digits, which keeps it small."""
    if model == "resnet18-cifar":
        dataset = load_dataset("digits")
        graph = build_graph("resnet18-cifar", (1, 8, 8), 10)
        quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=2)
    else:
        dataset = load_dataset({"convnet": "fashion-mnist", "jsc-three-linear": "letter"}[model])
        graph, _ = resolve_model(model, pretrained=True)
        quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset)
    return lower(quantized, rounding="float32"), dataset


@pytest.mark.parametrize("model", ["convnet", "jsc-three-linear", "resnet18-cifar"])
def test_onnx_runtime_runs_every_layer_in_integers_and_is_bit_exact(model, tmp_path):
    """Not by luck: ORT's optimized graph (saved for each form) holds no float Conv, Gemm
    or MatMul, and every output integer of the whole test set equals the engine's."""
    program, dataset = _shipped_program(model)
    for export_format in ("qoperator", "qdq"):
        path = export_onnx(program, tmp_path / f"{export_format}.onnx",
                           export_format=export_format)
        optimized = tmp_path / f"{export_format}.optimized.onnx"
        result = check_onnx(program, path, dataset.x_test, save_optimized=optimized)
        assert optimized.is_file()
        assert result.float_nodes == [], (export_format, result.node_types)
        weighted = sum(op.kind in ("conv", "dense") for op in program.ops)
        integer_kernels = sum(count for kind, count in result.node_types.items()
                              if kind in INTEGER_COMPUTE)
        assert integer_kernels >= weighted, (export_format, result.node_types)
        outputs = run(program, program.input_quant.quantize(dataset.x_test[:1])).size
        assert result.elements == len(dataset.x_test) * outputs
        assert result.mismatches == 0, (export_format, result.max_difference)
        assert result.bit_exact
    # the float output is the dequantized integers
    session = ort.InferenceSession(str(tmp_path / "qdq.onnx"), providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {"input": dataset.x_test[:256]})
    assert np.array_equal(floats, program.output_quant.dequantize(integers.astype(np.int64)))


def test_check_names_a_layer_left_in_float(tmp_path):
    """A float Gemm in the file (as ORT leaves one when it cannot fuse) is named, and the
    result is not called bit-exact even where the integers happen to agree."""
    import onnx

    program, dataset = _shipped_program("jsc-three-linear")
    path = export_onnx(program, tmp_path / "qdq.onnx", export_format="qdq")
    model = onnx.load(str(path))
    # Put Neg(Neg(.)) between the last Gemm and its QuantizeLinear: ORT cannot fuse that.
    gemm = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
    blockers = [onnx.helper.make_node("Neg", [gemm.output[0]], ["negated"], name="neg1"),
                onnx.helper.make_node("Neg", ["negated"], ["blocked"], name="neg2")]
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == gemm.output[0]:
                node.input[i] = "blocked"
    position = list(model.graph.node).index(gemm) + 1
    for offset, node in enumerate(blockers):
        model.graph.node.insert(position + offset, node)
    onnx.save(model, str(tmp_path / "blocked.onnx"))
    result = check_onnx(program, tmp_path / "blocked.onnx", dataset.x_test[:64])
    # ORT makes it a QGemm with a float output (integer products, float scaling)
    assert [kind for _, kind in result.float_nodes] in (["Gemm"], ["QGemm"])
    assert gemm.name.split("_")[0] in result.float_nodes[0][0]
    assert not result.bit_exact
    assert "float" in result.verdict()


def test_jsc_with_input_batchnorm_lowers_and_exports(tmp_path):
    dataset = load_dataset("letter")
    graph, _ = resolve_model("jsc-three-linear", pretrained=True)
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset)
    program = lower(quantized, rounding="float32")
    assert [op.kind for op in program.ops] == ["affine", "dense", "dense", "dense"]
    agreement = measure_agreement(program, dataset, fake_quant=quantized)
    assert agreement.top1_agreement >= 0.99
    path = export_onnx(program, tmp_path / "jsc.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, integers = session.run(None, {"input": dataset.x_test})
    assert np.array_equal(integers.astype(np.int64),
                          run(program, program.input_quant.quantize(dataset.x_test)))


def test_residual_and_depthwise_models_lower():
    dataset = load_dataset("digits")
    graph = build_graph("resnet18-cifar", (1, 8, 8), 10)
    quantized = calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=2)
    program = lower(quantized)
    kinds = {op.kind for op in program.ops}
    assert {"conv", "add", "avgpool", "dense"} <= kinds
    agreement = measure_agreement(program, dataset, fake_quant=quantized)
    assert agreement.within_one_lsb >= 0.95


def test_save_load_round_trip_and_mem_files(convnet_int8, tmp_path):
    program = lower(convnet_int8[1])
    program.save(tmp_path / "prog")
    loaded = IntegerProgram.load(tmp_path / "prog")
    x = program.input_quant.quantize(convnet_int8[2].x_test[:64])
    assert np.array_equal(run(program, x), run(loaded, x))
    conv = program.layers()[0]
    text = (tmp_path / "prog" / "mem" / f"{conv.name}.weight.mem").read_text()
    assert np.array_equal(from_mem(text, 8), conv.arrays["weight"].reshape(-1))
    manifest = json.loads((tmp_path / "prog" / "manifest.json").read_text())
    assert manifest["ops"][0]["arrays"]["weight"]["bits"] == 8


def test_damaged_program_directories(convnet_int8, tmp_path):
    program = lower(convnet_int8[1])
    program.save(tmp_path / "p")
    (tmp_path / "p" / "arrays.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(KilnError, match="arrays.npz"):
        IntegerProgram.load(tmp_path / "p")
    program.save(tmp_path / "q")
    (tmp_path / "q" / "manifest.json").write_text("{ not json")
    with pytest.raises(KilnError, match="manifest.json"):
        IntegerProgram.load(tmp_path / "q")
    with pytest.raises(KilnError, match="no manifest.json"):
        IntegerProgram.load(tmp_path / "missing")


def test_lower_refuses_float_graphs_and_overflowing_accumulators():
    with pytest.raises(KilnError, match="not quantized"):
        lower(build_graph("convnet"))
    dataset = load_dataset("fashion-mnist")
    wide = {"default": {"weight": {"bits": 16, "granularity": "channel"},
                        "input": {"bits": 16, "signed": False, "symmetric": False}},
            "rules": [{"match": {"name": ["@last"]},
                       "output": {"bits": 16, "symmetric": False}}]}
    quantized = calibrate(quantize(build_graph("convnet"), wide), dataset, batches=1)
    with pytest.raises(KilnError, match="features_0.*overflow int32"):
        lower(quantized)


def test_engine_rejects_inputs_outside_the_input_range(convnet_int8):
    _, quantized, dataset = convnet_int8
    program = lower(quantized)
    x = program.input_quant.quantize(dataset.x_test[:4])
    x[2, 0, 5, 5] = program.input_quant.qmax + 1
    with pytest.raises(KilnError, match=r"takes integers in \[0, 255\].*got values in"):
        run(program, x)


def test_narrow_activations_give_the_int64_results():
    """The engine passes uint8/int8 activations; the kernels must not wrap them."""
    from kiln.integer.ops import conv_accumulate, qmatmul

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 4, 9, 9))
    w = rng.integers(-128, 128, (5, 4, 3, 3))
    arguments = {"x_zero": 131, "w_zero": 0, "stride": (1, 1), "padding": (1, 1),
                 "dilation": (1, 1), "groups": 1}
    wide = conv_accumulate(x, w, None, **arguments)
    assert np.array_equal(conv_accumulate(x.astype(np.uint8), w, None, **arguments), wide)
    signed = x - 128
    assert np.array_equal(conv_accumulate(signed.astype(np.int8), w, None,
                                          **{**arguments, "x_zero": 3}),
                          conv_accumulate(signed, w, None, **{**arguments, "x_zero": 3}))
    a, b = x.reshape(3, -1), rng.integers(-128, 128, (324, 7))
    result = qmatmul(a.astype(np.uint8), b, 131, 2, 5, 1 << 30, 8, qmin=0, qmax=255,
                     out_dtype=np.uint8)
    assert result.dtype == np.uint8
    assert np.array_equal(result, qmatmul(a, b, 131, 2, 5, 1 << 30, 8, qmin=0, qmax=255))


def test_int8_gemm_convolution_path_is_exact():
    """Reductions too long for exact float32 (bound >= 2^24) take im2col + int8 GEMM."""
    from kiln.integer.ops import (
        _conv_accumulate_int8,
        _conv_accumulate_int64,
        conv_accumulate,
    )

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 64, 6, 6))
    w = rng.integers(-128, 128, (8, 64, 3, 3))
    bias = rng.integers(-5000, 5000, 8)
    geometry = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1)}
    reference = _conv_accumulate_int64(x, w, bias, 77, groups=1, **geometry)
    assert 64 * 9 * 255 * 128 >= 2**24  # the float32 path would not be exact here
    int8 = _conv_accumulate_int8(x.astype(np.uint8), w, bias, 77, **geometry)
    assert int8 is not None and np.array_equal(int8, reference)
    assert np.array_equal(conv_accumulate(x.astype(np.uint8), w, bias, x_zero=77, w_zero=0,
                                          groups=1, **geometry), reference)
