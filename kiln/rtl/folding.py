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
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import KilnError
from kiln.integer.program import IntegerProgram
from kiln.rtl.emit import Layer, plan_layers
from kiln.rtl.layers import UNFOLDED_KINDS
from kiln.rtl.memories import ROM_LAYOUTS
from kiln.rtl.resource_model import RESOURCES, Budget, family_of, load_model, predict_layer


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
