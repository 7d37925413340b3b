"""How the generated designs' memories land in ECP5 block RAM (DP16KD, 18 Kbit).

Every memory kiln emits is read synchronously. Yosys puts the deep ones and those of 4 Kbit
or more (unless shallower than 32 words) in block RAM, the rest in distributed RAM
(observed on the generated designs). A deep weight ROM is emitted in banks one block RAM
deep (``kiln_dense``'s W_BANKS), each with an output register beside it, because a block
RAM's output (about 5.6 ns on speed grade 6) followed by the multiplexer of a many-block
memory does not close at 100 MHz.

>>> block_ram_depth(8), banks(8, 100352), block_rams(8, 100352)
(2048, 49, 49)
>>> block_rams(8, 100352, layout="whole")   # as Yosys packs it: 802,816 bits in 44 x 18 Kbit
44

When those banks would not fit the device's block RAMs (a bank one block deep leaves the
ninth bit of every byte empty: 49 blocks where Yosys's own packing takes 44), the ROM is
*packed*: rows of ``packed_words_per_row`` words fill whole 36-bit columns of 512-row banks,
each bank with its output register, and the word is picked from its row a stage later.

>>> packed_words_per_row(16), weight_rom_layout(16, 50176, "packed")
(9, (9, 11, 512))
>>> block_rams(16, 50176, layout="banked"), block_rams(16, 50176, layout="packed")
(49, 44)
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
#: how a weight ROM is laid out (kiln.rtl.emit's rom_layout), the fastest clock first
ROM_LAYOUTS = ("banked", "packed", "whole")
PACKED_COLUMN_BITS, PACKED_BANK_ROWS = SHAPES[0]


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


def weight_rom_shape(layer: dict) -> tuple[int, int]:
    """(weights per word, words) of an emitted layer's weight ROM (its fields): a [P_out x
    P_in] block per cycle, or for a per-channel (diagonal) layer P_out weights per beat."""
    in_beats = -(-layer["in_n"] // layer["p_in"])
    out_beats = -(-layer["out_n"] // layer["p_out"])
    if layer.get("diagonal"):  # a word per beat and tap
        return layer["p_out"], out_beats * layer.get("taps", 1)
    return layer["p_in"] * layer["p_out"], in_beats * out_beats


def packed_words_per_row(width: int) -> int:
    """Words of ``width`` bits in a packed ROM row: the fewest that fill whole 36-bit
    block RAM columns."""
    return PACKED_COLUMN_BITS // math.gcd(width, PACKED_COLUMN_BITS)


def bank_rows(width: int, pack: int) -> int:
    """Rows in one bank of a weight ROM of ``width``-bit words, ``pack`` to a row."""
    return PACKED_BANK_ROWS if pack > 1 else block_ram_depth(width)


def weight_rom_layout(width: int, depth: int, layout: str = "banked") -> tuple[int, int, int]:
    """(words per row, banks, rows per bank) of a width x depth weight ROM laid out as
    ``layout`` (one of ROM_LAYOUTS). A ROM no deeper than a few block RAMs is one plain
    bank whatever the layout."""
    if layout not in ROM_LAYOUTS:
        raise ValueError(f"unknown ROM layout {layout!r}: one of {', '.join(ROM_LAYOUTS)}")
    count = banks(width, depth)
    if layout == "whole" or count == 1:
        return 1, 1, depth
    if layout == "banked":
        return 1, count, bank_rows(width, 1)
    pack = packed_words_per_row(width)
    return pack, math.ceil(math.ceil(depth / pack) / PACKED_BANK_ROWS), bank_rows(width, pack)


def block_rams(width: int, depth: int, *, layout: str = "banked") -> int:
    """DP16KD blocks of a width x depth memory: the best of its aspect ratios, or, for a
    weight ROM in banks, its banks times the blocks of one bank's row."""
    pack, count, _ = weight_rom_layout(width, depth, layout)
    if count > 1 and pack == 1:
        bits = next(b for b, w in SHAPES if w == block_ram_depth(width))
        return count * math.ceil(width / bits)
    if count > 1:
        return count * math.ceil(pack * width / PACKED_COLUMN_BITS)
    by_shape = min(math.ceil(width / w) * math.ceil(depth / d) for w, d in SHAPES)
    if depth >= 16384:  # Yosys packs a large memory into the blocks' full 18 Kbit
        return min(by_shape, math.ceil(width * depth / 18432))
    return by_shape
