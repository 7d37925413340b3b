"""Reading ONNX files with clear errors, and folding constant subgraphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as plain Python values."""
    import onnx

    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    import onnx.numpy_helper

    return onnx.numpy_helper.to_array(tensor)


def fold_constant_node(node: Any, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (Constant, ConstantOfShape, ...).

    The common shape-building ops are computed directly; anything else goes through
    ONNX's own reference evaluator, so folding follows the standard exactly.
    """
    attrs = attributes(node)
    op = node.op_type
    if op == "Constant":
        if "value" in attrs:
            return [tensor_to_numpy(attrs["value"])]
        for key in ("value_float", "value_int"):
            if key in attrs:
                return [np.array(attrs[key])]
        for key in ("value_floats", "value_ints"):
            if key in attrs:
                return [np.array(attrs[key])]
    if op == "ConstantOfShape":
        value = tensor_to_numpy(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in inputs[0]), value.reshape(-1)[0], value.dtype)]
    if op == "Identity":
        return [inputs[0]]
    if op == "Unsqueeze" and opset < 13:
        out = inputs[0]
        for axis in sorted(attrs["axes"]):
            out = np.expand_dims(out, axis if axis >= 0 else axis + out.ndim + 1)
        return [out]
    return _reference_evaluate(node, inputs, opset)


def _reference_evaluate(node: Any, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [name for name, value in zip(node.input, inputs, strict=True) if value is not None]
    graph_inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
        )
        for name, value in zip(node.input, inputs, strict=True)
        if value is not None
    ]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
               for name in node.output]
    graph = helper.make_graph([node], "fold", graph_inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {name: value for name, value in zip(node.input, inputs, strict=True)
             if value is not None}
    assert all(name in feeds for name in names)
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
