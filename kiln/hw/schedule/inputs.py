"""What ``kiln schedule`` reads besides the system: the workload (an ONNX file, a built-in
workload, or anything ``kiln map`` reads) and Stream's mapping YAML.

Built-in workloads (the seed tutorial's lab 4):

- ``resnet18-conv1x4``: four copies of ResNet-18's first layer (3→64 channels, 7×7, stride
  2, 224×224 input), each reading the previous one's output rows in proportion (the lab's
  artificial chain);
- ``resnet18-conv1x4-independent``: the same four layers with no dependencies.

Stream's mapping YAML::

    layers:
      - name: /conv1/Conv
        core_allocation: [[0, 1, 2, 3]]
        inter_core_tiling: [[{dim: D2, split: 4}]]   # Conv dims: D2 = OY, D6 = K
    fused_groups:
      - name: g1
        layers: [/conv1/Conv, /relu/Relu]
        intra_core_tiling: [{dim: /conv1/Conv.D2, tile: 8}]   # 8 output rows per tile

    >>> graph = load_schedule_workload("resnet18-conv1x4")           # doctest: +SKIP
    >>> plan = plan_from_stream_mapping("map.yaml", graph, system)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from kiln.errors import ConfigError
from kiln.hw.schedule.graph import Graph, Node, graph_from_onnx, graph_from_workload
from kiln.hw.schedule.system import System
from kiln.hw.schedule.tiles import Plan
from kiln.hw.workload import _conv_layer, default_precision
from kiln.hw.workload_sources import load_workload
from kiln.strict_yaml import load_yaml_file

BUILTIN_WORKLOADS = ("resnet18-conv1x4", "resnet18-conv1x4-independent")
# Stream's ONNX Conv loop dimensions, in order: (b, ox, oy, fx, fy, c, k).
_STREAM_CONV_DIMS = ("B", "OX", "OY", "FX", "FY", "C", "K")


def first_layer_copies(dependent: bool = True, copies: int = 4) -> Graph:
    """The lab-4 workload: ``copies`` × ResNet-18's first convolution."""
    nodes = []
    for index in range(copies):
        name = f"conv1_{index}"
        layer = _conv_layer(name, batch=1, groups=1, k=64, c=3, oy=112, ox=112, fy=7, fx=7,
                            stride=(2, 2), dilation=(1, 1), in_hw=(224, 224),
                            precision=default_precision())
        inputs = [f"conv1_{index - 1}"] if dependent and index else []
        nodes.append(Node(name, "Conv", inputs, 64, 112, 112, 3, 224, 224, kernel_rows=7,
                          stride_rows=2, pad_top=3, layer=layer,
                          weight_count=64 * 3 * 7 * 7))
    name = "resnet18-conv1x4" + ("" if dependent else "-independent")
    return Graph(name, nodes, name)


def load_schedule_workload(spec: str, precision: str = "fixed", dataset: str | None = None
                           ) -> Graph:
    """A workload by name or path: a built-in one, an ONNX file (every operator, pooling and
    element-wise included), or anything ``kiln map`` reads (its MAC layers)."""
    if spec == "resnet18-conv1x4":
        return first_layer_copies(True)
    if spec == "resnet18-conv1x4-independent":
        return first_layer_copies(False)
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"workload file not found: {path}")
        return graph_from_onnx(path, precision=precision)

    return graph_from_workload(load_workload(spec, dataset))


def _dimension(node: Node, dim: str, where: str) -> str:
    """A Stream loop dimension ``D<i>`` of a layer as kiln's name (OY, K, ...)."""
    if not dim.startswith("D") or not dim[1:].isdigit():
        raise ConfigError(f"{where}: dimension '{dim}' is not Stream's D<index> form")
    index = int(dim[1:])
    if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
        if index >= len(_STREAM_CONV_DIMS):
            raise ConfigError(f"{where}: a convolution has dimensions D0..D6, not {dim}")
        return _STREAM_CONV_DIMS[index]
    return dim


