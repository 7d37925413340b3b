"""One operand's analysis for many loop orders at once (numpy over orders).

:func:`kiln.hw.analysis.analyse_operand` works out, from one operand's own loops, the data each
of its memory levels holds and the four-way data movement between levels. The mapper meets
thousands of distinct operand keys per layer; this module replays that function's
arithmetic for many of them together, step for step (the same float operations in the
same order, so every figure is equal to the last bit; tests compare them key by key).

Where ``analyse_operand`` walks a level's loops, this walks positions: at each position
every order contributes the loop it has there, or nothing when its level is shorter.

    >>> moves = analyse_orders(layer, hw, spatial, op, rel, orders, rows, shape,
    ...                        total_cycles)                          # doctest: +SKIP
    >>> moves.count[0]["rd_out_to_low"]                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.hw.accelerator import Accelerator
from kiln.hw.allocation_batch import OrderBatch
from kiln.hw.analysis import (
    DIRS,
    RD_HIGH,
    RD_LOW,
    WR_HIGH,
    WR_LOW,
    Relevancy,
    spatial_info,
    tensor_elements,
)
from kiln.hw.mapping import SpatialMapping
from kiln.hw.mapping_keys import OperandShape
from kiln.hw.workload import Layer


@dataclass
class OrderMoves:
    """What ``analyse_operand`` returns, one array entry per order: per arch level the bits
    held (``data_bits``) and effective bits; per memory level and direction the movement."""

    unit_count: list[float]
    data_bits: list[np.ndarray]
    effective_bits: list[np.ndarray]
    amount: list[dict[str, np.ndarray]]
    precision: list[dict[str, np.ndarray]]
    period: list[dict[str, np.ndarray]]
    count: list[dict[str, np.ndarray]]
    bw_avg: list[dict[str, np.ndarray]]
    window: list[dict[str, np.ndarray]]


class _LevelProducts:
    """``split_pr_loops`` followed by the products analyse_operand takes of each level:
    the relevant part, the irrelevant part, and whether an irrelevant part exceeds 1."""

    def __init__(self, layer: Layer, op: str, rel: Relevancy, columns: list[str],
                 rows: int) -> None:
        self.layer, self.op, self.rel = layer, op, rel
        self.relevant = np.array([d in rel.r[op] for d in columns], dtype=bool)
        self.irrelevant = np.array([d in rel.ir[op] for d in columns], dtype=bool)
        # Per pr target: (column of dim a or -1, of dim b or -1, ...) and the state of the
        # running tile along it (cumulative sizes, last data and reuse).
        self.targets = []
        for target, (dim_a, dim_b) in rel.pr[op].items():
            _, scale_a, _, scale_b = layer.relations[target]
            divisor = int(np.gcd(scale_a, scale_b))
            self.targets.append({
                "dims": (dim_a, dim_b),
                "columns": (columns.index(dim_a) if dim_a in columns else -1,
                            columns.index(dim_b) if dim_b in columns else -1),
                "steps": (scale_a // divisor, scale_b // divisor),
                "cap": layer.pr_sizes.get(target),
                "cumulative": [np.ones(rows), np.ones(rows)],
                "size": np.ones(rows), "reuse": np.ones(rows),
            })
        self.columns = columns
        self.rows = rows

    def new_level(self) -> None:
        self.r_product = np.ones(self.rows)
        self.ir_product = np.ones(self.rows)
        self.has_ir = np.zeros(self.rows, dtype=bool)

    def _pr(self, target: dict, side: int, size: np.ndarray | float,
            active: np.ndarray) -> None:
        cumulative = target["cumulative"]
        cumulative[side] = np.where(active, cumulative[side] * size, cumulative[side])
        size_a, size_b = np.trunc(cumulative[0]), np.trunc(cumulative[1])
        step_a, step_b = target["steps"]
        extent = size_a * size_b - np.maximum(0, size_b - step_a) * (size_a - step_b)
        data = extent if target["cap"] is None else np.minimum(target["cap"], extent)
        reuse = cumulative[0] * cumulative[1] / data
        r_part = data / target["size"]
        ir_part = reuse / target["reuse"]
        self.r_product = np.where(active, self.r_product * r_part, self.r_product)
        self.ir_product = np.where(active, self.ir_product * ir_part, self.ir_product)
        self.has_ir |= active & (ir_part > 1)
        target["size"] = np.where(active, data, target["size"])
        target["reuse"] = np.where(active, reuse, target["reuse"])

    def temporal(self, dims: np.ndarray, sizes: np.ndarray, active: np.ndarray) -> None:
        """One position of the level's temporal loops (``active``: orders that have one)."""
        relevant = active & self.relevant[dims]
        irrelevant = active & self.irrelevant[dims]
        self.r_product = np.where(relevant, self.r_product * sizes, self.r_product)
        self.ir_product = np.where(irrelevant, self.ir_product * sizes, self.ir_product)
        self.has_ir |= irrelevant & (sizes > 1)
        for target in self.targets:
            for side, column in enumerate(target["columns"]):
                if column >= 0:
                    hit = active & (dims == column) & ~self.relevant[column] & \
                        ~self.irrelevant[column]
                    if hit.any():
                        self._pr(target, side, sizes, hit)

    def spatial(self, dim: str, factor: float) -> None:
        """A spatial loop of the level (the same for every order)."""
        everywhere = np.ones(self.rows, dtype=bool)
        if dim in self.rel.r[self.op]:
            self.r_product = self.r_product * factor
        elif dim in self.rel.ir[self.op]:
            self.ir_product = self.ir_product * factor
            if factor > 1:
                self.has_ir = everywhere
        else:
            for target in self.targets:
                if dim in target["dims"]:
                    self._pr(target, target["dims"].index(dim), factor, everywhere)
                    break


