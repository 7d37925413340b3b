"""ONNX constants and shapes without PyTorch: attributes as Python values, constant nodes
and subgraphs folded, and shape inference that works where a shape comes from constants
(kiln.hw reads ONNX files with these; importing kiln.graph would load PyTorch)."""

from __future__ import annotations

from typing import Any

import numpy as np


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


# Constant subgraphs larger than this (elements in) are left alone: they are weights, not
# shapes, and folding them would only cost memory.
FOLD_LIMIT = 1 << 16


def _unknown_shapes(model: Any) -> bool:
    """Whether shape inference left a node output without a type or with a dimension that is
    neither a number nor a named (dynamic) one (inference names what it could not work out
    ``unk__N``)."""
    typed = {value.name: value for value in list(model.graph.value_info)
             + list(model.graph.output)}
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or all(t in constants for t in node.input if t):
            continue
        for name in node.output:
            value = typed.get(name)
            if value is None or not value.type.tensor_type.HasField("shape"):
                return True
            if any(not d.dim_value and (not d.dim_param or d.dim_param.startswith("unk__"))
                   for d in value.type.tensor_type.shape.dim):
                return True
    return False


def fold_constant_subgraphs(model: Any) -> Any:
    """A copy of ``model`` with every small node whose inputs are all constants replaced by
    an initializer holding its value (what ONNX shape inference needs when, as in PyTorch's
    export of ``F.pad``, a shape or a pad is computed at run time from constants)."""
    import onnx
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    values: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        external = init.data_location == onnx.TensorProto.EXTERNAL
        if not external and int(np.prod(init.dims)) <= FOLD_LIMIT:
            values[init.name] = tensor_to_numpy(init)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    kept = []
    for node in model.graph.node:
        inputs = [t for t in node.input if t]
        if all(t in values for t in inputs) and node.op_type not in ("RandomNormal",
                                                                     "RandomUniform"):
            try:
                outputs = fold_constant_node(
                    node, [values[t] if t else None for t in node.input], opset)
            except Exception:  # a node this reader cannot evaluate stays in the graph
                outputs = None
            if outputs is not None and all(np.asarray(o).size <= FOLD_LIMIT for o in outputs):
                for name, value in zip(node.output, outputs, strict=False):
                    values[name] = np.asarray(value)
                    folded.graph.initializer.append(numpy_helper.from_array(
                        np.asarray(value), name))
                continue
        kept.append(node)
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    return folded


def infer_shapes(model: Any) -> Any:
    """ONNX shape inference; where it leaves shapes unknown because they come from constant
    subgraphs, those are folded into initializers first and inference runs again."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    if not _unknown_shapes(inferred) and not _ceil_mode_pools(model):
        return inferred
    folded = onnx.shape_inference.infer_shapes(fold_constant_subgraphs(model), data_prop=True)
    if not _unknown_shapes(folded) and not _ceil_mode_pools(model):
        return folded
    return _shapes_from_a_run(folded)


def _ceil_mode_pools(model: Any) -> bool:
    """Whether a pool rounds up (``ceil_mode``): ONNX's shape inference counts a last window
    that would start past the input, which ONNX Runtime (like PyTorch and the current ONNX
    operator text) drops; such a graph's shapes come from a run."""
    return any(node.op_type in ("MaxPool", "AveragePool", "LpPool") and
               attributes(node).get("ceil_mode", 0) for node in model.graph.node)


def _shapes_from_a_run(model: Any) -> Any:
    """The shapes of every tensor as ONNX Runtime computes them on one all-zero input (for a
    graph whose shapes inference cannot work out, e.g. a MaxPool in ceil mode whose last
    window ONNX's shape inference counts and the runtime drops). The model is returned with
    those shapes as its value_info; if the runtime cannot run it, unchanged."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    known = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info)
             + list(model.graph.output) + list(model.graph.input)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]  # inference's shapes are what this run is to replace
    del probe.graph.output[:]
    names = [name for node in model.graph.node for name in node.output if name]
    probe.graph.output.extend(helper.make_tensor_value_info(
        name, known.get(name) or onnx.TensorProto.FLOAT, None) for name in names)
    constants = {init.name for init in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in constants:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value or 1 for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type or onnx.TensorProto.FLOAT)
        feeds[value.name] = np.zeros(shape, dtype)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a refusal is reported by the readers
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        results = session.run(names, feeds)
    except Exception:  # the runtime refuses it too: the readers report what is unknown
        return model
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    del shaped.graph.value_info[:]
    outputs = {v.name for v in model.graph.output}
    for name, value in zip(names, results, strict=True):
        info = helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
            list(np.asarray(value).shape))
        if name in outputs:
            for output in shaped.graph.output:
                if output.name == name:
                    output.CopyFrom(info)
        else:
            shaped.graph.value_info.append(info)
    return shaped
