"""The compression peers on kiln's convnet, in their own virtual environment (made by
``benchmarks/compression_vs_peers.py``, which also writes WORK_DIR and reads OUT.json):

    PEERS/bin/python benchmarks/compression_peer.py WORK_DIR OUT.json [--seeds 0,1]

WORK_DIR holds ``data.npz`` (Fashion-MNIST as uint8 pixels, the 2,048 calibration images
kiln calibrates with) and ``convnet.pt`` (the shipped weights, a plain state dict). Each
peer quantizes the same network at the same points as kiln's ``uniform_config(W, A)``:
every layer input at A bits (the image included), weights per output channel at W bits,
the logits at 8 bits, BatchNorm folded into the convolutions:

* ONNX Runtime ``quantize_static`` (QDQ, per-channel weights; MinMax, Entropy and
  Percentile calibration; the logits at 8 bits through ``TensorQuantOverrides``);
* NNCF ``nncf.quantize`` (its default preset, fast bias correction on);
* Brevitas: ``brevitas.nn`` layers with their default quantizers (percentile-initialised
  activation scales, max-initialised weight scales), PTQ by ``calibration_mode`` (and
  ``bias_correction_mode``), QAT with kiln's training recipe (Adam, cosine schedule,
  batch 128, the same shuffle seed, 2 epochs).

The network's class is read from kiln's own source file (``kiln/models/small.py`` needs
only torch), so both sides build the same module.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def convnet_class() -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("kiln_small_models",
                                                  ROOT / "kiln" / "models" / "small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ConvNet


class Data:
    def __init__(self, work: Path) -> None:
        arrays = np.load(work / "data.npz")
        self.x_train = torch.from_numpy(arrays["x_train"].astype(np.float32) / 255.0)
        self.y_train = torch.from_numpy(arrays["y_train"].astype(np.int64))
        self.x_test = torch.from_numpy(arrays["x_test"].astype(np.float32) / 255.0)
        self.y_test = torch.from_numpy(arrays["y_test"].astype(np.int64))
        self.calibration = torch.from_numpy(arrays["calibration"].astype(np.float32) / 255.0)

    def calibration_batches(self) -> list[torch.Tensor]:
        return list(torch.split(self.calibration, 256))


def float_model(work: Path) -> nn.Module:
    model = convnet_class()()
    model.load_state_dict(torch.load(work / "convnet.pt", weights_only=True))
    return model.eval()


def accuracy_of(model: nn.Module, data: Data) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data.x_test), 1024):
            logits = model(data.x_test[start:start + 1024])
            logits = logits.value if hasattr(logits, "value") else logits
            correct += int((logits.argmax(1) == data.y_test[start:start + 1024]).sum())
    return correct / len(data.x_test)


def train(model: nn.Module, data: Data, seed: int, epochs: int = 2, lr: float = 5e-4) -> None:
    """kiln's ``fit``: Adam, cosine schedule over every step, batch 128, the training split
    shuffled by a generator seeded with ``seed``."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            logits = logits.value if hasattr(logits, "value") else logits
            loss_fn(logits, y).backward()
            optimizer.step()
            scheduler.step()
    model.eval()


