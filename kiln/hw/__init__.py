"""Accelerator cost model and mapper (ZigZag-compatible): hardware, workloads, mappings, costs."""

from kiln.hw.accelerator import Accelerator, Memory, Port, load_accelerator, parse_accelerator
from kiln.hw.cost import Cost, MappingError, evaluate
from kiln.hw.mapper import MappingResult, map_layer, search_temporal
from kiln.hw.mapping import (
    MappingConstraints,
    SpatialMapping,
    TemporalMapping,
    constraints_for,
    fit_spatial,
    load_zigzag_mapping,
)
from kiln.hw.spatial import spatial_candidates
from kiln.hw.workload import Layer, Workload, workload_from_onnx
from kiln.hw.workload_mapper import WorkloadResult, map_workload
from kiln.hw.workload_sources import load_workload

__all__ = [
    "Accelerator",
    "Cost",
    "Layer",
    "MappingConstraints",
    "MappingError",
    "MappingResult",
    "Memory",
    "Port",
    "SpatialMapping",
    "TemporalMapping",
    "Workload",
    "WorkloadResult",
    "constraints_for",
    "evaluate",
    "fit_spatial",
    "load_accelerator",
    "load_workload",
    "load_zigzag_mapping",
    "map_layer",
    "map_workload",
    "parse_accelerator",
    "search_temporal",
    "spatial_candidates",
    "workload_from_onnx",
]
