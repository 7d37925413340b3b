"""Import a PyTorch ``nn.Module`` by symbolic tracing (torch.fx)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.graph.core import Graph

if TYPE_CHECKING:
    import torch
from kiln.graph.shapes import propagate


def from_torch(
    module: torch.nn.Module, example_input: torch.Tensor, *, name: str | None = None
) -> Graph:
    """Trace ``module`` with torch.fx and fill every node's metadata from ``example_input``.

    The module itself is not changed: the graph owns a traced copy.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    >>> g = from_torch(net, torch.zeros(1, 1, 8, 8))
    >>> g.node("_0").loops.K, g.node("_0").output_shape
    (4, (1, 4, 6, 6))
    """
    import copy

    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(module))
    except Exception as exc:  # tracing errors come in many types; name the module
        raise KilnError(
            f"cannot trace {type(module).__name__} with torch.fx: {exc}",
            hint="data-dependent control flow must be rewritten or wrapped with torch.fx.wrap",
        ) from exc
    traced.eval()
    graph = Graph(traced, example_input.detach().clone(), name=name or type(module).__name__)
    return propagate(graph)
