"""Requantizer widths for the generated hardware: as narrow as the layer allows, bit-exact.

The engine requantizes with a 31-bit M0 and a 32-bit accumulator. A layer's accumulators
never reach most of that range, and an 8-bit output has only 255 steps, so a narrower
multiplier often gives the same output for every accumulator the layer can produce. This
module proves that per channel and chooses the narrowest widths, so that the requantizer's
product fits one 18x18 DSP tile where it can (four tiles for 32x32):

* :func:`accumulator_range`: the exact range of a layer's accumulator (and of every partial
  sum on the way) from its centred weights, bias and input range;
* :func:`narrow_multiplier`: the fewest bits of M0 (rounded) whose output equals the
  engine's for every accumulator in that range.

Why the check is exact: for a positive multiplier M and shift S the output is
clamp(floor((acc·M + R) / 2^S) + Z, LO, HI), a step function of acc. It is LO plus the
number of levels v in (LO, HI] with acc >= T_v, where T_v = ceil(((v - Z)·2^S - R) / M). Two
multipliers give the same output on [a, b] exactly when their thresholds, clipped to
[a, b + 1], are equal.

>>> m, shift, bits = narrow_multiplier(1 << 30, 2, "nearest", 0, 0, 255, -1000, 1000)
>>> bits   # M = 2^30 is one bit, shifted
1
"""

from __future__ import annotations

import functools

import numpy as np

#: levels beyond which the per-level check is skipped (the full multiplier is kept)
MAX_CHECKED_LEVELS = 1 << 13


