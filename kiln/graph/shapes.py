"""Shape and metadata propagation: the analysis pass every other pass relies on."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from math import prod
from typing import Any

import torch
import torch.fx
from torch import nn

from kiln.errors import KilnError
from kiln.graph.classify import node_kind, target_name
from kiln.graph.core import Graph
from kiln.graph.metadata import LoopDims, NodeInfo, OpKind

# Shape propagation runs a graph before it can compute (an uncalibrated quantizer has no
# range yet): modules that read this flag pass their input through while it is set.
_probing_shapes: contextvars.ContextVar[bool] = contextvars.ContextVar("kiln_probing_shapes",
                                                                       default=False)


@contextlib.contextmanager
def probing_shapes() -> Iterator[None]:
    """Run a graph for its shapes only (modules that cannot compute yet pass values
    through; they check :func:`is_probing_shapes`).

    >>> with probing_shapes():
    ...     is_probing_shapes()
    True
    """
    token = _probing_shapes.set(True)
    try:
        yield
    finally:
        _probing_shapes.reset(token)


def is_probing_shapes() -> bool:
    """Whether the current run is for shapes only (:func:`probing_shapes`)."""
    return _probing_shapes.get()


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the graph once and keeps each node's output shape and dtype."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.dtypes: dict[str, str | None] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n.name] = tuple(result.shape)
            self.dtypes[n.name] = str(result.dtype).removeprefix("torch.")
        else:
            self.shapes[n.name] = None
            self.dtypes[n.name] = None
        return result


def propagate(graph: Graph, example_input: torch.Tensor | None = None) -> Graph:
    """Return a copy of ``graph`` with every node's :class:`NodeInfo` filled in.

    Runs the graph once (in eval mode, without gradients) on ``example_input`` (default:
    the graph's own) to learn shapes and dtypes, then derives parameter counts, MACs and
    loop dimensions per node.

    >>> import torch
    >>> from kiln.graph import from_torch
    >>> g = from_torch(torch.nn.Linear(8, 3), torch.zeros(2, 8))
    >>> propagate(g, torch.zeros(5, 8)).node("linear").output_shape
    (5, 3)
    """
    result = graph.copy()
    if example_input is not None:
        result.example_input = example_input.detach().clone()
    module = result.module
    recorder = _ShapeRecorder(module)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), probing_shapes():
            recorder.run(result.example_input)
    except Exception as exc:
        shape = list(result.example_input.shape)
        raise KilnError(
            f"graph '{result.name}' fails on an input of shape {shape}: {exc}",
            hint="check the input shape the model expects",
        ) from exc
    finally:
        module.train(was_training)

    counted_modules: set[str] = set()
    for node in module.graph.nodes:
        node.meta["kiln"] = _node_info(node, module, recorder, counted_modules)
    return result


def _input_shapes(node: torch.fx.Node, recorder: _ShapeRecorder) -> tuple[tuple[int, ...], ...]:
    shapes = []
    for arg in node.all_input_nodes:
        shape = recorder.shapes.get(arg.name)
        if shape is not None:
            shapes.append(shape)
    return tuple(shapes)


def _node_info(
    node: torch.fx.Node,
    root: torch.fx.GraphModule,
    recorder: _ShapeRecorder,
    counted_modules: set[str],
) -> NodeInfo:
    kind = node_kind(node, root)
    in_shapes = _input_shapes(node, recorder)
    out_shape = recorder.shapes.get(node.name)
    params = 0
    attrs: dict[str, Any] = {}
    loops = None
    if node.op == "call_module":
        submodule = root.get_submodule(node.target)
        attrs["module"] = str(node.target)
        # A module called twice holds its parameters once.
        if node.target not in counted_modules:
            params = sum(p.numel() for p in submodule.parameters())
            counted_modules.add(str(node.target))
        if kind in (OpKind.CONV, OpKind.CONV1D) and out_shape is not None:
            loops = _conv_loops(submodule, out_shape)
        elif kind is OpKind.LINEAR and out_shape is not None and in_shapes:
            loops = _linear_loops(in_shapes[0], out_shape)
    else:
        # Parameters reached through get_attr (e.g. an imported bias Add) count once, at
        # their first consumer.
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg.target not in counted_modules:
                value = getattr(root, str(arg.target))
                if isinstance(value, nn.Parameter):
                    params += value.numel()
                counted_modules.add(str(arg.target))
    if kind is OpKind.MATMUL and len(in_shapes) >= 2 and out_shape is not None:
        loops = _matmul_loops(in_shapes[0], out_shape)
    elif kind is OpKind.LINEAR and node.op != "call_module" and in_shapes and out_shape:
        loops = _linear_loops(in_shapes[0], out_shape)
    macs = loops.macs if loops is not None else 0
    return NodeInfo(
        name=node.name,
        op=kind,
        target=target_name(node, root),
        input_shapes=in_shapes,
        output_shape=out_shape,
        output_dtype=recorder.dtypes.get(node.name),
        params=params,
        macs=macs,
        loops=loops,
        attrs=attrs,
    )


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _conv_loops(conv: nn.Module, out_shape: tuple[int, ...]) -> LoopDims:
    groups = conv.groups
    kernel = _pair(conv.kernel_size)
    if len(out_shape) == 4:
        batch, _, oy, ox = out_shape
    else:  # conv1d: [B, K, L]
        batch, _, ox = out_shape
        oy = 1
        kernel = (1, kernel[0])
    padding = conv.padding if not isinstance(conv.padding, str) else (0, 0)
    return LoopDims(
        B=batch,
        G=groups,
        K=conv.out_channels // groups,
        C=conv.in_channels // groups,
        OY=oy,
        OX=ox,
        FY=kernel[0],
        FX=kernel[1],
        stride=_pair(conv.stride),
        padding=_pair(padding),
        dilation=_pair(conv.dilation),
    )


def _linear_loops(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LoopDims:
    rows = prod(out_shape[:-1]) if len(out_shape) > 1 else 1
    return LoopDims(B=rows, G=1, K=out_shape[-1], C=in_shape[-1], OY=1, OX=1, FY=1, FX=1)


def _matmul_loops(a_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LoopDims:
    rows = prod(out_shape[:-1]) if len(out_shape) > 1 else 1
    return LoopDims(B=rows, G=1, K=out_shape[-1], C=a_shape[-1], OY=1, OX=1, FY=1, FX=1)