def plan_from_stream_mapping(path: str | Path, graph: Graph, system: System,
                             base: Plan | None = None) -> tuple[Plan, list[str]]:
    """A plan from Stream's mapping YAML (layers not named keep ``base``'s placement), and
    notes on what kiln reads differently. Bad entries are errors naming the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"mapping file not found: {path}")
    data = load_yaml_file(path)
    source = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'layers' and 'fused_groups'")
    unknown = set(data) - {"layers", "fused_groups", "runtime_args"}
    if unknown:
        raise ConfigError(f"{source}: {sorted(unknown)[0]}: unknown key (allowed: layers, "
                          "fused_groups)")
    plan = base.copy() if base is not None else Plan({})
    notes: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(data.get("layers") or []):
        where = f"{source}: layers[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: expected a mapping with a name")
        name = str(entry["name"])
        if name not in graph.index:
            raise ConfigError(f"{where}: no layer '{name}' in workload {graph.name}")
        if name in seen:
            raise ConfigError(f"{where}: layer '{name}' is listed twice")
        seen.add(name)
        node = graph.node(name)
        allocation = entry.get("core_allocation")
        if allocation is not None:
            if not isinstance(allocation, list) or not allocation:
                raise ConfigError(f"{where}.core_allocation: expected [[core ids]]")
            cores: list[int] = []
            for group in allocation:
                for core in group if isinstance(group, list) else [group]:
                    if not isinstance(core, int) or isinstance(core, bool):
                        raise ConfigError(f"{where}.core_allocation: '{core}' is not a core id")
                    if core not in cores:
                        cores.append(core)
            if len(allocation) > 1:
                notes.append(f"layer '{name}': {len(allocation)} core-allocation options; "
                             "kiln uses their union")
            plan.allocation[name] = tuple(cores)
        for row in entry.get("inter_core_tiling") or []:
            for tiling in row if isinstance(row, list) else [row]:
                if not isinstance(tiling, dict) or "dim" not in tiling:
                    raise ConfigError(f"{where}.inter_core_tiling: expected {{dim, split}}")
                dim = _dimension(node, str(tiling["dim"]), f"{where}.inter_core_tiling")
                if dim == "OY":
                    plan.split[name] = "OY"
                elif dim == "K" or not node.is_mac:
                    plan.split.pop(name, None)
                else:
                    notes.append(f"layer '{name}': inter-core tiling over {dim} is read as a "
                                 "split of output channels (kiln splits K or OY)")
    for index, group in enumerate(data.get("fused_groups") or []):
        where = f"{source}: fused_groups[{index}]"
        if not isinstance(group, dict) or not isinstance(group.get("layers"), list):
            raise ConfigError(f"{where}: expected a mapping with a list of layers")
        members = [str(n) for n in group["layers"]]
        for name in members:
            if name not in graph.index:
                raise ConfigError(f"{where}.layers: no layer '{name}' in workload {graph.name}")
        plan.groups.append(members)
        for tiling in group.get("intra_core_tiling") or []:
            if not isinstance(tiling, dict) or "dim" not in tiling or "tile" not in tiling:
                raise ConfigError(f"{where}.intra_core_tiling: expected {{dim, tile}}")
            layer_name, _, dim_name = str(tiling["dim"]).rpartition(".")
            if layer_name not in graph.index:
                raise ConfigError(f"{where}.intra_core_tiling: no layer '{layer_name}'")
            tile = tiling["tile"]
            if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
                raise ConfigError(f"{where}.intra_core_tiling: tile must be an integer >= 1")
            dim = _dimension(graph.node(layer_name), dim_name, f"{where}.intra_core_tiling")
            if dim == "OY":
                for name in members:  # the group advances together, row tile by row tile
                    plan.rows[name] = tile
            else:
                notes.append(f"fused group {index}: intra-core tiling of {layer_name}.{dim} "
                             f"by {tile} is not applied (kiln tiles output rows, and cuts "
                             "input channels only when weights do not fit)")
    for node in graph.nodes:
        if node.name not in plan.allocation:
            raise ConfigError(f"{source}: layer '{node.name}' has no core allocation (name it "
                              "in the mapping or choose --allocate)")
    return plan, notes
