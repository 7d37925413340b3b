"""One MVU job: its configuration (what the RISC-V controller writes to the CSRs) and the
control sequence the unit's address generators and zig-zag unit produce from it.

The semantics follow BARVINN's MVU RTL (``agu.sv``, ``zigzagu.v``, ``inagu.sv``,
``shacc.v``):

* an address generator has lengths ``l1..l4`` (each loop runs ``l + 1`` times, loop 4
  innermost) and signed jumps ``j0..j4``; after each address it adds the jump of the
  innermost loop that is not on its last iteration (``j0`` and a restart when all are);
* data and weight addresses are ``base + generator + zig-zag offset``; the zig-zag unit
  walks the (weight plane, data plane) pairs by anti-diagonals from MSB×MSB and steps
  when the weight generator takes a jump selected by ``zigzag_step_sel``; entering a new
  diagonal doubles the accumulator (``sh``);
* the accumulator is emitted (and the next product loads it afresh) when the weight
  generator takes a jump selected by ``shacc_load_sel``;
* the job runs ``countdown`` cycles, one data word × weight word product per cycle; kiln's
  countdowns add :data:`OUTPUT_DRAIN` cycles after the last product, because the scaler and
  bias RAMs are read only while the job runs (``mvutop.sv``: ``rds_en = run & …``);
* an emitted accumulator is scaled (``fixedpointscaler.v``: ``acc·scale + bias`` kept to
  :data:`SCALER_OUT_BITS` bits), and ``oprec`` bits from ``msbidx`` down are written, MSB
  plane first, at consecutive addresses from ``obase`` (``outagu.v`` steps +1 per bit; the
  ``mvuojump``/``mvuolength`` CSRs are not wired to it). There is no ReLU in the data path.

>>> job = MvuJob(iprec=2, wprec=2, oprec=2, ilength=[0, 0, 0, 0, 0], ijump=[0] * 5,
...              wlength=[0, 0, 3, 0, 0], wjump=[0, 0, 0, 0, 0], countdown=4)
>>> control = job_control(job)
>>> control.zigzag.tolist()   # (weight plane, data plane) per cycle: MSB×MSB first
[[0, 0], [1, 0], [0, 1], [1, 1]]
>>> control.shift.tolist(), control.emit.tolist()
([False, True, False, True], [False, False, False, True])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer.arith import MVU_SCALER_BITS

LANES = 64
DATA_WORDS = 32 * 1024
WEIGHT_WORDS = 512
ACC_BITS = 27
BIAS_BITS = 27
SCALE_BITS = 16
SCALER_OUT_BITS = MVU_SCALER_BITS  # fixedpointscaler p_q: BSCALERP = 27
MSBIDX_BITS = 5  # mvuquant[4:0] (BQMSBIDX = clog2(27))
# Cycles a job must keep running after its last product: the scaler AGU steps
# VVPSTAGES + MEMRDLATENCY = 5 cycles after an emit, and the scaler and bias RAMs are read
# only while the job runs. Measured on the RTL: 4 leaves the last vector unscaled, 5 is exact.
OUTPUT_DRAIN = 5
COUNTDOWN_BITS = 29
JUMP_BITS = 15
LENGTH_BITS = 15
MAX_PRECISION = 16


@dataclass
class MvuJob:
    """The CSR values of one job. Lists of five hold index 0..4 (``length[0]`` unused, as in
    BARVINN's ``mvuilength_1..4``). Output: ``oprec`` planes of each emitted vector are
    written MSB first, vector after vector, from ``obase``. Scaler and bias addresses step
    like a one-loop generator (``slength``/``sjump``) once per emitted vector."""

    iprec: int
    wprec: int
    oprec: int
    ilength: list[int]
    ijump: list[int]
    wlength: list[int]
    wjump: list[int]
    countdown: int
    isigned: bool = False
    wsigned: bool = True
    osigned: bool = False
    msbidx: int = 0
    ibase: int = 0
    wbase: int = 0
    obase: int = 0
    sbase: int = 0
    bbase: int = 0
    slength: int = 0
    sjump: list[int] = field(default_factory=lambda: [0, 0])
    # jumps of the weight generator (bit k = jk) that step the zig-zag / emit an output
    zigzag_step_sel: int = 0b00111
    shacc_load_sel: int = 0b00011

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, where: str = "job") -> None:
        """Reject values the CSRs cannot hold, naming the field."""
        for name in ("iprec", "wprec", "oprec"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_PRECISION:
                raise KilnError(f"{where}: {name} {value} is outside 1..{MAX_PRECISION} "
                                "(the MVU's precision fields)")
        for name in ("ilength", "wlength"):
            for index, value in enumerate(getattr(self, name)[1:], start=1):
                if not 0 <= value < 1 << LENGTH_BITS:
                    raise KilnError(f"{where}: {name}[{index}] = {value} does not fit the "
                                    f"{LENGTH_BITS}-bit length register")
        for name in ("ijump", "wjump"):
            for index, value in enumerate(getattr(self, name)):
                if not -(1 << (JUMP_BITS - 1)) <= value < 1 << (JUMP_BITS - 1):
                    raise KilnError(f"{where}: {name}[{index}] = {value} does not fit the "
                                    f"{JUMP_BITS}-bit signed jump register")
        if not 0 < self.countdown < 1 << COUNTDOWN_BITS:
            raise KilnError(f"{where}: countdown {self.countdown} does not fit "
                            f"{COUNTDOWN_BITS} bits")
        if not self.oprec - 1 <= self.msbidx < SCALER_OUT_BITS:
            raise KilnError(f"{where}: msbidx {self.msbidx} must be in {self.oprec - 1}.."
                            f"{SCALER_OUT_BITS - 1} (the scaler's output has "
                            f"{SCALER_OUT_BITS} bits)")


def agu_sequence(lengths: list[int], jumps: list[int], steps: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(offset, jump taken) for ``steps`` steps of an address generator, as ``agu.sv``.

    >>> agu_sequence([0, 1, 0, 0, 2], [100, 10, 0, 0, 1], 7)[0].tolist()
    [0, 1, 2, 12, 13, 14, 114]
    """
    l1, l2, l3, l4 = (int(v) for v in lengths[1:5])
    j = [int(v) for v in jumps]
    # One period of the nested loops, then tiled: periods repeat exactly (j0 restarts all).
    period = (l1 + 1) * (l2 + 1) * (l3 + 1) * (l4 + 1)
    if period > 1 << 24:
        raise KilnError(f"address generator period {period} is too long to model")
    index = np.arange(min(period, steps), dtype=np.int64)
    c4 = index % (l4 + 1)
    c3 = index // (l4 + 1) % (l3 + 1)
    c2 = index // ((l4 + 1) * (l3 + 1)) % (l2 + 1)
    c1 = index // ((l4 + 1) * (l3 + 1) * (l2 + 1))
    taken = np.full(len(index), 4, dtype=np.int8)
    last4 = c4 == l4
    taken[last4] = 3
    taken[last4 & (c3 == l3)] = 2
    taken[last4 & (c3 == l3) & (c2 == l2)] = 1
    taken[last4 & (c3 == l3) & (c2 == l2) & (c1 == l1)] = 0
    repeats = -(-steps // len(index))
    taken = np.tile(taken, repeats)[:steps]
    deltas = np.asarray(j, dtype=np.int64)[taken]
    offsets = np.concatenate([[0], np.cumsum(deltas[:-1])])
    return offsets, taken


def zigzag_walk(wprec: int, iprec: int) -> list[tuple[int, int, bool]]:
    """The zig-zag unit's states for one multiplication, as ``zigzagu.v``: (weight plane,
    data plane, shift-on-entry) from MSB×MSB along anti-diagonals.

    >>> zigzag_walk(2, 2)
    [(0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True)]
    """
    states = [(0, 0, False)]
    iw = id_ = 0
    while True:
        shift = iw == 0 or id_ == iprec - 1
        id_ += 1
        iw -= 1
        if shift:
            iw = iw + id_ + 1
            id_ = 0
            if iw >= wprec + iprec - 1:
                return states  # wraps to (0, 0): the multiplication is done
            if iw >= wprec:
                id_ = iw - wprec + 1
                iw -= id_
        states.append((iw, id_, shift))


@dataclass
class JobControl:
    """Per cycle: data and weight addresses, the zig-zag planes, whether the product enters
    a new diagonal (``shift``), whether the accumulator is emitted after it (``emit``)."""

    data_address: np.ndarray
    weight_address: np.ndarray
    zigzag: np.ndarray  # [cycles, 2]: weight plane, data plane
    shift: np.ndarray
    emit: np.ndarray
    first: np.ndarray  # the product loads the accumulator afresh


def job_control(job: MvuJob) -> JobControl:
    """The control sequence of ``job`` (independent of the data: computed once per job)."""
    cycles = job.countdown
    d_offset, _ = agu_sequence(job.ilength, job.ijump, cycles)
    w_offset, w_taken = agu_sequence(job.wlength, job.wjump, cycles)
    step = ((job.zigzag_step_sel >> w_taken.astype(np.int64)) & 1).astype(bool)
    emit = ((job.shacc_load_sel >> w_taken.astype(np.int64)) & 1).astype(bool)
    walk = zigzag_walk(job.wprec, job.iprec)
    # The zig-zag state advances after each cycle whose weight jump steps it.
    state = np.concatenate([[0], np.cumsum(step[:-1])]) % len(walk)
    table = np.array([(w, d) for w, d, _ in walk], dtype=np.int64).reshape(-1, 2)
    shifts = np.array([s for _, _, s in walk], dtype=bool)
    # A shift enters with the state only if the previous cycle stepped into it.
    stepped_in = np.concatenate([[False], step[:-1]])
    first = np.concatenate([[True], emit[:-1]])
    return JobControl(
        data_address=job.ibase + d_offset + table[state, 1],
        weight_address=job.wbase + w_offset + table[state, 0],
        zigzag=table[state], shift=shifts[state] & stepped_in & ~first, emit=emit,
        first=first)
