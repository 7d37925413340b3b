"""BARVINN's MVU: the model's control follows the RTL, generated configurations run
bit-exactly against kiln's engine on random networks, and bad networks are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.integer.engine import run as run_engine
from kiln.integer.program import IntOp
from kiln.mvu.compat import barvinn_rows, barvinn_text, plan_shapes
from kiln.mvu.job import OUTPUT_DRAIN, MvuJob, agu_sequence, zigzag_walk
from kiln.mvu.lower import lower_for_mvu
from kiln.mvu.model import Mvu, pack_planes, unpack_planes
from kiln.mvu.plan import plan_mvu
from kiln.mvu.run import check_proof, prove
from kiln.mvu.synthetic import RESNET18_PLAIN_CIFAR, random_inputs, synthetic_program


def _agu_reference(lengths, jumps, steps):
    """The pseudocode of BARVINN's documentation, run literally."""
    address, out = 0, []
    while True:
        for _ in range(lengths[1] + 1):
            for _ in range(lengths[2] + 1):
                for _ in range(lengths[3] + 1):
                    for _ in range(lengths[4] + 1):
                        out.append(address)
                        if len(out) == steps:
                            return out
                        address += jumps[4]
                    address += jumps[3] - jumps[4]
                address += jumps[2] - jumps[3]
            address += jumps[1] - jumps[2]
        address += jumps[0] - jumps[1]


@pytest.mark.parametrize("lengths", [[0, 1, 2, 0, 3], [0, 0, 0, 0, 0], [0, 2, 0, 4, 1]])
def test_address_generator_matches_nested_loops(lengths, rng):
    jumps = [int(v) for v in rng.integers(-50, 50, size=5)]
    steps = 3 * math.prod(v + 1 for v in lengths[1:]) + 2
    assert agu_sequence(lengths, jumps, steps)[0].tolist() == _agu_reference(lengths, jumps,
                                                                              steps)


@pytest.mark.parametrize("wprec,iprec", [(1, 1), (2, 2), (3, 2), (2, 5), (8, 8)])
def test_zigzag_walks_every_plane_pair_by_diagonals(wprec, iprec):
    walk = zigzag_walk(wprec, iprec)
    pairs = [(w, d) for w, d, _ in walk]
    assert sorted(pairs) == [(w, d) for w in range(wprec) for d in range(iprec)]
    diagonals = [w + d for w, d in pairs]
    assert diagonals == sorted(diagonals)  # MSB×MSB first, one diagonal after another
    # The accumulator doubles exactly when a new diagonal starts.
    assert [s for _, _, s in walk] == [i > 0 and diagonals[i] != diagonals[i - 1]
                                       for i in range(len(walk))]


def test_bit_serial_accumulation_equals_the_dot_product(rng):
    """One job over random planes: the zig-zag, the signs and the doubling give Σ w·x."""
    for wprec, iprec, wsigned, isigned in [(3, 2, True, False), (2, 4, False, True),
                                           (1, 1, False, False), (8, 8, True, True)]:
        unit = Mvu(batch=2)
        x_low, x_high = (-(1 << (iprec - 1)), 1 << (iprec - 1)) if isigned else (0, 1 << iprec)
        w_low, w_high = (-(1 << (wprec - 1)), 1 << (wprec - 1)) if wsigned else (0, 1 << wprec)
        x = rng.integers(x_low, x_high, size=(2, 1, 64))
        w = rng.integers(w_low, w_high, size=(64, 64))  # [lane, channel]
        unit.write_vectors(0, x, iprec)
        planes = pack_planes(w[None], wprec)[0]  # [lane, plane]
        unit.load_weights(planes.T.copy())  # word p holds plane p of every lane
        unit.load_scaler_bias(np.ones((64, 1), dtype=np.int64), np.zeros((64, 1), np.int64))
        combos = wprec * iprec
        job = MvuJob(iprec=iprec, wprec=wprec, oprec=16, ilength=[0] * 5, ijump=[0] * 5,
                     wlength=[0, 0, combos - 1, 0, 0], wjump=[0] * 5, countdown=combos,
                     wsigned=wsigned, isigned=isigned, msbidx=25, obase=100)
        result = unit.run(job)
        assert result.outputs == 1 and result.drain_cycles == 0  # countdown = products here
        np.testing.assert_array_equal(result.accumulators[:, 0], x[:, 0] @ w.T)


