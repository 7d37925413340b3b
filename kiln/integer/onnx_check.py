"""What ONNX Runtime makes of an exported program on this CPU, and whether it is bit-exact.

ONNX Runtime rewrites a model when it loads it (QDQ fusion, layout transforms), and what
it fuses depends on the graph's exact form and on the CPU. A float Conv, Gemm or MatMul
left in the optimized graph computes that layer in float32, and its integers then agree
with the engine only by luck. :func:`check_onnx` therefore saves ORT's optimized graph,
names every compute node that it left in float, and compares every output integer with
the engine; ``bit_exact`` is true only when both are clean.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.integer.engine import run
from kiln.integer.program import IntegerProgram

# Operators that compute a convolution or matrix product on float values (in any domain:
# ORT's NCHWc Conv, FusedConv, FusedGemm, ...), or that leave an integer product's
# scaling to float arithmetic before a QuantizeLinear.
FLOAT_COMPUTE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv",
                           "FusedGemm", "FusedMatMul", "MatMulIntegerToFloat", "Einsum"})
INTEGER_COMPUTE = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger",
                             "ConvInteger", "DynamicQuantizeMatMul"})


@dataclass
class OnnxCheck:
    """ONNX Runtime against the engine on one file: graph contents and integer agreement."""

    path: str
    node_types: dict[str, int]
    float_nodes: list[tuple[str, str]]  # (node name, op type) left in float by ORT
    elements: int = 0
    mismatches: int = 0
    max_difference: int = 0
    optimized_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def integer_only(self) -> bool:
        return not self.float_nodes

    @property
    def bit_exact(self) -> bool:
        return self.integer_only and self.mismatches == 0 and self.elements > 0

    def verdict(self) -> str:
        if self.float_nodes:
            names = ", ".join(f"{name} ({kind})" for name, kind in self.float_nodes)
            return f"not integer-only: ONNX Runtime runs {names} in float"
        return "bit-exact" if self.bit_exact else "differs"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "integer_only": self.integer_only, "bit_exact": self.bit_exact}


def optimized_graph(path: str | Path, save_to: str | Path | None = None) -> Any:
    """Load ``path`` in ONNX Runtime (CPU, default optimizations) and return the graph it
    will run, as an ``onnx.ModelProto``; also written to ``save_to`` when given."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        target = Path(save_to) if save_to is not None else Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3  # the NCHWc-serialization warning is expected
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(target))


def _computes_in_float(node: Any) -> bool:
    if node.op_type in FLOAT_COMPUTE:
        return True
    # ORT fuses DQ -> Gemm without a following Q into a QGemm with a float output (no
    # y_scale input): the products are integers but the scaling and bias are float.
    return node.op_type == "QGemm" and (len(node.input) < 8 or not node.input[7])


def float_compute_nodes(model: Any) -> list[tuple[str, str]]:
    """The (name, op type) of every node of an ONNX graph that computes in float."""
    return [(node.name, node.op_type) for node in model.graph.node if _computes_in_float(node)]


def check_onnx(program: IntegerProgram, path: str | Path, inputs: np.ndarray | None = None,
               *, save_optimized: str | Path | None = None, batch: int = 1024) -> OnnxCheck:
    """Inspect ORT's optimized graph of ``path`` and compare its ``output_q`` with the engine
    on ``inputs`` (float, as the model takes them).

    >>> result = check_onnx(program, "convnet-int8.onnx", dataset.x_test)  # doctest: +SKIP
    >>> result.bit_exact, result.float_nodes
    (True, [])
    """
    import onnxruntime as ort

    model = optimized_graph(path, save_optimized)
    types = Counter(node.op_type for node in model.graph.node)
    result = OnnxCheck(str(path), dict(sorted(types.items())), float_compute_nodes(model),
                       optimized_path=str(save_optimized) if save_optimized else None)
    if inputs is None:
        return result
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.asarray(inputs, dtype=np.float32)
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        (theirs,) = session.run(["output_q"], {"input": chunk})
        ours = run(program, program.input_quant.quantize(chunk))
        difference = np.abs(theirs.astype(np.int64) - ours)
        result.elements += int(ours.size)
        result.mismatches += int((difference != 0).sum())
        result.max_difference = max(result.max_difference, int(difference.max(initial=0)))
    return result
