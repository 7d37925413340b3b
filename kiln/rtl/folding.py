"""Fold a program to a device: choose P_in × P_out per layer so the layers' cycle counts are
balanced (the slowest layer sets the throughput) and the estimated resources fit.

The stream between two layers has one width (the P_out of one layer is the P_in of the
next), so a folding is a chain of stream widths; every chain of powers of two up to each
stream's element count is scored (cycles from :func:`kiln.rtl.emit.plan_layers`' formulas,
resources from a linear model per unit fitted to Yosys runs,
``benchmarks/rtl_resource_model.py`` → ``resource_model.json``) and the fastest one that fits
wins (the cheapest, with ``target_cycles``).

>>> folding = fold(program, budget=Budget.of_device("ecp5-25k"))    # doctest: +SKIP
>>> [(layer.name, layer.p_in, layer.p_out, layer.cycles) for layer in folding.layers]
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, KilnError
from kiln.integer.program import IntegerProgram
from kiln.rtl.emit import Layer, plan_layers
from kiln.rtl.layers import UNFOLDED_KINDS, UNITS_WITHOUT_MATRIX
from kiln.rtl.memories import ROM_LAYOUTS, block_rams, in_block_ram, weight_rom_shape
from kiln.rtl.requant import requant_dsps

RESOURCES = ("lut", "ff", "dsp", "bram")
MODEL_PATH = Path(__file__).with_name("resource_model.json")
@dataclass(frozen=True)
class Budget:
    """Resources a design may use."""

    lut: int
    ff: int
    dsp: int
    bram: int
    name: str = "budget"

    @classmethod
    def of_device(cls, name: str) -> Budget:
        from kiln.rtl.fpga import device

        dev = device(name)
        return cls(dev.luts, dev.flip_flops, dev.dsps, dev.brams, dev.name)

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``lut=20000,dsp=28,bram=56`` (ff defaults to the LUTs; a missing one is 0)."""
        values: dict[str, int] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key not in RESOURCES or not value.strip().isdigit():
                raise ConfigError(f"--budget '{text}': use lut=N,ff=N,dsp=N,bram=N "
                                  f"(got '{part}')")
            values[key] = int(value)
        if "lut" not in values:
            raise ConfigError(f"--budget '{text}': give at least lut=N")
        values.setdefault("ff", values["lut"])
        return cls(values["lut"], values["ff"], values.get("dsp", 0), values.get("bram", 0),
                   "budget " + text)

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in RESOURCES}


def family_of(budget: Budget) -> str:
    """The FPGA family a budget is for (a budget that names no device: ECP5)."""
    for family in ("ice40", "nexus"):
        if budget.name.startswith(family):
            return family
    return "ecp5"


# --- the resource model ---------------------------------------------------------------------
def _line_buffer(layer: dict[str, Any], rows: int) -> tuple[int, int]:
    """(width, depth) of a line buffer of ``rows`` rows rounded up to a power of two, each
    row a power-of-two stride of words (kiln_im2col, kiln_maxpool)."""
    geometry = layer["geometry"]
    slots = 1 << max(rows - 1, 0).bit_length()
    stride = 1 << max(geometry["W"] * geometry["CB"] - 1, 1).bit_length()
    return layer["p_in"] * layer["in_bits"], slots * stride