def test_planes_round_trip(rng):
    values = rng.integers(-8, 8, size=(3, 64))
    assert (unpack_planes(pack_planes(values, 4), 4, signed=True) == values).all()


# --- the proof: random plain networks, every precision, against the engine -----------------
CNN = [{"conv": 70, "kernel": 3, "padding": 1}, {"maxpool": 2},
       {"conv": 130, "kernel": 3, "stride": 2, "padding": 1}, {"conv": 20, "kernel": 1},
       {"flatten": True}, {"dense": 9}]
MLP = [{"dense": 150}, {"dense": 70}, {"dense": 10}]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("isigned,wsigned", [(False, True), (True, False)])
def test_generated_jobs_match_the_engine_on_random_cnns(bits, isigned, wsigned):
    # 1-bit weights with 2-bit activations: 1-bit data and outputs would emit an output
    # every cycle of a 1x1 layer, faster than the serializer writes it (refused below).
    aprec = 2 if bits == 1 else bits
    program = synthetic_program((3, 9, 7), CNN, aprec=aprec, wprec=bits, oprec=aprec,
                                isigned=isigned, wsigned=wsigned,
                                input_zero_point=0 if isigned else 1, seed=bits)
    plan = plan_mvu(lower_for_mvu(program))
    report = prove(plan, random_inputs(program, 6, seed=bits))
    assert report.mismatches == 0, [layer.first_mismatch for layer in report.layers]
    for layer, proof in zip(plan.layers, report.layers, strict=True):
        assert proof.outputs == proof.expected_outputs
        assert proof.drain_cycles == OUTPUT_DRAIN * proof.jobs
        assert proof.cycles == layer.countdown
    assert report.samples == 6


@pytest.mark.parametrize("bits", [2, 8])
def test_generated_jobs_match_the_engine_on_mlps(bits):
    program = synthetic_program((100,), MLP, aprec=bits, wprec=bits, oprec=bits, seed=7)
    plan = plan_mvu(lower_for_mvu(program))
    assert [layer.source.blocks for layer in plan.layers] == [2, 3, 2]
    report = prove(plan, random_inputs(program, 8))
    assert report.mismatches == 0


def test_a_wrong_jump_is_caught_and_named():
    program = synthetic_program((3, 8, 8), CNN, aprec=2, wprec=2, seed=3)
    plan = plan_mvu(lower_for_mvu(program))
    layer = plan.layers[1]
    for job in layer.jobs:
        job.ijump[0] += job.iprec  # slide one channel block too far
    report = prove(plan, random_inputs(program, 3))
    assert report.layers[0].mismatches == 0 and report.layers[1].mismatches > 0
    with pytest.raises(KilnError, match=f"layer '{layer.op.name}', job \\d+ .* channel \\d+"):
        check_proof(report)


def test_resnet18_plain_barvinn_table_and_kiln_jobs():
    program = synthetic_program((3, 32, 32), RESNET18_PLAIN_CIFAR, aprec=2, wprec=2, oprec=2,
                                seed=5)
    plan = plan_mvu(lower_for_mvu(program))
    rows = barvinn_rows(plan_shapes(plan), (2, 2, 2))
    # BARVINN's published table for this network: 17 rows, total countdown 532,872.
    assert len(rows) == 17
    assert int(sum(row["total_layer_countdown"] for row in rows)) == 532_872
    assert rows[0]["ijump"] == [-132, -132, 60, 2, 0] and rows[0]["countdown"] == 1080
    assert "Total countdown: 532872" in barvinn_text(plan_shapes(plan), (2, 2, 2))
    # kiln's jobs: every output pixel of the padded input, one job per row (and pass).
    first = plan.layers[0]
    assert first.jobs[0].countdown == 32 * 1 * 4 * 9 + OUTPUT_DRAIN and len(first.jobs) == 32
    assert first.jobs[0].ijump[0] == -2 * (1 * 2 * 34 + 1 * (3 - 1) - 1)
    assert plan.countdown == sum(layer.out_size[0] * layer.out_size[1] * layer.target.blocks
                                 * 4 * layer.source.blocks * 9
                                 + OUTPUT_DRAIN * len(layer.jobs) for layer in plan.layers)
    assert [len(layer.passes) for layer in plan.layers[-3:]] == [3, 3, 3]
    report = prove(plan, random_inputs(program, 2))
    assert report.mismatches == 0


