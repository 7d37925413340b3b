"""Multi-core systems: cores, the off-chip memory and the links between them.

The file format is Stream's system YAML, read as is::

    name: quad
    cores: {0: cores/array.yaml, 1: cores/array.yaml, 2: cores/simd.yaml, 3: cores/dram.yaml}
    offchip_core_id: 3
    unit_energy_cost: 0          # pJ per bit moved, for links that do not give their own
    core_connectivity:
      - {type: link, cores: [0, 1], bandwidth: 32}          # bits per cycle
      - {type: bus, cores: [0, 1, 2, 3], bandwidth: 128}

A core file is a ZigZag accelerator, plus Stream's keys: ``type`` (``zigzag.compute`` or
``zigzag.offchip``), ``operator_types`` (what a SIMD or pooling core runs; a core without it
runs MAC layers) and ``operand_precision``.

    >>> system = load_system("examples/hardware/quad_core_hetero.yaml")   # doctest: +SKIP
    >>> [core.kind for core in system.cores.values()]                     # doctest: +SKIP
    ['compute', 'compute', 'compute', 'compute', 'simd', 'offchip']
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError
from kiln.hw.accelerator import Accelerator, parse_accelerator
from kiln.strict_yaml import load_yaml_file

MAC_OPERATORS = ("Conv", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger")
_SYSTEM_KEYS = {"name", "cores", "offchip_core_id", "unit_energy_cost", "core_connectivity",
                "core_memory_sharing", "core_coordinates", "bandwidth", "kernel_library",
                "reconfiguration", "technology_node", "memory_aliases"}
_STREAM_CORE_KEYS = {"type", "operator_types", "operand_precision"}


@dataclass
class Core:
    """One core. ``kind`` is ``compute`` (MAC layers), ``simd`` (the operator types it lists)
    or ``offchip`` (the DRAM: only ``memory_bits``, ``bandwidth`` and access energies)."""

    id: int
    name: str
    kind: str
    source: str
    accelerator: Accelerator | None = None
    operator_types: tuple[str, ...] = ()
    memory_bits: int = 0  # on-chip capacity the scheduler fills with weights and activations
    bandwidth: int = 0  # bits per cycle in and out of its top memory (offchip: the DRAM port)
    read_pj_per_bit: float = 0.0  # top memory (offchip: DRAM) read energy per bit
    write_pj_per_bit: float = 0.0
    lanes: int = 1  # operations per cycle of a SIMD core
    op_energy_pj: float = 0.0  # energy of one SIMD operation

    def runs(self, op_type: str) -> bool:
        if self.kind == "offchip":
            return False
        if self.kind == "compute":
            return op_type in MAC_OPERATORS
        return op_type in self.operator_types

    @property
    def label(self) -> str:
        return f"core {self.id} ({self.name})"


@dataclass(frozen=True)
class Link:
    """A point-to-point link or a bus, ``bandwidth`` bits per cycle. As in Stream, a link is
    two channels, one per direction, each with the whole bandwidth (full duplex); a bus is
    one channel that every transfer on it shares, whichever way it goes."""

    index: int
    kind: str
    cores: tuple[int, ...]
    bandwidth: float
    pj_per_bit: float

    def __hash__(self) -> int:
        # A system's links differ by index; routes (tuples of links) key the schedulers'
        # caches, so hashing stays cheap.
        return self.index

    @property
    def label(self) -> str:
        joined = "-".join(str(c) for c in self.cores)
        return f"{self.kind} {joined}"

    def channel(self, sender: int) -> str:
        """The name of the channel a transfer sent from core ``sender`` occupies."""
        if self.kind == "bus":
            return f"link {self.index}"
        receiver = self.cores[1] if sender == self.cores[0] else self.cores[0]
        return f"link {self.index} {sender}>{receiver}"

    def channels(self) -> dict[str, str]:
        """Each channel's name and its label, e.g. ``link 3 0>1`` → ``link 0→1``."""
        if self.kind == "bus":
            return {f"link {self.index}": self.label}
        a, b = self.cores
        return {self.channel(a): f"link {a}→{b}", self.channel(b): f"link {b}→{a}"}


