"""Pruning: unstructured and structured masks, and ``shrink`` to remove what was pruned.

>>> from kiln.models import build_graph
>>> from kiln.prune import prune_filters, shrink
>>> small = shrink(prune_filters(build_graph("convnet"), fraction=0.5))
>>> small.total_params < build_graph("convnet").total_params
True
"""

from kiln.prune.masks import (
    apply_masks,
    prune_channels,
    prune_filters,
    prune_magnitude,
    sparsity,
)
from kiln.prune.shrink import shrink

__all__ = ["apply_masks", "prune_channels", "prune_filters", "prune_magnitude", "shrink",
           "sparsity"]