def accumulator_range(weight: np.ndarray, bias: np.ndarray, input_low: int, input_high: int
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """(lowest, highest) accumulator per output channel, and the bits of a signed register
    that holds every partial sum of every channel.

    ``weight`` is [out, in], already centred on the weight zero point; inputs (already centred
    on their zero point) lie in [input_low, input_high].

    >>> low, high, bits = accumulator_range(np.array([[1, -2]]), np.array([3]), 0, 255)
    >>> int(low[0]), int(high[0]), bits
    (-507, 258, 11)
    """
    weight = weight.astype(np.int64)
    at_low, at_high = weight * input_low, weight * input_high
    low = bias + np.minimum(at_low, at_high).sum(axis=1)
    high = bias + np.maximum(at_low, at_high).sum(axis=1)
    # Every partial sum (any subset of the products, with or without the bias) is bounded
    # by the sum of magnitudes.
    magnitude = np.abs(bias) + np.maximum(np.abs(at_low), np.abs(at_high)).sum(axis=1)
    bound = int(magnitude.max(initial=0))
    return low, high, min(32, bound.bit_length() + 1)


def _thresholds(multiplier: int, shift: int, nearest: bool, levels: range, low: int,
                high: int) -> list[int]:
    rounding = (1 << (shift - 1)) if nearest and shift > 0 else 0
    out = []
    for level in levels:
        threshold = -((rounding - (level << shift)) // multiplier)  # ceil division
        out.append(min(max(threshold, low), high + 1))
    return out


def narrow_multiplier(m0: int, n: int, rounding: str, zero_point: int, qmin: int, qmax: int,
                      acc_low: int, acc_high: int) -> tuple[int, int, int]:
    """(m, s, bits): the narrowest m = round(M0 / 2^(31-b)) with (acc·m + R) >> s equal to
    the engine's (acc·M0 + R) >> (31 + n) after the clamp for every acc in
    [acc_low, acc_high]; s >= 1 in nearest mode (m and s scaled by 2 if needed: exact)."""
    total_shift = 31 + n
    nearest = rounding == "nearest"
    m0 = int(m0)
    if m0 <= 0:
        return m0, max(total_shift, 1 if nearest else 0), max(m0.bit_length(), 1)

    def output(acc: int) -> int:  # the engine's level, unclamped, before the zero point
        rounding_term = (1 << (total_shift - 1)) if nearest and total_shift > 0 else 0
        return (acc * m0 + rounding_term) >> total_shift

    # Only the levels the accumulator range reaches can differ.
    first = max(qmin - zero_point + 1, output(acc_low))
    last = min(qmax - zero_point, output(acc_high) + 1)
    levels = range(first, last + 1)
    chosen = (m0, total_shift)
    if len(levels) <= MAX_CHECKED_LEVELS:
        reference = _thresholds(m0, total_shift, nearest, levels, acc_low, acc_high)
        for bits in range(1, 32):
            drop = 31 - bits
            m = (m0 + ((1 << drop) >> 1)) >> drop  # M0 rounded to `bits` bits
            if m == 0:
                continue
            if _thresholds(m << drop, total_shift, nearest, levels, acc_low,
                           acc_high) == reference:
                chosen = (m, total_shift - drop)
                break
    m, shift = chosen
    floor_shift = 1 if nearest else 0
    if shift < floor_shift:  # (acc·m·2^k + 2^(s+k-1)) >> (s+k) is the same value
        m, shift = m << (floor_shift - shift), floor_shift
    return m, shift, m.bit_length()


def requant_tiles(acc_bits: int, m_bits: int) -> int:
    """18x18 tiles of a requantizer's product, as kiln_requant cuts it for PASSES > 1."""
    return (1 if acc_bits <= 18 else 2) * -(-m_bits // 17)


def requant_dsps(kind: str, requants: int, passes: int, acc_bits: int, m_bits: int) -> int:
    """ECP5 DSP tiles (18x18) in a layer's requantizers: one each when a requantizer
    time-shares its tile (passes > 1), else every tile of its product (kiln_requant's chunks).

    >>> requant_dsps("dense", requants=2, passes=4, acc_bits=22, m_bits=26)
    2
    >>> requant_dsps("dense", requants=2, passes=1, acc_bits=22, m_bits=26)
    8
    """
    if kind in ("maxpool", "add"):
        return 0
    return requants if passes > 1 else requants * requant_tiles(acc_bits, m_bits)


def requantizers(p_out: int, in_beats: int, tiles: int) -> tuple[int, int]:
    """(requantizers, passes) that keep up with a layer: the P_OUT lanes of an output beat
    must be requantized while the next beat accumulates (IN_BEATS cycles). When a beat
    leaves time for every tile of a lane to take a cycle of its own, each requantizer
    time-shares one DSP tile (passes = tiles) and takes IN_BEATS // tiles lanes; otherwise
    every tile has its own DSP (passes = 1): that also when sharing would save no DSP (it
    needs more requantizers, whose shifters cost LUTs).

    >>> requantizers(1, 16, 4), requantizers(2, 16, 4), requantizers(16, 1, 4)
    ((1, 4), (1, 4), (16, 1))
    >>> requantizers(4, 4, 4)   # 4 shared tiles or one requantizer of 4 tiles: the latter
    (1, 1)
    """
    parallel = min(p_out, -(-p_out // in_beats))
    if tiles > 1 and in_beats >= tiles:
        shared = -(-p_out // (in_beats // tiles))
        if shared < parallel * tiles:  # fewer DSPs; else fewer requantizers (LUTs)
            return shared, tiles
    return parallel, 1


#: input pairs beyond which an add's multipliers are not narrowed (the check enumerates them)
MAX_CHECKED_PAIRS = 1 << 22


def add_outputs(a: np.ndarray, b: np.ndarray, m_a: int, m_b: int, shift_a: int, shift_b: int,
                common: int, nearest: bool) -> np.ndarray:
    """floor((a·m_a·2^shift_a + b·m_b·2^shift_b + round) / 2^common) for centred inputs: the
    engine's residual add before its zero point and clamp."""
    total = (a * m_a << shift_a) + (b * m_b << shift_b)
    if nearest:
        total = total + (1 << (common - 1))
    return total >> common


@functools.lru_cache(maxsize=256)  # folding plans every add at many widths
def narrow_add(a_range: tuple[int, int], b_range: tuple[int, int], m_a: int, m_b: int,
               shift_a: int, shift_b: int, common: int, nearest: bool
               ) -> tuple[int, int, int]:
    """(m_a, m_b, common) with the fewest multiplier bits whose outputs equal the engine's
    for every pair of centred inputs in the ranges: both multipliers rounded to ``d`` fewer
    bits and the common exponent lowered by ``d``, checked over every pair (so that each
    product of kiln_add fits one 18x18 DSP tile where it can).

    >>> narrow_add((-128, 127), (-128, 127), 1 << 30, 1 << 30, 0, 0, 31, True)
    (1, 1, 1)
    """
    a = np.arange(a_range[0], a_range[1] + 1, dtype=np.int64)
    b = np.arange(b_range[0], b_range[1] + 1, dtype=np.int64)
    largest = max(abs(int(a[0])), abs(int(a[-1]))) * m_a << shift_a
    largest += max(abs(int(b[0])), abs(int(b[-1]))) * m_b << shift_b
    if len(a) * len(b) > MAX_CHECKED_PAIRS or largest >= 1 << 62:
        return m_a, m_b, common
    a_grid, b_grid = np.meshgrid(a, b, indexing="ij")
    wanted = add_outputs(a_grid, b_grid, m_a, m_b, shift_a, shift_b, common, nearest)
    best = (m_a, m_b, common)
    for drop in range(1, common):
        found = None
        half = 1 << (drop - 1)
        for n_a, n_b in ((m_a >> drop, m_b >> drop),
                         ((m_a + half) >> drop, (m_b + half) >> drop)):  # floor, rounded
            got = add_outputs(a_grid, b_grid, n_a, n_b, shift_a, shift_b, common - drop, nearest)
            if np.array_equal(got, wanted):
                found = (n_a, n_b, common - drop)
                break
        if found is None:
            break
        best = found
    return best
