"""The :class:`Graph`: kiln's software IR, a ``torch.fx.GraphModule`` plus metadata."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kiln.graph.metadata import NodeInfo

if TYPE_CHECKING:
    import torch
    import torch.fx
from kiln.errors import KilnError, UnknownNameError


class Graph:
    """An executable, trainable network with typed metadata on every node.

    ``Graph`` wraps a ``torch.fx.GraphModule``: calling it runs the module, its
    parameters train like any ``nn.Module``'s, and every fx node carries a
    :class:`~kiln.graph.metadata.NodeInfo` in ``node.meta["kiln"]``. Passes never
    mutate a graph they are given: they :meth:`copy` it first.

    >>> import torch
    >>> from kiln.graph import from_torch
    >>> g = from_torch(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.zeros(1, 4))
    >>> [(n.name, n.op.value, n.macs) for n in g.layers()]
    [('_0', 'linear', 8)]
    """

    def __init__(
        self,
        module: torch.fx.GraphModule,
        example_input: torch.Tensor,
        *,
        name: str = "model",
        source: str = "torch",
    ) -> None:
        self.module = module
        self.example_input = example_input
        self.name = name
        self.source = source

    # --- execution -----------------------------------------------------------------
    def __call__(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def forward(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.module.parameters()

    def train(self, mode: bool = True) -> Graph:
        self.module.train(mode)
        return self

    def eval(self) -> Graph:
        self.module.eval()
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_input.shape)

    # --- structure -----------------------------------------------------------------
    @property
    def fx_graph(self) -> torch.fx.Graph:
        return self.module.graph

    def fx_nodes(self) -> list[torch.fx.Node]:
        return list(self.module.graph.nodes)

    def nodes(self) -> list[NodeInfo]:
        """Metadata of every node in execution order (inputs and output included)."""
        infos = []
        for node in self.module.graph.nodes:
            info = node.meta.get("kiln")
            if info is None:
                raise KilnError(
                    f"node '{node.name}' has no metadata",
                    hint="run kiln.passes.propagate(graph) after changing the fx graph",
                )
            infos.append(info)
        return infos

    def layers(self) -> list[NodeInfo]:
        """Metadata of the nodes that are layers (no inputs, outputs or constants)."""
        return [info for info in self.nodes() if info.is_layer]

    def node(self, name: str) -> NodeInfo:
        for info in self.nodes():
            if info.name == name:
                return info

        names = ", ".join(i.name for i in self.layers())
        raise UnknownNameError(f"graph '{self.name}' has no node '{name}'; nodes: {names}")

    def submodule(self, name: str) -> torch.nn.Module:
        """The ``nn.Module`` a ``call_module`` node runs (by node name)."""
        for node in self.module.graph.nodes:
            if node.name == name and node.op == "call_module":
                return self.module.get_submodule(node.target)

        raise UnknownNameError(f"graph '{self.name}' has no module node '{name}'")

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def total_macs(self) -> int:
        return sum(info.macs for info in self.nodes())

    # --- copying -------------------------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy: parameters, buffers, fx graph and metadata are all new objects."""
        return Graph(
            copy.deepcopy(self.module),
            self.example_input.clone(),
            name=self.name,
            source=self.source,
        )

    def __repr__(self) -> str:
        return (
            f"Graph(name={self.name!r}, source={self.source!r}, input={list(self.input_shape)}, "
            f"layers={len(self.layers())}, params={self.total_params}, macs={self.total_macs})"
        )