def _level_products(layer: Layer, op: str, rel: Relevancy, orders: OrderBatch,
                    rows: np.ndarray, bounds: np.ndarray, spatial_levels: list,
                    spatial_below: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per arch level (r product, ir product, has an ir part > 1). ``spatial_below``: level
    a holds memory a-1's temporal loops and arch level a's spatial ones ("1s1t"); else
    level a holds memory a-1's temporal loops and arch level a-1's spatial ones ("1s2t")."""
    dims, sizes = orders.dims[rows], orders.sizes[rows]
    count, length = dims.shape
    walker = _LevelProducts(layer, op, rel, list(orders.columns), count)
    levels = bounds.shape[1]  # memory levels + 1 = arch levels
    result = []
    for arch in range(levels):
        walker.new_level()
        if arch >= 1:
            low, high = bounds[:, arch - 1], bounds[:, arch]
            for offset in range(length):
                position = low + offset
                active = position < high
                if not active.any():
                    break
                at = np.minimum(position, length - 1)
                walker.temporal(dims[np.arange(count), at], sizes[np.arange(count), at],
                                active)
        spatial = spatial_levels[arch] if spatial_below else (
            spatial_levels[arch - 1] if arch >= 1 else [])
        for dim, factor in spatial:
            walker.spatial(dim, factor)
        result.append((walker.r_product, walker.ir_product, walker.has_ir))
    return result


def analyse_orders(layer: Layer, hw: Accelerator, spatial: SpatialMapping, op: str,
                   rel: Relevancy, orders: OrderBatch, rows: np.ndarray, shape: OperandShape,
                   total_cycles: float, cache: dict | None = None) -> OrderMoves:
    """``analyse_operand`` of ``op`` for orders ``rows`` of ``orders`` (``shape``: their
    levels after the stationary loops moved down, as :class:`KeyCoder` found them)."""
    out = layer.output
    su_levels, counts = spatial_info(layer, hw, spatial, rel, cache)
    levels = len(hw.levels(layer.links[op]))
    arch_levels = levels + 1
    bounds = shape.bounds[rows]
    count = len(rows)
    top_r = [np.ones(count)] + [shape.top_r[rows, m] for m in range(levels)]
    top_ir = [np.ones(count)] + [shape.top_ir[rows, m] for m in range(levels)]
    cycles_each = [shape.stationary[rows] if op != out else np.ones(count)] + [
        shape.cycles[rows, m] for m in range(levels)]
    # The merged bounds hold levels+1 entries: bounds[:, a] starts memory level a.
    per_level_1s2t = _level_products(layer, op, rel, orders, rows, bounds, su_levels[op],
                                     spatial_below=False)
    if op == out:
        per_level_1s1t = _level_products(layer, op, rel, orders, rows, bounds, su_levels[op],
                                         spatial_below=True)
        has_ir = [has for _, _, has in per_level_1s1t]
        psum = [np.logical_or.reduce(has_ir[m + 1:]) for m in range(arch_levels - 1)] + [
            np.zeros(count, dtype=bool)]
        precision = [np.where(psum[m], layer.precision["O"], layer.precision["O_final"])
                     for m in range(arch_levels)]
    else:
        psum = [np.zeros(count, dtype=bool)] * arch_levels
        precision = [np.full(count, layer.precision[op])] * arch_levels

    running = np.ones(count)
    data_elem = []
    for arch in range(arch_levels):
        running = running * per_level_1s2t[arch][0]
        data_elem.append(np.round(running).astype(np.int64))
    data_bits = [data_elem[a] * precision[a] for a in range(arch_levels)]
    effective = [data_bits[a] // top_r[a].astype(np.int64) for a in range(arch_levels)]
    if op == out:
        ir_lv = [ir for _, ir, _ in per_level_1s1t]
        ir_caal_out = []
        for arch in range(arch_levels):
            product = np.ones(count)
            for value in ir_lv[arch:]:
                product = product * value
            ir_caal_out.append(product)
        ir_caal_out += [np.ones(count), np.ones(count)]
        out_size = tensor_elements(layer, out, layer.sizes, rel)

    boost = counts[op].bw_boost + [1]
    req_low = [data_elem[a] * precision[a] / cycles_each[a] for a in range(arch_levels)]
    req_high = [req_low[a] * boost[a] for a in range(arch_levels)]
    zero = np.zeros(count)
    moves: dict[str, list[dict[str, np.ndarray]]] = {
        name: [] for name in ("amount", "precision", "period", "count", "bw_avg", "window")}
    for m in range(levels):
        fields = {name: dict.fromkeys(DIRS, zero) for name in moves}
        low = (np.trunc(req_high[m]), np.trunc(cycles_each[m]),
               np.trunc(np.floor_divide(total_cycles, cycles_each[m])))
        high = (np.trunc(req_low[m + 1]), np.trunc(cycles_each[m + 1]),
                np.trunc(np.floor_divide(total_cycles, cycles_each[m + 1])))

        def put(direction: str, figures: tuple, amount: np.ndarray,
                where: np.ndarray | None = None, fields: dict = fields) -> None:
            for name, value in zip(("bw_avg", "period", "count"), figures, strict=True):
                fields[name][direction] = value if where is None else np.where(
                    where, value, fields[name][direction])
            fields["amount"][direction] = amount if where is None else np.where(
                where, amount, fields["amount"][direction])

        if op != out:
            put(RD_LOW, low, (data_elem[m] * boost[m]).astype(np.float64))
            put(WR_HIGH, high, data_elem[m + 1].astype(np.float64))
            bits = np.full(count, float(layer.precision[op]))
            fields["precision"][RD_LOW] = fields["precision"][WR_HIGH] = bits
        else:
            put(WR_LOW, low, np.trunc(data_elem[m] * boost[m]).astype(np.float64))
            put(RD_HIGH, high, data_elem[m + 1].astype(np.float64))
            put(RD_LOW, low, fields["amount"][WR_LOW], psum[m])
            put(WR_HIGH, high, fields["amount"][RD_HIGH], psum[m + 1])
            reads_back = np.trunc(out_size * (ir_caal_out[m + 1] - 1)) != 0
            writes_back = np.trunc(out_size * (ir_caal_out[m + 2] - 1)) != 0
            partial, final = layer.precision["O"], layer.precision["O_final"]
            fields["precision"][WR_LOW] = np.where(reads_back, partial, final).astype(float)
            fields["precision"][RD_LOW] = np.where(reads_back, partial, 0).astype(float)
            fields["precision"][WR_HIGH] = np.where(writes_back, partial, 0).astype(float)
            fields["precision"][RD_HIGH] = np.where(writes_back, partial, final).astype(float)
        scale = {RD_LOW: np.trunc(top_ir[m]), WR_LOW: np.trunc(top_ir[m]),
                 RD_HIGH: np.trunc(top_ir[m + 1]), WR_HIGH: np.trunc(top_ir[m + 1])}
        fields["window"] = {d: np.trunc(fields["period"][d] / scale[d]) for d in DIRS}
        if m == levels - 1:
            # Traffic between the top memory and the outside world is not counted.
            for name in fields:
                for d in (RD_HIGH, WR_HIGH):
                    fields[name][d] = zero
        for name in moves:
            moves[name].append(fields[name])
    return OrderMoves(counts[op].unit_count, data_bits, effective, moves["amount"],
                      moves["precision"], moves["period"], moves["count"], moves["bw_avg"],
                      moves["window"])
