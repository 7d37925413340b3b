"""Requantizer widths: narrowed multipliers equal the engine on every reachable accumulator,
and the generated hardware with narrow, time-shared and wide requantizers is bit-exact."""

from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest

from kiln.integer.arith import requantize
from kiln.rtl import emit, simulate
from kiln.rtl.requant import accumulator_range, narrow_multiplier, requantizers
from kiln.rtl.simulate import tool_path
from tests.rtl.test_rtl import single_dense


def _hardware(acc: np.ndarray, m: int, shift: int, rounding: str, zero: int, lo: int,
              hi: int) -> np.ndarray:
    """kiln_requant's arithmetic: (acc·m + 2^(s-1)) >> s (nearest) or acc·m >> s."""
    product = acc.astype(object) * m
    if rounding == "nearest":
        product = product + (1 << (shift - 1))
    return np.clip(np.array([int(p) >> shift for p in product], dtype=np.int64) + zero, lo, hi)


def test_narrowed_multipliers_equal_the_engine_on_every_reachable_accumulator():
    rng = random.Random(3)
    narrower = 0
    for _ in range(150):
        m0 = rng.randrange(1 << 30, 1 << 31)
        n = rng.randrange(-12, 14)
        rounding = rng.choice(["floor", "nearest"])
        zero = rng.randrange(-20, 20)
        lo, hi = rng.choice([(0, 255), (-128, 127), (0, 15), (-8, 7), (0, 6)])
        span = rng.randrange(1, 1 << rng.randrange(3, 18))
        low, high = -span, rng.randrange(-span, span + 1)
        m, shift, bits = narrow_multiplier(m0, n, rounding, zero, lo, hi, low, high)
        assert m.bit_length() == bits and shift >= (1 if rounding == "nearest" else 0)
        acc = np.arange(low, high + 1, dtype=np.int64)
        expected = requantize(acc, m0, n, zero, rounding, lo, hi)
        np.testing.assert_array_equal(_hardware(acc, m, shift, rounding, zero, lo, hi), expected)
        narrower += bits < 31
    assert narrower > 100  # most layers need far fewer than 31 bits


def test_a_narrowed_multiplier_is_wrong_outside_the_range_it_was_proven_on():
    # The proof is per range: the 1-bit multiplier chosen for small accumulators would not
    # do for large ones, so the range must come from the layer, not be assumed.
    m0, n = 1_234_567_890, 4
    m, shift, bits = narrow_multiplier(m0, n, "nearest", 0, -128, 127, -40, 40)
    wide = np.arange(-(1 << 16), 1 << 16, dtype=np.int64)
    engine = requantize(wide, m0, n, 0, "nearest", -128, 127)
    assert bits < 31
    assert (_hardware(wide, m, shift, "nearest", 0, -128, 127) != engine).any()


def test_accumulator_range_bounds_every_partial_sum():
    rng = np.random.default_rng(0)
    weight = rng.integers(-9, 10, (6, 12))
    bias = rng.integers(-50, 50, 6)
    low, high, bits = accumulator_range(weight, bias, -3, 250)
    inputs = rng.integers(-3, 251, (2000, 12))
    partial = np.cumsum(inputs[:, None, :] * weight[None], axis=2) + bias[None, :, None]
    assert (partial[..., -1] >= low).all() and (partial[..., -1] <= high).all()
    assert np.abs(partial).max() < 1 << (bits - 1)
    # the bounds are reached by the extreme inputs
    extreme = np.where(weight > 0, 250, -3)
    np.testing.assert_array_equal((extreme * weight).sum(axis=1) + bias, high)


def test_requantizers_share_one_dsp_tile_when_a_beat_leaves_the_time():
    assert requantizers(p_out=8, in_beats=16, tiles=4) == (2, 4)   # 4 lanes each, 4 passes
    assert requantizers(p_out=8, in_beats=2, tiles=4) == (4, 1)    # too little time
    assert requantizers(p_out=4, in_beats=4, tiles=4) == (1, 1)    # no DSP saved
    assert requantizers(p_out=3, in_beats=9, tiles=1) == (1, 1)    # one tile: no passes


@pytest.mark.parametrize("parallelism,passes", [((32, 4), 1), ((4, 4), 4)])
def test_wide_and_time_shared_requantizers_are_bit_exact(tmp_path, parallelism, passes):
    # 32 inputs at P_in 32: one input beat, no time to share a tile (every tile its own
    # DSP); at P_in 4, 8 beats: each requantizer takes its lanes in passes of one tile.
    program = single_dense("nearest", seed=11, in_n=32, out_n=16)
    design = emit(program, parallelism, tmp_path / "design")
    (layer,) = design.layers
    assert layer.acc_bits > 18 and layer.passes == passes
    assert layer.requant_dsps == (layer.requants * 2 * 2 if passes == 1 else layer.requants)
    assert layer.m_bits > 17  # two chunks of m: 2 x 2 tiles
    inputs = np.random.default_rng(5).integers(0, 256, (50, 32))
    result = simulate(design, simulator="verilator", inputs=inputs)
    assert result.passed and result.vectors == 50