def test_mvu_rounding_in_the_engine_is_what_the_unit_computes(rng):
    """requantize_mvu == floor((acc·S + B) / 2^sh), B holding zero point and rounding: an
    unsigned output saturated by the host's ReLU, a signed one wrapped by the unit."""
    from kiln.integer.arith import requantize_mvu

    acc = rng.integers(-5000, 5000, size=1000)
    scale, shift, zero = 12345, 20, 1
    value = (acc * scale + (zero << shift) + (1 << (shift - 1))) >> shift
    assert (requantize_mvu(acc, scale, shift - 31, zero, -8, 7)
            == (value + 8) % 16 - 8).all()
    expected = np.clip(value, 0, 15)
    got = requantize_mvu(acc, scale, shift - 31, zero, 0, 15)
    assert (got == expected).all()


# --- refusals ----------------------------------------------------------------------------
def test_residual_networks_are_refused_naming_the_add():
    program = synthetic_program((3, 6, 6), [{"conv": 8, "kernel": 3, "padding": 1}],
                                aprec=2, wprec=2)
    conv = program.ops[0]
    program.ops.append(IntOp("add", "skip_add", [conv.output, "input"], "skip_add",
                             {"out_quant": conv.attrs["out_quant"]}))
    with pytest.raises(KilnError, match="'skip_add'.*residual"):
        lower_for_mvu(program)


def test_weights_larger_than_the_weight_ram_are_refused():
    # 8-bit weights, 640 input channels (10 blocks), 3x3: 720 words per output block.
    program = synthetic_program((640, 3, 3), [{"conv": 4, "kernel": 3}, {"flatten": True},
                                              {"dense": 2}], aprec=1, wprec=8, oprec=2,
                                seed=1)
    with pytest.raises(KilnError, match="layer0.*720 weight words.*512"):
        plan_mvu(lower_for_mvu(program))


def test_accumulator_overflow_is_refused():
    program = synthetic_program((8192,), [{"dense": 4}], aprec=8, wprec=8)
    with pytest.raises(KilnError, match="layer0.*27-bit accumulators"):
        lower_for_mvu(program)


@pytest.mark.parametrize("bits", [0, 17])
def test_precisions_outside_1_to_16_are_refused(bits):
    program = synthetic_program((4,), [{"dense": 3}], aprec=2, wprec=2)
    program.ops[0].attrs["weight_bits"] = bits
    with pytest.raises(KilnError, match=f"weight precision {bits} is outside"):
        lower_for_mvu(program)


def test_outputs_faster_than_the_serializer_are_refused():
    """1-bit data through a 1x1 conv: at most 16 cycles per output even with 16-bit
    weights, and a 16-bit ReLU output needs at least 17 planes."""
    program = synthetic_program((3, 4, 4), [{"conv": 4, "kernel": 1}, {"flatten": True},
                                            {"dense": 2}], aprec=1, wprec=1, oprec=16)
    with pytest.raises(KilnError, match="output every 1 cycles.*1[78] planes.*16-bit weights"):
        plan_mvu(lower_for_mvu(program))


