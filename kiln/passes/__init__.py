"""Graph passes: analysis (shapes, counts, summaries) and transforms.

A pass is a function ``name(graph, *, options) -> Graph`` that never mutates its input.
"""

from kiln.graph.shapes import propagate
from kiln.passes.counts import Counts, count, layer_summary
from kiln.passes.fuse import fuse_batchnorm
from kiln.passes.normalize import normalize
from kiln.passes.size import SizeReport, model_size

__all__ = ["Counts", "SizeReport", "count", "fuse_batchnorm", "layer_summary", "model_size",
           "normalize", "propagate"]