def folded_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The convolutions with their BatchNorm folded in, and the linear layers."""
    out = {}
    for conv_index, bn_index, name in ((0, 1, "conv1"), (4, 5, "conv2")):
        conv, bn = model.features[conv_index], model.features[bn_index]
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out[f"{name}.weight"] = (conv.weight * factor.reshape(-1, 1, 1, 1)).detach()
        out[f"{name}.bias"] = (bn.bias - bn.running_mean * factor).detach()
    for index, name in ((1, "fc1"), (3, "fc2")):
        out[f"{name}.weight"] = model.classifier[index].weight.detach()
        out[f"{name}.bias"] = model.classifier[index].bias.detach()
    return out


# --- ONNX Runtime ------------------------------------------------------------------------


def ort_rows(work: Path, data: Data) -> list[dict]:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = float_model(work)
    fp32 = work / "convnet_fp32.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(fp32), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                      opset_version=21, dynamo=False)
    prepared = work / "convnet_prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))  # folds BatchNorm into the convolutions
    onnx.checker.check_model(str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": b.numpy()} for b in data.calibration_batches()])

        def get_next(self):
            return next(self.batches, None)

    rows = []
    for weight_bits, activation_bits in ((8, 8), (4, 4)):
        for method in ("MinMax", "Entropy", "Percentile"):
            out = work / f"ort_w{weight_bits}a{activation_bits}_{method}.onnx"
            started = time.perf_counter()
            activation = QuantType.QUInt8 if activation_bits == 8 else QuantType.QUInt4
            weight = QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4
            extra = {"TensorQuantOverrides": {"logits": [{"quant_type": QuantType.QUInt8}]}}
            try:
                quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=activation, weight_type=weight,
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options=extra)
                options = ort.SessionOptions()
                if activation_bits < 8:  # ORT's optimizer moves 4-bit integers into MaxPool,
                    # which has no 4-bit kernel (INVALID_GRAPH): run the QDQ graph as written
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                session = ort.InferenceSession(str(out), options,
                                               providers=["CPUExecutionProvider"])
                correct = 0
                for start in range(0, len(data.x_test), 1000):
                    logits = session.run(None, {"x": data.x_test[start:start + 1000].numpy()})[0]
                    correct += int((logits.argmax(1) == data.y_test[start:start + 1000]
                                    .numpy()).sum())
                accuracy = correct / len(data.x_test)
                error = None
            except Exception as exc:  # a configuration the peer cannot run is a row too
                accuracy, error = math.nan, f"{type(exc).__name__}: {exc}"[:300]
            rows.append({"tool": "onnxruntime", "kind": "PTQ",
                         "bits": f"W{weight_bits}A{activation_bits}", "method": method.lower(),
                         "seed": 0, "accuracy": accuracy, "error": error,
                         "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)
    return rows


# --- NNCF --------------------------------------------------------------------------------


def nncf_rows(work: Path, data: Data) -> list[dict]:
    import nncf

    rows = []
    for weight_bits, activation_bits in ((8, 8), (4, 4)):
        started = time.perf_counter()
        try:
            model = float_model(work)
            dataset = nncf.Dataset(data.calibration_batches())
            options = {}
            if (weight_bits, activation_bits) != (8, 8):
                from nncf.quantization.advanced_parameters import (
                    AdvancedQuantizationParameters,
                    QuantizationParameters,
                )

                options["advanced_parameters"] = AdvancedQuantizationParameters(
                    weights_quantization_params=QuantizationParameters(num_bits=weight_bits),
                    activations_quantization_params=QuantizationParameters(
                        num_bits=activation_bits))
            quantized = nncf.quantize(model, dataset, subset_size=len(data.calibration),
                                      **options)
            accuracy, error = accuracy_of(quantized, data), None
        except Exception as exc:
            accuracy, error = math.nan, f"{type(exc).__name__}: {exc}"[:300]
        rows.append({"tool": "nncf", "kind": "PTQ", "bits": f"W{weight_bits}A{activation_bits}",
                     "method": "default", "seed": 0, "accuracy": accuracy, "error": error,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    return rows


# --- Brevitas ----------------------------------------------------------------------------


def brevitas_convnet(weights: dict[str, torch.Tensor], weight_bits: int,
                     activation_bits: int) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Uint8ActPerTensorFloat,
    )

    def conv(cin: int, cout: int) -> nn.Module:
        return qnn.QuantConv2d(cin, cout, 3, padding=1, bias=True,
                               weight_quant=Int8WeightPerChannelFloat,
                               weight_bit_width=weight_bits)

    def linear(cin: int, cout: int) -> nn.Module:
        return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerChannelFloat,
                               weight_bit_width=weight_bits)

    class QuantConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_quant = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat,
                                                 bit_width=activation_bits)
            self.conv1, self.relu1 = conv(1, 16), qnn.QuantReLU(bit_width=activation_bits)
            self.conv2, self.relu2 = conv(16, 32), qnn.QuantReLU(bit_width=activation_bits)
            self.pool = nn.MaxPool2d(2)
            self.fc1, self.relu3 = linear(32 * 7 * 7, 64), qnn.QuantReLU(
                bit_width=activation_bits)
            self.fc2 = linear(64, 10)
            self.logits_quant = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.input_quant(x)
            x = self.pool(self.relu1(self.conv1(x)))
            x = self.pool(self.relu2(self.conv2(x)))
            x = self.relu3(self.fc1(torch.flatten(x, 1)))
            return self.logits_quant(self.fc2(x))

    model = QuantConvNet()
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc1", "fc2"):
            getattr(model, name).weight.copy_(weights[f"{name}.weight"])
            getattr(model, name).bias.copy_(weights[f"{name}.bias"])
    return model


def brevitas_calibrated(weights: dict, data: Data, weight_bits: int, activation_bits: int,
                        bias_correction: bool) -> nn.Module:
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode

    model = brevitas_convnet(weights, weight_bits, activation_bits).eval()
    with torch.no_grad(), calibration_mode(model):
        for batch in data.calibration_batches():
            model(batch)
    if bias_correction:
        with torch.no_grad(), bias_correction_mode(model):
            for batch in data.calibration_batches():
                model(batch)
    return model


def brevitas_rows(work: Path, data: Data, seeds: list[int]) -> list[dict]:
    weights = folded_weights(float_model(work))
    rows = []
    for weight_bits, activation_bits in ((8, 8), (4, 4)):
        for method, correct in (("calibration", False), ("bias correction", True)):
            started = time.perf_counter()
            model = brevitas_calibrated(weights, data, weight_bits, activation_bits, correct)
            rows.append({"tool": "brevitas", "kind": "PTQ",
                         "bits": f"W{weight_bits}A{activation_bits}", "method": method,
                         "seed": 0, "accuracy": accuracy_of(model, data), "error": None,
                         "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)
    for weight_bits, activation_bits in ((4, 4), (2, 2)):
        for seed in seeds:
            started = time.perf_counter()
            model = brevitas_calibrated(weights, data, weight_bits, activation_bits, False)
            train(model, data, seed)
            rows.append({"tool": "brevitas", "kind": "QAT",
                         "bits": f"W{weight_bits}A{activation_bits}", "method": "default",
                         "seed": seed, "accuracy": accuracy_of(model, data), "error": None,
                         "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="onnxruntime,nncf,brevitas")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = Data(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    only = args.only.split(",")
    rows: list[dict] = []
    print(f"float (peer's copy): {accuracy_of(float_model(args.work), data):.2%}", flush=True)
    if "onnxruntime" in only:
        rows += ort_rows(args.work, data)
    if "nncf" in only:
        rows += nncf_rows(args.work, data)
    if "brevitas" in only:
        rows += brevitas_rows(args.work, data, seeds)
    import brevitas
    import nncf
    import onnxruntime

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "nncf": nncf.__version__, "brevitas": brevitas.__version__}
    args.out.write_text(json.dumps({"versions": versions, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