def test_a_deep_weight_rom_is_banked_and_bit_exact(tmp_path):
    # 512 x 64 at 1x1: 32,768 weight words of 9 bits, 16 block RAMs deep -> 16 banks of
    # 2,048 words, each its own file and its own output register.
    from kiln.rtl.memories import banks

    program = single_dense("nearest", seed=13, in_n=512, out_n=64)
    design = emit(program, (1, 1), tmp_path / "deep")
    (layer,) = design.layers
    assert layer.w_banks == banks(layer.wc_bits, 512 * 64) == 16
    files = sorted(p.name for p in (design.directory / "mem").glob("matrix.weights.mem.*"))
    assert files == [f"matrix.weights.mem.{b:03d}" for b in range(16)]
    inputs = np.random.default_rng(2).integers(0, 256, (3, 512))
    assert simulate(design, simulator="verilator", inputs=inputs).passed
    unbanked = emit(program, (1, 1), tmp_path / "whole", rom_layout="whole")
    assert unbanked.layers[0].w_banks == 1
    assert (unbanked.directory / "mem" / "matrix.weights.mem").is_file()


def test_a_packed_weight_rom_is_bit_exact_across_rows_banks_and_vectors(tmp_path):
    # 499 x 61 at 1x1: 30,439 words of 9 bits, packed 4 to a 36-bit row: 7,610 rows (the
    # last holds 3 words) in 15 banks of 512 rows (the last 442): every vector's reads
    # cross rows, banks and, at its end, restart mid-row.
    from kiln.rtl.memories import block_rams, weight_rom_layout

    program = single_dense("nearest", seed=17, in_n=499, out_n=61)
    design = emit(program, (1, 1), tmp_path / "packed", rom_layout="packed")
    (layer,) = design.layers
    assert layer.wc_bits == 9 and (layer.w_pack, layer.w_banks) == (4, 15)
    assert weight_rom_layout(9, 499 * 61, "packed") == (4, 15, 512)
    assert block_rams(9, 499 * 61, layout="packed") == 15  # 9-bit words waste no bits
    last = (design.directory / "mem" / "matrix.weights.mem.014").read_text().split()
    assert len(last) == 7610 - 14 * 512 and all(len(word) == 9 for word in last)
    inputs = np.random.default_rng(3).integers(0, 256, (3, 499))
    assert simulate(design, simulator="verilator", inputs=inputs).passed
    tool_path()
    lint = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", "kiln_top",
                           *[str(p) for p in design.sources]], capture_output=True, text=True,
                          cwd=design.directory)
    assert lint.returncode == 0, lint.stderr


def test_narrowed_add_multipliers_equal_the_engine_on_every_input_pair():
    # kiln_add's arithmetic with the narrowed multipliers against the engine's residual add
    # (kiln.integer.engine._add) on every pair of int8 inputs, for random scales.
    from kiln.integer.engine import _add
    from kiln.integer.program import IntOp, TensorQuant
    from kiln.rtl.requant import add_outputs, narrow_add

    rng = random.Random(5)
    bits_used = []
    for _ in range(12):
        qa = TensorQuant(0.1, rng.randrange(0, 256), 8, False)
        qb = TensorQuant(0.1, rng.randrange(0, 256), 8, False)
        m0_a, m0_b = rng.randrange(1 << 30, 1 << 31), rng.randrange(1 << 30, 1 << 31)
        n_a, n_b = rng.randrange(-3, 1), rng.randrange(-3, 1)
        rounding = rng.choice(["floor", "nearest"])
        zero, (lo, hi) = rng.randrange(0, 40), (0, 255)
        op = IntOp("add", "add", ["a", "b"], "add",
                   {"a_quant": qa.as_dict(), "b_quant": qb.as_dict(), "clamp": [lo, hi],
                    "out_quant": TensorQuant(0.1, zero, 8, False).as_dict()},
                   {"m0": np.array([m0_a]), "shift": np.array([n_a]),
                    "m0_b": np.array([m0_b]), "shift_b": np.array([n_b])})
        a, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
        engine = _add(op, a, b, rounding)
        shift_a, shift_b = 31 + n_a, 31 + n_b
        common = max(shift_a, shift_b)
        m_a, m_b, narrowed = narrow_add((-qa.zero_point, 255 - qa.zero_point),
                                        (-qb.zero_point, 255 - qb.zero_point), m0_a, m0_b,
                                        common - shift_a, common - shift_b, common,
                                        rounding == "nearest")
        hardware = add_outputs(a - qa.zero_point, b - qb.zero_point, m_a, m_b,
                               common - shift_a, common - shift_b, narrowed,
                               rounding == "nearest")
        np.testing.assert_array_equal(np.clip(hardware + zero, lo, hi), engine)
        bits_used.append(max(m_a.bit_length(), m_b.bit_length()))
    assert max(bits_used) < 31  # narrower than the engine's Q31 multipliers, still exact