@dataclass
class System:
    """Cores by id, the off-chip core and the links. ``route(a, b)`` is the links a transfer
    from core a to core b occupies (fewest hops, then widest)."""

    name: str
    cores: dict[int, Core]
    offchip_core_id: int
    links: list[Link]
    source: str = "<system>"
    _routes: dict[tuple, Any] = field(default_factory=dict, repr=False)

    @property
    def offchip(self) -> Core:
        return self.cores[self.offchip_core_id]

    @property
    def compute_cores(self) -> list[Core]:
        return [c for c in self.cores.values() if c.kind != "offchip"]

    def cores_for(self, op_type: str) -> list[Core]:
        """The cores that can run an operator type (a SIMD core before a compute core)."""
        return [c for c in self.compute_cores if c.runs(op_type)]

    def channels(self) -> dict[str, Link]:
        """Every channel (a bus, or one direction of a link) by name, with its link."""
        return {name: link for link in self.links for name in link.channels()}

    def channel_labels(self) -> dict[str, str]:
        return {name: label for link in self.links for name, label in link.channels().items()}

    def route_channels(self, source: int, target: int, route: tuple[Link, ...]) -> list[str]:
        """The channels a transfer from ``source`` to ``target`` along ``route`` occupies."""
        key = (source, target, "channels", route)
        if key in self._routes:
            return self._routes[key]  # type: ignore[return-value]

        def walk(here: int, hop: int) -> list[str] | None:
            if hop == len(route):
                return [] if here == target else None
            link = route[hop]
            if here not in link.cores:
                return None
            for there in link.cores:
                if there != here:
                    rest = walk(there, hop + 1)
                    if rest is not None:
                        return [link.channel(here), *rest]
            return None

        found = walk(source, 0)
        if found is None:
            raise ValueError(f"no walk from core {source} to core {target} along {route}")
        self._routes[key] = found  # type: ignore[assignment]
        return found

    def routes(self, source: int, target: int, extra_hops: int = 0) -> list[tuple[Link, ...]]:
        """Every route with the fewest hops (a transfer takes whichever finishes first);
        ``extra_hops``: also routes up to that many hops longer, through other cores but
        not the off-chip one, each link once (a transfer may be split over several)."""
        key = (source, target, "all", extra_hops)
        if key not in self._routes:
            best = self.route(source, target)
            hops = len(best) + extra_hops
            limit = 8 if not extra_hops else 16
            found: list[tuple[Link, ...]] = []

            def walk(here: int, path: tuple[Link, ...], seen: frozenset[int]) -> None:
                if len(found) >= limit:
                    return
                if here == target:
                    found.append(path)
                    return
                if len(path) >= hops or (extra_hops and path and here == self.offchip_core_id):
                    return
                for link in self.links:
                    if here in link.cores and not (extra_hops and link in path):
                        for there in link.cores:
                            if there != here and there not in seen:
                                walk(there, path + (link,), seen | {there})

            walk(source, (), frozenset({source}))
            found.sort(key=lambda p: (len(p), -min([link.bandwidth for link in p] or
                                                   [math.inf])))
            self._routes[key] = found or [best]  # type: ignore[assignment]
        return self._routes[key]  # type: ignore[return-value]

    def route(self, source: int, target: int) -> tuple[Link, ...]:
        key = (source, target)
        if key not in self._routes:
            self._routes[key] = self._shortest(source, target)
        return self._routes[key]

    def _shortest(self, source: int, target: int) -> tuple[Link, ...]:
        if source == target:
            return ()
        # Breadth-first over cores; among equal hop counts the widest bottleneck wins.
        best: dict[int, tuple[int, float, tuple[Link, ...]]] = {source: (0, math.inf, ())}
        queue = deque([source])
        while queue:
            here = queue.popleft()
            hops, width, path = best[here]
            for link in self.links:
                if here not in link.cores:
                    continue
                for there in link.cores:
                    if there == here:
                        continue
                    candidate = (hops + 1, min(width, link.bandwidth), path + (link,))
                    known = best.get(there)
                    if known is None:
                        best[there] = candidate
                        queue.append(there)
                    elif known[0] == candidate[0] and candidate[1] > known[1]:
                        best[there] = candidate
        if target not in best:
            raise ConfigError(
                f"{self.source}: no link connects {self.cores[source].label} to "
                f"{self.cores[target].label}")
        return best[target][2]


