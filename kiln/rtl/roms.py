"""The ROM files of an emitted layer: weights (centred; in banks for a deep ROM), biases,
requantization multipliers and shifts, one ``$readmemh`` word per block (lane 0 in the
least significant bits; a packed weight ROM has ``w_pack`` blocks to a row, the first in the
least significant bits).

>>> hex_words(np.array([[1, 2], [3, -1]]), 4).split()
['21', 'f3']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.report.markdown import write_text
from kiln.rtl.layers import Layer
from kiln.rtl.memories import bank_rows


def hex_words(lanes: np.ndarray, bits: int) -> str:
    """Rows of lane values as hex words, lane 0 in the least significant bits."""
    mask = (1 << bits) - 1
    width = (lanes.shape[1] * bits + 3) // 4
    lines = []
    for row in lanes:
        word = 0
        for index, value in enumerate(row.tolist()):
            word |= (int(value) & mask) << (index * bits)
        lines.append(f"{word:0{width}x}")
    return "\n".join(lines) + "\n"


def zero_padded(values: np.ndarray, length: int) -> np.ndarray:
    """``values`` followed by zeros up to ``length``."""
    out = np.zeros(length, dtype=np.int64)
    out[: len(values)] = values
    return out


def write_memories(folder: Path, layer: Layer, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write ``layer``'s ROM files into ``folder`` (``weight`` [out, in], centred)."""
    rows, cols = layer.out_beats * layer.p_out, layer.in_beats * layer.p_in
    padded = np.zeros((rows, cols), dtype=np.int64)
    padded[: weight.shape[0], : weight.shape[1]] = weight
    if layer.diagonal:
        # one word a beat and tap: lane p's own weight (the diagonal of the block that
        # tap t of beat j reads: input beat t * OUT_BEATS + j)
        beats = layer.out_beats
        words = np.array([np.diagonal(padded[j * layer.p_out:(j + 1) * layer.p_out,
                                             (t * beats + j) * layer.p_in:
                                             (t * beats + j + 1) * layer.p_in])
                          for j in range(beats) for t in range(layer.taps)])
    else:
        words = np.array([padded[j * layer.p_out:(j + 1) * layer.p_out,
                                 i * layer.p_in:(i + 1) * layer.p_in].reshape(-1)
                          for j in range(layer.out_beats)
                          for i in range(layer.in_beats)])  # lane p * P_in + q
    if layer.w_pack > 1:  # rows of w_pack blocks (the last row padded with zero blocks)
        row_count = -(-len(words) // layer.w_pack)
        padded_words = np.zeros((row_count * layer.w_pack, words.shape[1]), dtype=np.int64)
        padded_words[: len(words)] = words
        words = padded_words.reshape(row_count, -1)
    if layer.w_banks == 1:
        write_text(folder / f"{layer.name}.weights.mem", hex_words(words, layer.wc_bits))
    else:  # one file per bank (kiln_dense W_BANKS): weights.mem.000, .001, ...
        depth = bank_rows(layer.weight_lanes * layer.wc_bits, layer.w_pack)
        for bank in range(layer.w_banks):
            write_text(folder / f"{layer.name}.weights.mem.{bank:03d}",
                       hex_words(words[bank * depth:(bank + 1) * depth], layer.wc_bits))

    def per_beat(values: np.ndarray) -> np.ndarray:
        return zero_padded(values, rows).reshape(layer.out_beats, layer.p_out)

    write_text(folder / f"{layer.name}.bias.mem", hex_words(per_beat(bias), layer.acc_bits))
    m, shift = layer.requant_fields
    write_text(folder / f"{layer.name}.m0.mem", hex_words(per_beat(m), layer.m_bits))
    write_text(folder / f"{layer.name}.shift.mem", hex_words(per_beat(shift), 7))
