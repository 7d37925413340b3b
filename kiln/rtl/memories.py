"""How the generated designs' memories land in ECP5 block RAM (DP16KD, 18 Kbit).

Every memory kiln emits is read synchronously. Yosys puts the deep ones and those of 4 Kbit
or more (unless shallower than 32 words) in block RAM, the rest in distributed RAM
(observed on the generated designs). A deep weight ROM is emitted in banks one block RAM
deep (``kiln_dense``'s W_BANKS), each with an output register beside it, because a block
RAM's output (about 5.6 ns on speed grade 6) followed by the multiplexer of a many-block
memory does not close at 100 MHz.

>>> block_ram_depth(8), banks(8, 100352), block_rams(8, 100352)
(2048, 49, 49)
>>> block_rams(8, 100352, banked=False)   # as Yosys packs it: 802,816 bits in 44 x 18 Kbit
44
"""

from __future__ import annotations

import math

BRAM_MIN_DEPTH = 512
#: a ROM deeper than this many block RAMs is banked (a multiplexer of up to 4 is fast enough)
MAX_UNBANKED_DEPTH = 4
BRAM_MIN_BITS = 4 * 1024
BRAM_MIN_WORDS = 32  # shallower memories stay in distributed RAM however wide
#: DP16KD aspect ratios: (data bits, words)
SHAPES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def in_block_ram(width: int, depth: int) -> bool:
    """Whether Yosys puts a width x depth memory in block RAM."""
    return depth >= BRAM_MIN_DEPTH or (width * depth >= BRAM_MIN_BITS
                                       and depth >= BRAM_MIN_WORDS)


def block_ram_depth(width: int) -> int:
    """Words in one block RAM at the widest shape that holds ``width`` bits side by side
    with the fewest blocks (36-bit words for anything wider)."""
    for bits, words in reversed(SHAPES):
        if width <= bits:
            return words
    return SHAPES[0][1]


def banks(width: int, depth: int) -> int:
    """Banks of a weight ROM (1: not banked)."""
    bank = block_ram_depth(width)
    if depth <= bank * MAX_UNBANKED_DEPTH or not in_block_ram(width, depth):
        return 1
    return math.ceil(depth / bank)


def block_rams(width: int, depth: int, *, banked: bool = True) -> int:
    """DP16KD blocks of a width x depth memory: the best of its aspect ratios, or, for a
    banked ROM, its banks times the blocks of one bank's width."""
    if banked and banks(width, depth) > 1:
        bits = next(b for b, w in SHAPES if w == block_ram_depth(width))
        return banks(width, depth) * math.ceil(width / bits)
    by_shape = min(math.ceil(width / w) * math.ceil(depth / d) for w, d in SHAPES)
    if depth >= 16384:  # Yosys packs a large memory into the blocks' full 18 Kbit
        return min(by_shape, math.ceil(width * depth / 18432))
    return by_shape