def _fail(source: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {message}")


def _positive(value: Any, source: str, path: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, path, f"expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise _fail(source, path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def _core_path(reference: str, system_dir: Path) -> Path:
    # Stream's rule: a bare file name is looked up in cores/ next to the system file first.
    candidates = [system_dir / reference]
    if "/" not in reference:
        candidates.insert(0, system_dir / "cores" / reference)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1]


def _offchip_core(core_id: int, data: dict, source: str) -> Core:
    memories = data.get("memories")
    if not isinstance(memories, dict) or not memories:
        raise _fail(source, "memories", "the off-chip core needs its DRAM memory")
    name, dram = next(iter(memories.items()))
    size = _positive(dram.get("size"), source, f"memories.{name}.size")
    ports = dram.get("ports") or []
    widths = [_positive(p.get("bandwidth_max", p.get("bandwidth_min")), source,
                        f"memories.{name}.ports[{i}].bandwidth_max")
              for i, p in enumerate(ports)]
    if not widths:
        raise _fail(source, f"memories.{name}.ports", "the DRAM needs a port")
    width = max(widths)
    return Core(core_id, str(data.get("name", name)), "offchip", source,
                memory_bits=int(size), bandwidth=int(width),
                read_pj_per_bit=_positive(dram.get("r_cost", 0), source,
                                          f"memories.{name}.r_cost", allow_zero=True) / width,
                write_pj_per_bit=_positive(dram.get("w_cost", 0), source,
                                           f"memories.{name}.w_cost", allow_zero=True) / width)


def _top_memories(hw: Accelerator) -> list:
    tops = []
    for operand in ("I1", "I2", "O"):
        top = hw.levels(operand)[-1]
        if top not in tops:
            tops.append(top)
    return tops


def load_core(core_id: int, path: Path) -> Core:
    """One core file: a ZigZag accelerator, Stream's offchip core or a SIMD/pooling core."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"core {core_id}: core file not found: {path}")
    data = load_yaml_file(path, duplicate_keys="last")
    if not isinstance(data, dict):
        raise _fail(source, "<root>", "expected a mapping")
    kind_text = str(data.get("type", "zigzag.compute"))
    if kind_text not in ("zigzag.compute", "zigzag.offchip", "compute", "offchip"):
        raise _fail(source, "type", f"unknown core type '{kind_text}' "
                    "(kiln reads zigzag.compute and zigzag.offchip)")
    if kind_text.endswith("offchip"):
        return _offchip_core(core_id, data, source)
    operator_types = data.get("operator_types") or []
    if not isinstance(operator_types, list):
        raise _fail(source, "operator_types", "expected a list of ONNX operator types")
    zigzag = {k: v for k, v in data.items() if k not in _STREAM_CORE_KEYS}
    hw = parse_accelerator(zigzag, source)
    tops = _top_memories(hw)
    memory_bits = sum(m.size_bits for m in tops)
    top = max(tops, key=lambda m: m.size_bits)
    widths = [p.bandwidth_max for p in top.ports]
    width = max(widths)
    kind = "simd" if operator_types else "compute"
    return Core(core_id, hw.name, kind, source, accelerator=hw,
                operator_types=tuple(str(t) for t in operator_types),
                memory_bits=memory_bits, bandwidth=int(width),
                read_pj_per_bit=top.read_energy / width, write_pj_per_bit=top.write_energy / width,
                lanes=hw.total_units, op_energy_pj=hw.unit_energy)


def parse_system(data: Any, source: str, base_dir: Path) -> System:
    """Validate a Stream system description (already loaded YAML) and build it."""
    if not isinstance(data, dict):
        raise _fail(source, "<root>", "expected a mapping")
    for key in data:
        if key not in _SYSTEM_KEYS:
            raise _fail(source, str(key),
                        f"unknown key (allowed: {', '.join(sorted(_SYSTEM_KEYS))})")
    for key in ("name", "cores", "offchip_core_id", "core_connectivity"):
        if key not in data:
            raise _fail(source, key, "missing")
    cores_data = data["cores"]
    if not isinstance(cores_data, dict) or not cores_data:
        raise _fail(source, "cores", "expected a mapping of core id → core file")
    cores: dict[int, Core] = {}
    for core_id, reference in cores_data.items():
        if isinstance(core_id, bool) or not isinstance(core_id, int) or core_id < 0:
            raise _fail(source, f"cores.{core_id}", "core ids are integers >= 0")
        if not isinstance(reference, str):
            raise _fail(source, f"cores.{core_id}", "expected the path of a core file")
        try:
            cores[core_id] = load_core(core_id, _core_path(reference, base_dir))
        except ConfigError as error:
            raise ConfigError(f"{source}: cores.{core_id}: {error.message}") from None
    offchip_id = data["offchip_core_id"]
    if offchip_id not in cores:
        raise _fail(source, "offchip_core_id", f"no core {offchip_id} (cores: "
                    f"{', '.join(str(c) for c in cores)})")
    if cores[offchip_id].kind != "offchip":
        raise _fail(source, "offchip_core_id", f"core {offchip_id} is not an offchip core "
                    "(its file needs type: zigzag.offchip)")
    for core in cores.values():
        if core.kind == "offchip" and core.id != offchip_id:
            raise _fail(source, f"cores.{core.id}", "a second offchip core; kiln models one DRAM")
    default_energy = _positive(data.get("unit_energy_cost", 0), source, "unit_energy_cost",
                               allow_zero=True)
    links_data = data["core_connectivity"]
    if not isinstance(links_data, list) or not links_data:
        raise _fail(source, "core_connectivity", "expected a list of links and buses")
    links = []
    for index, item in enumerate(links_data):
        path = f"core_connectivity[{index}]"
        if not isinstance(item, dict):
            raise _fail(source, path, "expected a mapping with type, cores and bandwidth")
        unknown = set(item) - {"type", "cores", "bandwidth", "unit_energy_cost"}
        if unknown:
            raise _fail(source, f"{path}.{sorted(unknown)[0]}", "unknown key (allowed: type, "
                        "cores, bandwidth, unit_energy_cost)")
        kind = item.get("type", "link")
        if kind not in ("link", "bus"):
            raise _fail(source, f"{path}.type", f"'{kind}' is neither link nor bus")
        members = item.get("cores")
        if not isinstance(members, list) or len(members) < 2:
            raise _fail(source, f"{path}.cores", "expected a list of at least two core ids")
        for position, member in enumerate(members):
            if member not in cores:
                raise _fail(source, f"{path}.cores[{position}]",
                            f"core {member} does not exist (cores: "
                            f"{', '.join(str(c) for c in cores)})")
        if kind == "link" and len(members) != 2:
            raise _fail(source, f"{path}.cores", "a link joins exactly two cores (use a bus)")
        if "bandwidth" not in item:
            raise _fail(source, f"{path}.bandwidth", "missing")
        bandwidth = _positive(item["bandwidth"], source, f"{path}.bandwidth")
        energy = _positive(item.get("unit_energy_cost", default_energy), source,
                           f"{path}.unit_energy_cost", allow_zero=True)
        links.append(Link(index, kind, tuple(int(m) for m in members), bandwidth, energy))
    sharing = data.get("core_memory_sharing") or []
    if sharing:
        # Stream lets listed cores share one top memory; kiln keeps each core's own capacity
        # and says so rather than silently modelling something else.
        raise _fail(source, "core_memory_sharing",
                    "shared memories between cores are not modelled by kiln's scheduler")
    system = System(str(data["name"]), cores, int(offchip_id), links, source)
    for core in system.compute_cores:
        system.route(core.id, offchip_id)  # every core must reach the DRAM
    return system


def load_system(path: str | Path) -> System:
    """Read and validate a Stream system YAML file (cores, off-chip core, links).

    >>> system = load_system("examples/hardware/quad_core_hetero.yaml")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"system file not found: {path}")
    return parse_system(load_yaml_file(path, duplicate_keys="last"), str(path), path.parent)
