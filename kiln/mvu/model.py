"""A bit-accurate, cycle-counting model of one BARVINN matrix-vector unit (MVU).

Memories: data RAM of 32K 64-bit words (one bit plane of 64 channels per word), weight
RAM of 512 4096-bit words (lane ``o`` uses bits 64·o … 64·o+63; bit 64·o+c multiplies data
bit c), and per-lane scaler (16-bit signed) and bias (27-bit signed) RAMs. A job runs
``countdown`` cycles; each cycle every lane adds the popcount of (data word AND its weight
bits), negated when exactly one operand is a signed MSB plane, into a 27-bit accumulator
that doubles on entering a new zig-zag diagonal (:mod:`kiln.mvu.job`). An emitted
accumulator becomes ``acc·scale + bias``, ReLU if configured, and the ``oprec`` bits from
``msbidx`` down (no rounding, no saturation), written MSB plane first.

The data path is vectorized over a batch of inputs (one data RAM per input) and over the
cycles of a job; the control (addresses, zig-zag, emits) is computed once per job.

>>> unit = Mvu(batch=1)
>>> unit.data[0, 0] = 0b1011            # channels 0, 1, 3 hold a 1 (1-bit data)
>>> unit.weight[0, 5] = 0b0011          # lane 5 weights channels 0 and 1
>>> unit.scaler[5, 0], unit.bias[5, 0] = 1, 0
>>> job = MvuJob(iprec=1, wprec=1, oprec=2, ilength=[0] * 5, ijump=[0] * 5,
...              wlength=[0] * 5, wjump=[0] * 5, countdown=1, wsigned=False,
...              msbidx=1, obase=8)
>>> result = unit.run(job)
>>> int(unit.read_vectors(8, 2, 1, signed=False)[0, 0, 5])   # 2 = popcount(1011 & 0011)
2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.mvu.job import (
    ACC_BITS,
    BIAS_BITS,
    DATA_WORDS,
    LANES,
    SCALE_BITS,
    SCALER_OUT_BITS,
    WEIGHT_WORDS,
    MvuJob,
    agu_sequence,
    job_control,
)

SCALER_DEPTH = 64  # 6-bit scaler and bias base addresses
_LANE_BITS = np.uint64(1) << np.arange(LANES, dtype=np.uint64)


def wrap_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap of int64 ``values`` to ``bits`` bits."""
    half = np.int64(1) << (bits - 1)
    return ((np.asarray(values, dtype=np.int64) + half) & ((half << 1) - 1)) - half


def pack_planes(values: np.ndarray, precision: int) -> np.ndarray:
    """[..., 64] integers -> [..., precision] 64-bit words, MSB plane first: bit ``c`` of
    plane ``p`` is bit (precision−1−p) of value ``c`` (two's complement for negatives)."""
    values = np.asarray(values, dtype=np.int64)
    if values.shape[-1] != LANES:
        raise ValueError(f"pack_planes needs 64 values in the last axis, got {values.shape}")
    words = np.zeros(values.shape[:-1] + (precision,), dtype=np.uint64)
    for plane in range(precision):
        bit = ((values >> (precision - 1 - plane)) & 1).astype(np.uint64)
        words[..., plane] = np.bitwise_or.reduce(bit << np.arange(LANES, dtype=np.uint64),
                                                 axis=-1)
    return words