def test_short_outputs_walk_widened_weights():
    """A 1x1 conv of 1-bit data and weights takes 1 cycle per output; the unit needs 6 (the
    drain) and 5 planes (4 bits + the ReLU's sign): the weights are walked as 6 planes."""
    program = synthetic_program((3, 4, 4), [{"conv": 4, "kernel": 1}, {"flatten": True},
                                            {"dense": 2}], aprec=1, wprec=1, oprec=4)
    plan = plan_mvu(lower_for_mvu(program))
    first = plan.layers[0]
    assert first.wprec == 6 and first.jobs[0].wprec == 6 and "6-bit" in first.notes[0]
    assert prove(plan, random_inputs(program, 5)).mismatches == 0


def test_vector_layers_walk_zero_weight_blocks_to_feed_the_serializer():
    """2-bit x 2-bit over one block is 4 cycles per output; 8-bit logits need 8."""
    program = synthetic_program((30,), [{"dense": 20}, {"dense": 5}], aprec=2, wprec=2,
                                last_oprec=8, seed=2)
    plan = plan_mvu(lower_for_mvu(program))
    last = plan.layers[-1]
    assert last.in_blocks == 2 and last.source.blocks == 1
    assert last.jobs[0].countdown == 8 + OUTPUT_DRAIN
    assert prove(plan, random_inputs(program, 10)).mismatches == 0


def test_calibration_fits_the_logits_so_none_wraps():
    program = synthetic_program((40,), [{"dense": 10}], aprec=4, wprec=4, last_oprec=4,
                                seed=9)
    program.ops[0].arrays["shift"] = program.ops[0].arrays["shift"] - 3  # 8x: logits overflow
    x = random_inputs(program, 200, seed=1)
    op = program.ops[0]
    acc = x @ op.arrays["weight"].T + op.arrays["bias"]

    def unwrapped(lowered):
        layer = lowered.ops[0]
        shift = 31 + layer.arrays["shift"]
        return ((acc * layer.arrays["m0"] + (1 << (shift - 1))) >> shift) \
            + layer.out_quant.zero_point

    plain = lower_for_mvu(program)
    assert (run_engine(plain, x) != unwrapped(plain)).any()  # without the fit, some wrap
    fitted = lower_for_mvu(program, calibration=x)
    assert (run_engine(fitted, x) == unwrapped(fitted)).all()
    assert fitted.output_quant.zero_point == 0 and fitted.output_quant.bits == 4
    assert np.abs(unwrapped(fitted)).max() >= 4  # the range is used, not just avoided


def test_engine_runs_the_lowered_program_close_to_the_original():
    """The MVU lowering changes only the multiplier's precision and the saturation."""
    program = synthetic_program((3, 8, 8), CNN, aprec=8, wprec=4, oprec=8, seed=11)
    x = random_inputs(program, 20)
    original = run_engine(program, x).astype(np.int64)
    lowered = run_engine(lower_for_mvu(program), x).astype(np.int64)
    close = np.abs(original - lowered) <= 2
    assert close.mean() > 0.6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_odd_shapes_match_the_engine(seed):
    """Kernels 1/3/5, strides 1-3, paddings up to k//2, odd channel counts and widths."""
    rng = np.random.default_rng(100 + seed)
    height, width, layers = 13, 11, []
    for _ in range(2):
        k, s = int(rng.choice([1, 3, 5])), int(rng.integers(1, 4))
        p = int(rng.integers(0, k // 2 + 1))
        out_h, out_w = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        if min(out_h, out_w) < 1:
            break
        layers.append({"conv": int(rng.integers(1, 140)), "kernel": k, "stride": s,
                       "padding": p})
        height, width = out_h, out_w
    layers += [{"maxpool": 1}, {"flatten": True}, {"dense": int(rng.integers(2, 70))}]
    bits = int(rng.choice([2, 3, 6]))
    program = synthetic_program((int(rng.integers(1, 80)), 13, 11), layers, aprec=bits,
                                wprec=int(rng.choice([1, 2])), oprec=bits,
                                isigned=bool(rng.integers(2)), wsigned=bool(rng.integers(2)),
                                input_zero_point=int(rng.integers(0, 2)), seed=seed)
    plan = plan_mvu(lower_for_mvu(program))
    report = prove(plan, random_inputs(program, 4, seed=seed))
    assert report.mismatches == 0, [layer.first_mismatch for layer in report.layers]
