"""Accelerators: a MAC array and a memory hierarchy, read from ZigZag 3.x YAML as is.

A memory lists the *memory operands* it holds (``I1``, ``I2``, ``O``), its ports with a
bandwidth range in bits per cycle and, per port, which operand moves in which direction
over it (``fh`` from higher, ``tl`` to lower, ``fl`` from lower, ``th`` to higher). Its
``served_dimensions`` are the array dimensions over which one memory instance is shared;
along every other dimension there is one instance per array position.

    >>> from kiln.hw import load_accelerator
    >>> hw = load_accelerator("examples/hardware/tpu_like.yaml")   # doctest: +SKIP
    >>> hw.array_sizes, [m.name for m in hw.levels("I2")]          # doctest: +SKIP
    ({'D1': 32, 'D2': 32}, ['rf_128B', 'dram'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError
from kiln.strict_yaml import load_yaml_file

MEMORY_OPERANDS = ("I1", "I2", "O")
# ZigZag's short direction names → the four ways data moves at a memory level.
DIRECTIONS = {
    "fh": "wr_in_by_high",
    "tl": "rd_out_to_low",
    "fl": "wr_in_by_low",
    "th": "rd_out_to_high",
}
PORT_TYPES = ("read", "write", "read_write")
_MEMORY_KEYS = {
    "size",
    "r_cost",
    "w_cost",
    "area",
    "latency",
    "operands",
    "ports",
    "served_dimensions",
    "auto_cost_extraction",
    "mem_type",
    "force_double_buffering",
    "min_r_granularity",
    "min_w_granularity",
}
_PORT_KEYS = {"name", "type", "bandwidth_min", "bandwidth_max", "allocation"}
_ARRAY_KEYS = {
    "unit_energy",
    "unit_area",
    "dimensions",
    "sizes",
    "input_precision",
    "systolic_dimensions",
    "is_imc",
}


@dataclass(frozen=True)
class Port:
    """A physical memory port and the (memory operand, direction) movements it serves."""

    name: str
    kind: str
    bandwidth_min: int
    bandwidth_max: int
    allocation: tuple[tuple[str, str], ...]

    def serves(self, mem_op: str) -> bool:
        return any(op == mem_op for op, _ in self.allocation)

    @property
    def shared_by_two_inputs(self) -> bool:
        return len({op for op, _ in self.allocation if op in ("I1", "I2")}) > 1


@dataclass(frozen=True)
class Memory:
    """One memory of the hierarchy (all its instances): size in bits, energy per access in pJ."""

    name: str
    size_bits: int
    read_energy: float
    write_energy: float
    operands: tuple[str, ...]
    ports: tuple[Port, ...]
    served_dimensions: tuple[str, ...]

    def port_for(self, mem_op: str, direction: str) -> Port | None:
        for port in self.ports:
            if (mem_op, direction) in port.allocation:
                return port
        return None

    def bandwidth(self, mem_op: str, direction: str) -> tuple[int, int] | None:
        """(min, max) bits per cycle for one operand and direction, None when no port serves it."""
        port = self.port_for(mem_op, direction)
        return None if port is None else (port.bandwidth_min, port.bandwidth_max)


@dataclass
class Accelerator:
    """A MAC array with named dimensions and the memories above it, lowest first."""

    name: str
    array_sizes: dict[str, int]
    unit_energy: float
    memories: list[Memory]
    systolic_dimensions: tuple[str, ...] = ()
    source: str = "<memory>"
    _levels: dict[str, list[Memory]] = field(default_factory=dict, repr=False)
    _ports: list | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._levels = {
            op: [m for m in self.memories if op in m.operands] for op in MEMORY_OPERANDS
        }

    @property
    def total_units(self) -> int:
        return math.prod(self.array_sizes.values())

    def levels(self, mem_op: str) -> list[Memory]:
        """The memories that hold ``mem_op``, from the array upwards."""
        return self._levels[mem_op]

    def level_of(self, memory: Memory, mem_op: str) -> int:
        """Index of ``memory`` in the hierarchy of ``mem_op`` (0 = next to the array)."""
        for index, candidate in enumerate(self._levels[mem_op]):
            if candidate is memory:
                return index
        raise ValueError(f"{memory.name} does not hold {mem_op}")

    def port_table(self) -> list[tuple[Memory, Port, list[tuple[str, str, int]]]]:
        """Every port with the (memory operand, direction, that operand's level) it serves."""
        if self._ports is None:
            self._ports = [
                (
                    memory,
                    port,
                    [
                        (op, direction, self.level_of(memory, op))
                        for op, direction in port.allocation
                    ],
                )
                for memory in self.memories
                for port in memory.ports
            ]
        return self._ports

    def inner_memories(self) -> list[Memory]:
        """Memories that sit directly on the array for every operand they hold."""
        return [m for m in self.memories if all(self.levels(op)[0] is m for op in m.operands)]

    def sharing_groups(self) -> list[dict[str, int]]:
        """For each memory holding several operands: operand → that memory's level for it."""
        return [
            {op: self.level_of(m, op) for op in m.operands}
            for m in self.memories
            if len(m.operands) > 1
        ]

    def with_changes(
        self,
        *,
        array_sizes: dict[str, int] | None = None,
        memory_sizes: dict[str, int] | None = None,
        bandwidth_scale: dict[str, float] | None = None,
        name: str | None = None,
    ) -> Accelerator:
        """A copy with some array sizes, memory sizes (bits) or port bandwidths changed."""
        memories = []
        for memory in self.memories:
            size = (memory_sizes or {}).get(memory.name, memory.size_bits)
            scale = (bandwidth_scale or {}).get(memory.name, 1.0)
            ports = tuple(
                Port(
                    p.name,
                    p.kind,
                    max(1, round(p.bandwidth_min * scale)),
                    max(1, round(p.bandwidth_max * scale)),
                    p.allocation,
                )
                for p in memory.ports
            )
            memories.append(
                Memory(
                    memory.name,
                    size,
                    memory.read_energy,
                    memory.write_energy,
                    memory.operands,
                    ports,
                    memory.served_dimensions,
                )
            )
        sizes = dict(self.array_sizes)
        sizes.update(array_sizes or {})
        return Accelerator(
            name or self.name,
            sizes,
            self.unit_energy,
            memories,
            self.systolic_dimensions,
            self.source,
        )


def _fail(source: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {message}")


def _expect_keys(data: Any, allowed: set[str], required: set[str], source: str, path: str) -> None:
    if not isinstance(data, dict):
        raise _fail(source, path, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(
            source, f"{path}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
        )
    missing = sorted(required - set(data))
    if missing:
        raise _fail(source, path, f"missing key '{missing[0]}'")


def _number(
    value: Any, source: str, path: str, *, positive: bool = False, integer: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, path, f"expected a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise _fail(source, path, f"expected a whole number, got {value!r}")
    if positive and value <= 0:
        raise _fail(source, path, f"must be > 0, got {value!r}")
    if value < 0:
        raise _fail(source, path, f"must be >= 0, got {value!r}")
    return value


def _parse_port(data: Any, operands: tuple[str, ...], source: str, path: str) -> Port:
    _expect_keys(data, _PORT_KEYS, {"name", "type", "bandwidth_min", "bandwidth_max"}, source, path)
    kind = data["type"]
    if kind not in PORT_TYPES:
        raise _fail(source, f"{path}.type", f"'{kind}' is not one of {', '.join(PORT_TYPES)}")
    bw_min = int(
        _number(data["bandwidth_min"], source, f"{path}.bandwidth_min", positive=True, integer=True)
    )
    bw_max = int(
        _number(data["bandwidth_max"], source, f"{path}.bandwidth_max", positive=True, integer=True)
    )
    if bw_min > bw_max:
        raise _fail(source, path, f"bandwidth_min {bw_min} > bandwidth_max {bw_max}")
    allocation = []
    for index, entry in enumerate(data.get("allocation") or []):
        where = f"{path}.allocation[{index}]"
        parts = [p.strip() for p in str(entry).split(",")]
        if len(parts) != 2:
            raise _fail(
                source, where, f"expected 'OPERAND, DIRECTION' such as 'I1, tl', got {entry!r}"
            )
        mem_op, short = parts
        if mem_op not in operands:
            raise _fail(
                source,
                where,
                f"operand '{mem_op}' is not among this memory's operands {list(operands)}",
            )
        if short not in DIRECTIONS:
            raise _fail(source, where, f"direction '{short}' is not one of {', '.join(DIRECTIONS)}")
        allocation.append((mem_op, DIRECTIONS[short]))
    return Port(str(data["name"]), kind, bw_min, bw_max, tuple(allocation))


def parse_accelerator(data: Any, source: str = "<accelerator>") -> Accelerator:
    """Validate a ZigZag 3.x accelerator description (already loaded YAML) and build it."""
    _expect_keys(
        data,
        {"name", "memories", "operational_array", "dataflows"},
        {"name", "memories", "operational_array"},
        source,
        "<root>",
    )
    array = data["operational_array"]
    if isinstance(array, dict) and (array.get("is_imc") or "imc_type" in array):
        # ZigZag 3.9 models in-memory computing (its dimc/aimc examples) with a separate
        # cost model (bit-serial inputs, ADC/DAC energy, cell arrays); kiln has none of it.
        kind = str(array.get("imc_type", "an")).replace("digital", "a digital").replace(
            "analog", "an analog")
        raise _fail(source, "operational_array",
                    f"{kind} in-memory-computing array (is_imc) is not supported: kiln "
                    "models digital MAC arrays only (ZigZag's IMC cost model is not in kiln)")
    _expect_keys(
        array, _ARRAY_KEYS, {"unit_energy", "dimensions", "sizes"}, source, "operational_array"
    )
    dims, sizes = array["dimensions"], array["sizes"]
    if (
        not isinstance(dims, list)
        or not isinstance(sizes, list)
        or len(dims) != len(sizes)
        or not dims
    ):
        raise _fail(
            source, "operational_array", "'dimensions' and 'sizes' must be lists of equal length"
        )
    array_sizes = {}
    for index, (dim, size) in enumerate(zip(dims, sizes, strict=False)):
        array_sizes[str(dim)] = int(
            _number(size, source, f"operational_array.sizes[{index}]", positive=True, integer=True)
        )
    unit_energy = float(_number(array["unit_energy"], source, "operational_array.unit_energy"))
    systolic = tuple(str(d) for d in array.get("systolic_dimensions") or [])
    for dim in systolic:
        if dim not in array_sizes:
            raise _fail(
                source, "operational_array.systolic_dimensions", f"unknown dimension '{dim}'"
            )

    memories_data = data["memories"]
    if not isinstance(memories_data, dict) or not memories_data:
        raise _fail(source, "memories", "expected a non-empty mapping of memory name → description")
    memories = []
    for name, mem in memories_data.items():
        path = f"memories.{name}"
        _expect_keys(
            mem,
            _MEMORY_KEYS,
            {"size", "r_cost", "w_cost", "operands", "ports", "served_dimensions"},
            source,
            path,
        )
        size = int(_number(mem["size"], source, f"{path}.size", positive=True, integer=True))
        operands = tuple(str(op) for op in mem["operands"] or [])
        if not operands:
            raise _fail(source, f"{path}.operands", "a memory must hold at least one operand")
        for op in operands:
            if op not in MEMORY_OPERANDS:
                raise _fail(
                    source, f"{path}.operands", f"'{op}' is not one of {', '.join(MEMORY_OPERANDS)}"
                )
        if not isinstance(mem["ports"], list) or not mem["ports"]:
            raise _fail(source, f"{path}.ports", "expected a list of ports")
        ports = tuple(
            _parse_port(p, operands, source, f"{path}.ports[{i}]")
            for i, p in enumerate(mem["ports"])
        )
        served = tuple(str(d) for d in mem["served_dimensions"] or [])
        for dim in served:
            if dim not in array_sizes:
                raise _fail(
                    source,
                    f"{path}.served_dimensions",
                    f"unknown dimension '{dim}' (array has {', '.join(array_sizes)})",
                )
        for op in operands:
            # Every level must at least hand its operand to the level below it.
            direction, short = ("wr_in_by_low", "fl") if op == "O" else ("rd_out_to_low", "tl")
            if not any((op, direction) in p.allocation for p in ports):
                raise _fail(source, f"{path}.ports", f"no port is allocated to '{op}, {short}'")
        memories.append(
            Memory(
                str(name),
                size,
                float(_number(mem["r_cost"], source, f"{path}.r_cost")),
                float(_number(mem["w_cost"], source, f"{path}.w_cost")),
                operands,
                ports,
                served,
            )
        )
    for op in MEMORY_OPERANDS:
        held = [m for m in memories if op in m.operands]
        if not held:
            raise _fail(source, "memories", f"operand '{op}' is held by no memory")
        # Memories are listed from the array upwards, each level larger than the one below.
        for lower, upper in zip(held, held[1:], strict=False):
            if upper.size_bits < lower.size_bits:
                raise _fail(
                    source,
                    f"memories.{upper.name}",
                    f"is smaller than '{lower.name}', listed below it for {op}; "
                    "list memories from the array upwards",
                )
    return Accelerator(str(data["name"]), array_sizes, unit_energy, memories, systolic, source)


def load_accelerator(path: str | Path, *, duplicate_keys: str = "error") -> Accelerator:
    """Read and validate a ZigZag 3.x accelerator YAML file. A key given twice is an error;
    ``duplicate_keys="last"`` keeps the last with a warning, as ZigZag does (its bundled
    ``tpu_like.yaml`` repeats ``ports``).

    >>> load_accelerator("examples/hardware/edge_npu.yaml").name   # doctest: +SKIP
    'edge_npu'
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"accelerator file not found: {path}")
    try:
        data = load_yaml_file(path, duplicate_keys=duplicate_keys)
    except ConfigError as error:
        if "appears twice" not in error.message:
            raise
        raise ConfigError(error.message, hint="remove one of them; or, for a file written "
                          "for ZigZag, read it as ZigZag does (the last value wins): "
                          "--zigzag-yaml on the command line") from None
    return parse_accelerator(data, str(path))