def unpack_planes(words: np.ndarray, precision: int, *, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_planes`: [..., precision] words -> [..., 64] integers."""
    words = np.asarray(words, dtype=np.uint64)
    bits = ((words[..., :, None] & _LANE_BITS) != 0).astype(np.int64)  # [..., p, 64]
    weights = np.int64(1) << np.arange(precision - 1, -1, -1, dtype=np.int64)
    if signed:
        weights[0] = -weights[0]
    return np.einsum("...pc,p->...c", bits, weights)


@dataclass
class JobResult:
    """What a job did: cycles run, vectors emitted, cycles run after the last emit (the
    drain kiln's countdowns add, :data:`kiln.mvu.job.OUTPUT_DRAIN`), and the accumulators
    emitted."""

    cycles: int
    outputs: int
    drain_cycles: int
    accumulators: np.ndarray  # [batch, outputs, 64] after the 27-bit wrap


class Mvu:
    """One MVU's memories for ``batch`` independent inputs (the weight, scaler and bias
    RAMs are shared: they hold the layer, not the input)."""

    def __init__(self, batch: int = 1) -> None:
        self.batch = batch
        self.data = np.zeros((batch, DATA_WORDS), dtype=np.uint64)
        self.weight = np.zeros((WEIGHT_WORDS, LANES), dtype=np.uint64)  # [word, lane]
        self.scaler = np.zeros((LANES, SCALER_DEPTH), dtype=np.int64)
        self.bias = np.zeros((LANES, SCALER_DEPTH), dtype=np.int64)

    # --- memories -------------------------------------------------------------------
    def write_vectors(self, address: int, values: np.ndarray, precision: int) -> None:
        """Write [batch, n, 64] integers as n consecutive ``precision``-word vectors."""
        words = pack_planes(values, precision).reshape(self.batch, -1)
        self._check_data_range(address, words.shape[1])
        self.data[:, address:address + words.shape[1]] = words

    def read_vectors(self, address: int, precision: int, count: int, *, signed: bool
                     ) -> np.ndarray:
        """[batch, count, 64] integers from ``count`` consecutive vectors at ``address``."""
        self._check_data_range(address, precision * count)
        words = self.data[:, address:address + precision * count]
        return unpack_planes(words.reshape(self.batch, count, precision), precision,
                             signed=signed)

    def _check_data_range(self, address: int, words: int) -> None:
        if address < 0 or address + words > DATA_WORDS:
            raise KilnError(f"data RAM access {address}..{address + words - 1} is outside "
                            f"0..{DATA_WORDS - 1}")

    def load_weights(self, words: np.ndarray, base: int = 0) -> None:
        """[n, 64] uint64 weight words (lane-major 4096-bit words) at ``base``."""
        if base < 0 or base + len(words) > WEIGHT_WORDS:
            raise KilnError(f"weight image of {len(words)} words at {base} does not fit the "
                            f"{WEIGHT_WORDS}-word weight RAM")
        self.weight[base:base + len(words)] = words

    def load_scaler_bias(self, scaler: np.ndarray, bias: np.ndarray, base: int = 0) -> None:
        """[64, n] scales and biases per lane at ``base``."""
        if np.any((scaler < -(1 << (SCALE_BITS - 1))) | (scaler >= 1 << (SCALE_BITS - 1))):
            raise KilnError(f"a scale does not fit {SCALE_BITS} signed bits")
        if np.any((bias < -(1 << (BIAS_BITS - 1))) | (bias >= 1 << (BIAS_BITS - 1))):
            raise KilnError(f"a bias does not fit {BIAS_BITS} signed bits")
        self.scaler[:, base:base + scaler.shape[1]] = scaler
        self.bias[:, base:base + bias.shape[1]] = bias

    # --- execution ------------------------------------------------------------------
    def run(self, job: MvuJob, *, max_chunk_bytes: int = 1 << 26) -> JobResult:
        """Execute ``job``: compute, write its outputs into the data RAM, return counts."""
        job.check()
        control = job_control(job)
        cycles = job.countdown
        if (control.data_address.min() < 0 or control.data_address.max() >= DATA_WORDS):
            raise KilnError(f"job reads data RAM outside 0..{DATA_WORDS - 1} "
                            f"({control.data_address.min()}..{control.data_address.max()})")
        if (control.weight_address.min() < 0
                or control.weight_address.max() >= WEIGHT_WORDS):
            raise KilnError(f"job reads weight RAM outside 0..{WEIGHT_WORDS - 1}")
        ends = np.flatnonzero(control.emit)
        outputs = len(ends)
        drain = cycles - (int(ends[-1]) + 1 if outputs else 0)
        if outputs == 0:
            return JobResult(cycles, 0, drain, np.zeros((self.batch, 0, LANES), np.int64))
        used = int(ends[-1]) + 1
        # Coefficient of each cycle's product in its output: ±2^(diagonals entered after it).
        segment = np.cumsum(control.first[:used]) - 1
        shifts = control.shift[:used].astype(np.int64)
        inclusive = np.cumsum(shifts)
        # Shifts strictly after cycle t within its output: the output's last running total
        # minus t's (a shift on entry to t's own diagonal does not scale t).
        after = inclusive[ends][segment] - inclusive
        negative = np.zeros(used, dtype=bool)
        if job.wsigned:
            negative ^= control.zigzag[:used, 0] == 0
        if job.isigned:
            negative ^= control.zigzag[:used, 1] == 0
        coefficient = np.where(negative, -1, 1) * (np.int64(1) << after)
        weight_words = self.weight[control.weight_address[:used]]  # [T, 64]
        acc = np.zeros((self.batch, outputs, LANES), dtype=np.int64)
        per_sample = used * LANES * 8  # the int64 terms of one input
        chunk = max(1, max_chunk_bytes // max(per_sample, 1))
        starts = np.concatenate([[0], ends[:-1] + 1])
        for begin in range(0, self.batch, chunk):
            data_words = self.data[begin:begin + chunk, control.data_address[:used]]  # [b, T]
            counts = np.bitwise_count(data_words[:, :, None] & weight_words[None, :, :])
            terms = np.multiply(counts, coefficient[None, :, None], dtype=np.int64)
            acc[begin:begin + chunk] = np.add.reduceat(terms, starts, axis=1)
        acc = wrap_signed(acc, ACC_BITS)
        self._write_outputs(job, acc)
        return JobResult(cycles, outputs, drain, acc)

    def _write_outputs(self, job: MvuJob, acc: np.ndarray) -> None:
        outputs = acc.shape[1]
        s_offset, _ = agu_sequence([0, job.slength, 0, 0, 0], [*job.sjump, 0, 0, 0], outputs)
        s_address = job.sbase + s_offset
        b_address = job.bbase + s_offset
        if s_address.min() < 0 or s_address.max() >= SCALER_DEPTH:
            raise KilnError(f"job reads scaler/bias RAM outside 0..{SCALER_DEPTH - 1}")
        scale = self.scaler[:, s_address].T  # [outputs, 64]
        bias = self.bias[:, b_address].T
        value = wrap_signed(acc * scale[None] + bias[None], SCALER_OUT_BITS)
        low = job.msbidx - job.oprec + 1
        bits = (value >> low) & ((np.int64(1) << job.oprec) - 1)
        # outagu.v: one address per serialized bit, from obase, whatever ojump/olength say.
        address = job.obase + job.oprec * np.arange(outputs, dtype=np.int64)
        if address.min() < 0 or address.max() + job.oprec > DATA_WORDS:
            raise KilnError(f"job writes data RAM outside 0..{DATA_WORDS - 1}")
        words = pack_planes(bits, job.oprec)  # [batch, outputs, oprec]
        for plane in range(job.oprec):
            self.data[:, address + plane] = words[:, :, plane]