def memories(layer: dict[str, Any]) -> list[tuple[int, int]]:
    """(width, depth) of the unit's memories: weight ROM, the two input buffers (a
    power-of-two depth each) and the line buffer of an im2col or max pool."""
    skips = [(layer["p_in"] * layer["in_bits"], depth) for depth in layer.get("skip_depths", [])
             if depth]  # the skip FIFOs in front of the unit
    if layer["kind"] == "maxpool":
        return [_line_buffer(layer, layer["geometry"]["K"]), *skips]
    if layer["kind"] == "add":
        return skips
    in_beats = -(-layer["in_n"] // layer["p_in"])
    weight_bits = layer.get("wc_bits") or layer["weight_bits"] + 1  # stored centred
    lanes, words = weight_rom_shape(layer)
    out = [(lanes * weight_bits, words),
           (layer["p_in"] * layer["in_bits"], 2 << max(in_beats - 1, 1).bit_length())]
    if layer["kind"] in ("conv", "avgpool"):
        geometry = layer["geometry"]
        out.append(_line_buffer(layer, geometry["DILATION"] * (geometry["FY"] - 1) + 1))
    return out + skips


def features(layer: dict[str, Any]) -> dict[str, float]:
    """What the model multiplies by its coefficients, per unit."""
    if layer["kind"] == "add":  # the lanes of arithmetic: one turn's
        return {"add_lanes": float(layer["geometry"].get("LANES_PER_TURN", layer["p_in"]))}
    if layer["kind"] == "maxpool":
        geometry = layer["geometry"]
        return {"pool": 1.0, "pool_buffer_bits": float(geometry["W"] * geometry["CB"]
                                                       * layer["p_in"] * layer["in_bits"])}
    small = sum(w * d for w, d in memories(layer) if not in_block_ram(w, d))
    products = weight_rom_shape(layer)[0]  # a multiplier per weight of a block
    out = {"unit": 1.0, "products": float(products),
           "product_bits": float(products * layer["weight_bits"] * layer["in_bits"]),
           "lanes": float(layer["p_out"]), "requants": float(layer["requants"]),
           "requant_dsps": float(_requant_dsps(layer)),
           "inputs": float(layer["p_in"] * layer["in_bits"]), "small_memory_bits": float(small)}
    if layer["kind"] in ("conv", "avgpool"):
        geometry = layer["geometry"]
        out["im2col"] = 1.0
        out["line_bits"] = float(geometry["FY"] * geometry["W"] * geometry["CB"]
                                 * layer["p_in"] * layer["in_bits"])
    return out


LUT_FEATURES = ("unit", "products", "lanes", "requants", "small_memory_bits", "im2col",
                "line_bits", "pool", "pool_buffer_bits")
FF_FEATURES = ("unit", "products", "lanes", "requants", "inputs", "im2col", "pool")
DSP_FEATURES = ("products", "requant_dsps", "im2col")  # no intercept: DSPs are multipliers


def _requant_dsps(layer: dict[str, Any]) -> int:
    """The requantizers' DSP tiles of a layer's fields (a plain lookup: the folding scores
    every layer of every chain)."""
    return requant_dsps(layer["kind"], layer["requants"], layer.get("passes", 1),
                        layer.get("acc_bits", 32), layer.get("m_bits", 31))


def fit_resource_model(samples: list[dict[str, Any]], family: str) -> dict[str, Any]:
    """Least-squares coefficients (non-negative by clipping) for LUTs, FFs and DSPs."""
    model: dict[str, Any] = {"family": family, "samples": len(samples)}
    for resource, names in (("lut", LUT_FEATURES), ("ff", FF_FEATURES),
                            ("dsp", DSP_FEATURES)):
        rows = [features(s["layer"]) for s in samples]
        matrix = np.array([[row.get(n, 0.0) for n in names] for row in rows])
        target = np.array([s["used"][resource] for s in samples], dtype=float)
        active = matrix.any(axis=0)
        coefficients = np.zeros(len(names))
        if active.any():
            solution, *_ = np.linalg.lstsq(matrix[:, active], target, rcond=None)
            coefficients[active] = np.clip(solution, 0, None)
        model[resource] = {n: round(float(c), 4) for n, c in zip(names, coefficients,
                                                                strict=True)}
    return model


WINDOW_FEATURES = ("im2col", "line_bits", "pool", "pool_buffer_bits")


def lut_parts(row: dict[str, float], model: dict[str, Any]) -> tuple[float, float]:
    """(matrix unit, window unit) LUTs of the per-unit fit, before flattening."""
    lut = model["lut"]
    window = sum(lut.get(n, 0.0) * row.get(n, 0.0) for n in WINDOW_FEATURES)
    total = sum(lut.get(n, 0.0) * v for n, v in row.items())
    return total - window, window


def load_model(family: str) -> dict[str, Any]:
    if not MODEL_PATH.is_file():
        raise KilnError(f"{MODEL_PATH}: the resource model is missing",
                        hint="run benchmarks/rtl_resource_model.py")
    stored = json.loads(MODEL_PATH.read_text())
    if family not in stored:
        fallback = next(iter(stored.values()))
        return {**fallback, "family": family, "borrowed_from": fallback["family"]}
    return stored[family]


def predict_layer(layer: dict[str, Any] | Layer, model: dict[str, Any]) -> dict[str, float]:
    """Estimated LUT/FF/DSP/BRAM of one emitted layer (its im2col included)."""
    layer = layer.__dict__ if isinstance(layer, Layer) else layer
    row = features(layer)
    if layer["kind"] == "add":
        # Not in the fitted model: per lane, measured with Yosys on ECP5 (kiln_add: two
        # constant products, a sum and a clamp, registered), plus its skip FIFOs.
        lanes = row["add_lanes"]
        return {"lut": ADD_LUT_PER_LANE * lanes, "ff": ADD_FF_PER_LANE * lanes,
                "dsp": ADD_DSP_PER_LANE * lanes,
                "bram": float(sum(block_rams(w, d) for w, d in memories(layer)
                                  if in_block_ram(w, d)))}
    # The fit is per unit (hierarchy kept); flatten_* scales it to the flattened netlist,
    # LUTs separately for the matrix units and the window units (im2col, max pool).
    out = {resource: sum(model[resource].get(n, 0.0) * v for n, v in row.items())
           * model.get(f"flatten_{resource}", 1.0) for resource in ("ff", "dsp")}
    dense, window = lut_parts(row, model)
    out["lut"] = (dense * model.get("flatten_lut_dense", 1.0)
                  + window * model.get("flatten_lut_window", 1.0))
    # memories() lists the weight ROM first
    weight_rom = 0 if layer["kind"] not in UNITS_WITHOUT_MATRIX else None
    layout = rom_layout_of(layer)
    out["bram"] = float(sum(block_rams(w, d, layout=layout if index == weight_rom else "whole")
                            for index, (w, d) in enumerate(memories(layer))
                            if in_block_ram(w, d)))
    return out


def rom_layout_of(layer: dict[str, Any]) -> str:
    """How an emitted layer's weight ROM is laid out (kiln.rtl.memories.ROM_LAYOUTS)."""
    if layer.get("w_pack", 1) > 1:
        return "packed"
    return "banked" if layer.get("w_banks", 1) > 1 else "whole"


ADD_LUT_PER_LANE, ADD_FF_PER_LANE, ADD_DSP_PER_LANE = 150.0, 200.0, 4.0


# --- folding ---------------------------------------------------------------------------------
@dataclass
class FoldedLayer:
    name: str
    kind: str
    p_in: int
    p_out: int
    cycles: int
    estimate: dict[str, float]


@dataclass
class Folding:
    """A chosen folding: per layer P_in × P_out, cycles and estimated resources."""

    layers: list[FoldedLayer]
    budget: Budget
    uniform: bool = False
    notes: list[str] = field(default_factory=list)
    rom_layout: str = "banked"  # how deep weight ROMs are laid out (kiln.rtl.emit's)

    @property
    def cycles(self) -> int:
        return max(layer.cycles for layer in self.layers)

    @property
    def estimate(self) -> dict[str, float]:
        return {r: sum(layer.estimate[r] for layer in self.layers) for r in RESOURCES}

    def parallelism(self) -> dict[str, tuple[int, int]]:
        """For :func:`kiln.rtl.emit`: weighted layer name -> (P_in, P_out)."""
        return {layer.name: (layer.p_in, layer.p_out) for layer in self.layers
                if layer.kind not in UNFOLDED_KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "estimate": self.estimate,
                "budget": self.budget.as_dict(), "uniform": self.uniform,
                "layers": [layer.__dict__ for layer in self.layers]}


# LUT and flip-flop estimates are within about 15% of Yosys (benchmarks/rtl_resource_model.py);
# DSPs are counted exactly and BRAM within a few percent: only logic keeps a margin.
LOGIC_HEADROOM = 0.9


def _fits(estimate: dict[str, float], budget: Budget) -> bool:
    return all(estimate[r] <= getattr(budget, r) * (LOGIC_HEADROOM if r in ("lut", "ff")
                                                      else 1.0) for r in RESOURCES)


def _candidates(limit: int, cap: int) -> list[int]:
    """Powers of two up to the first that covers ``limit`` elements, at most ``cap``."""
    widths, width = [], 1
    while width <= cap:
        widths.append(width)
        if width >= limit:
            break
        width *= 2
    return widths


def _score(plans: dict[tuple[int, int], list[Layer]], chain: tuple[int, ...],
           model: dict[str, Any], budget: Budget
           ) -> tuple[list[FoldedLayer], dict[str, float]]:
    """The layers of ``chain`` (stream widths) with cycles and estimates. ``plans`` holds
    :func:`plan_layers` at every uniform (P_in, P_out): a layer's shape and cycles depend
    only on its own widths."""
    planned_layers = []
    stream = 0
    for position, layer in enumerate(plans[(1, 1)]):
        if layer.kind in UNFOLDED_KINDS:
            planned_layers.append(plans[(chain[stream], chain[stream])][position])
        else:
            planned_layers.append(plans[(chain[stream], chain[stream + 1])][position])
            stream += 1
    return _score_layers(planned_layers, model, budget)


def _score_layers(planned_layers: list[Layer], model: dict[str, Any], budget: Budget
                  ) -> tuple[list[FoldedLayer], dict[str, float]]:
    """Planned layers with cycles and estimates. DSP overflow moves every multiplier into
    logic."""
    folded = [FoldedLayer(planned.name, planned.kind, planned.p_in, planned.p_out,
                          planned.cycles_per_input, predict_layer(planned, model))
              for planned in planned_layers]
    total = {r: sum(f.estimate[r] for f in folded) for r in RESOURCES}
    if total["dsp"] > budget.dsp and budget.dsp == 0:
        # A device without DSPs: every multiplier in logic (kiln.rtl.fpga does the same).
        # Where there are DSPs, a folding that needs more does not fit: multipliers in logic
        # would not close at the units' clock.
        per_dsp = model.get("lut_per_dsp_in_logic", 80.0)
        total = {**total, "dsp": 0.0, "lut": total["lut"] + total["dsp"] * per_dsp}
    return folded, total


def is_graph(layers: list[Layer]) -> bool:
    """Whether planned layers make more than a chain of matrix units and max pools: forks,
    adds, per-channel window units (their widths are tied: they fold uniformly)."""
    return any(layer.kind in ("add", "avgpool") or (layer.diagonal and layer.taps > 1)
               or (layer.sources and layer.sources != [index - 1])
               for index, layer in enumerate(layers))


def _stream_classes(base: list[Layer], max_width: int) -> tuple[dict[int, int], dict[int, int]]:
    """Streams (-1: the input, i: layer i's output) grouped into classes of one width (an
    unfolded unit's output and inputs, a depthwise conv's input and output), and each
    class's widest useful width (the power of two that covers its channels)."""
    parent: dict[int, int] = {-1: -1}

    def find(stream: int) -> int:
        while parent[stream] != stream:
            stream = parent[stream]
        return stream

    channels = {-1: base[0].stream_in_n}
    for index, layer in enumerate(base):
        parent[index] = index
        channels[index] = layer.out_n
        sources = layer.sources or [index - 1]
        if layer.kind in UNFOLDED_KINDS or (layer.diagonal and layer.taps > 1):
            for source in sources:
                parent[find(source)] = find(index)
    classes = {stream: find(stream) for stream in parent}
    caps: dict[int, int] = {}
    for stream, root in classes.items():
        caps[root] = max(caps.get(root, 1), _candidates(channels[stream], max_width)[-1])
    return classes, caps


def _class_parallelism(base: list[Layer], classes: dict[int, int], widths: dict[int, int]
                       ) -> list[tuple[int, int]]:
    """(P_in, P_out) per weighted layer from a width per stream class."""
    return [(widths[classes[(layer.sources or [index - 1])[0]]], widths[classes[index]])
            for index, layer in enumerate(base) if layer.kind not in UNFOLDED_KINDS]


def _fold_graph(program: IntegerProgram, base: list[Layer], budget: Budget,
                target_cycles: int | None, max_width: int, model: dict[str, Any],
                rom_layout: str) -> tuple[list[FoldedLayer], dict[str, float]] | None:
    """A graph's folding, slowest layer first: start every stream class at width 1, then
    keep doubling the class (the slowest layer's input or output) that most lowers the
    sorted cycle counts while the design fits (FINN folds the same way). None when even
    width 1 does not fit."""
    classes, caps = _stream_classes(base, max_width)

    def score(widths: dict[int, int]) -> tuple[list[FoldedLayer], dict[str, float]]:
        planned = plan_layers(program, _class_parallelism(base, classes, widths),
                              rom_layout=rom_layout)
        return _score_layers(planned, model, budget)

    widths = {root: 1 for root in caps}
    folded, total = score(widths)
    if not _fits(total, budget):
        return None
    for _ in range(4):  # grow, trim what the slowest layer does not need, grow again
        widths, folded, total = _grow(widths, folded, total, caps, classes, base, score,
                                      budget, target_cycles)
        slowest = max(f.cycles for f in folded)
        trimmed = False
        for root in sorted(widths):
            if widths[root] == 1:
                continue
            trial = {**widths, root: widths[root] // 2}
            trial_folded, trial_total = score(trial)
            if max(f.cycles for f in trial_folded) <= slowest:
                widths, folded, total, trimmed = trial, trial_folded, trial_total, True
        if not trimmed:
            break
    return folded, total


def _ranking(folded: list[FoldedLayer]) -> tuple[int, ...]:
    return tuple(sorted((f.cycles for f in folded), reverse=True))


def _grow(widths: dict[int, int], folded: list[FoldedLayer], total: dict[str, float],
          caps: dict[int, int], classes: dict[int, int], base: list[Layer], score: Any,
          budget: Budget, target_cycles: int | None
          ) -> tuple[dict[int, int], list[FoldedLayer], dict[str, float]]:
    """Double, while the design fits, the class (the slowest layer's input or output
    stream) that most lowers the sorted cycle counts."""
    while target_cycles is None or max(f.cycles for f in folded) > target_cycles:
        slowest = max(range(len(folded)), key=lambda i: folded[i].cycles)
        layer = base[slowest]
        touching = {classes[(layer.sources or [slowest - 1])[0]], classes[slowest]}
        best = None
        for root in sorted(touching):
            if widths[root] >= caps[root]:
                continue
            trial = {**widths, root: widths[root] * 2}
            trial_folded, trial_total = score(trial)
            if not _fits(trial_total, budget) or _ranking(trial_folded) >= _ranking(folded):
                continue
            key = (_ranking(trial_folded), trial_total["lut"])
            if best is None or key < best[0]:
                best = (key, trial, trial_folded, trial_total)
        if best is None:
            break
        _, widths, folded, total = best
    return widths, folded, total


def fold(program: IntegerProgram, *, budget: Budget, target_cycles: int | None = None,
         uniform: bool = False, max_width: int = 64) -> Folding:
    """The fastest folding that fits ``budget`` (with ``target_cycles``: the cheapest in
    LUTs whose slowest layer takes at most that many cycles); ``uniform`` restricts to one
    P for every stream. Raises a KilnError with the smallest design's needs if none fits."""
    # Banks one block RAM deep take the most block RAMs, packed rows fewer (more logic),
    # whole ROMs the fewest at a lower clock (kiln.rtl.memories): the first that fits wins.
    # (If none does, the last error names the needs.)
    for layout in ROM_LAYOUTS[:-1]:
        try:
            folding = _fold(program, budget, target_cycles, uniform, max_width,
                            rom_layout=layout)
        except KilnError:
            continue
        if layout == "packed":
            folding.notes.append("the deep weight ROMs are packed into full block RAM rows "
                                 "(banks one block deep would not fit)")
        return folding
    folding = _fold(program, budget, target_cycles, uniform, max_width, rom_layout="whole")
    folding.notes.append("the deep weight ROMs are not cut into banks (their block RAMs "
                         "would not fit): the design closes at a lower clock")
    return folding


def _fold(program: IntegerProgram, budget: Budget, target_cycles: int | None, uniform: bool,
          max_width: int, *, rom_layout: str) -> Folding:
    base = plan_layers(program, (1, 1), rom_layout=rom_layout)
    model = load_model(family_of(budget))
    weighted = [layer for layer in base if layer.kind not in UNFOLDED_KINDS]
    streams = [weighted[0].stream_in_n] + [layer.out_n for layer in weighted]
    options = [_candidates(n, max_width) for n in streams]
    widest = max(len(o) for o in options)
    graph = is_graph(base)
    if graph and not uniform:
        greedy = _fold_graph(program, base, budget, target_cycles, max_width, model,
                             rom_layout)
        if greedy is not None:
            return Folding(greedy[0], budget, uniform, rom_layout=rom_layout)
        chains = []  # nothing fits: the error below names the smallest design's needs
    elif graph:  # tied widths: each candidate is one P, planned as it is
        chains = [(2 ** k,) for k in range(widest)]
    else:
        widths = sorted({w for o in options for w in o})
        plans = {(a, b): plan_layers(program, (a, b), rom_layout=rom_layout)
                 for a in widths for b in widths}
        if uniform:
            chains = [tuple(min(2 ** k, o[-1]) for o in options) for k in range(widest)]
        else:
            chains = list(itertools.product(*options))
    best: tuple | None = None
    smallest: tuple | None = None
    for chain in chains:
        if graph:
            classes, caps = _stream_classes(base, max_width)
            widths = {root: min(chain[0], cap) for root, cap in caps.items()}
            planned = plan_layers(program, _class_parallelism(base, classes, widths),
                                  rom_layout=rom_layout)
            folded, total = _score_layers(planned, model, budget)
        else:
            folded, total = _score(plans, chain, model, budget)
        cycles = max(f.cycles for f in folded)
        if smallest is None or total["lut"] < smallest[1]["lut"]:
            smallest = (folded, total)
        if not _fits(total, budget):
            continue
        if target_cycles is not None:
            if cycles > target_cycles:
                continue
            key = (total["lut"], total["dsp"], cycles)
        else:
            key = (cycles, total["lut"], total["dsp"])
        if best is None or key < best[0]:
            best = (key, folded, chain)
    if best is None:
        if smallest is None:  # a graph whose narrowest folding does not fit
            classes, caps = _stream_classes(base, max_width)
            planned = plan_layers(program, _class_parallelism(
                base, classes, {root: 1 for root in caps}), rom_layout=rom_layout)
            smallest = _score_layers(planned, model, budget)
        folded, total = smallest
        needs = ", ".join(f"{r} {total[r]:,.0f} (has {getattr(budget, r):,})"
                          for r in RESOURCES if total[r] > getattr(budget, r))
        what = (f"no folding reaches {target_cycles:,} cycles within {budget.name}"
                if target_cycles is not None else f"no folding fits {budget.name}")
        smallest_chain = "-".join(str(f.p_in) for f in folded
                                  if f.kind not in UNFOLDED_KINDS)
        raise KilnError(f"{what}: the smallest design (stream widths {smallest_chain}...) "
                        f"needs {needs or 'more cycles than the target'}",
                        hint="raise the budget or the target cycles, or narrow the widths")
    return Folding(best[1], budget, uniform, rom_layout=rom_layout)
