"""Run MVU jobs on BARVINN's own RTL (Verilator, :mod:`kiln.mvu.rtl_build`) and prove a
plan on it, layer by layer, against kiln's engine — the same comparison as
:func:`kiln.mvu.run.prove`, with the unit's RTL in place of kiln's model.

Each CSR is written through the wrapper's APB decoder at the address BARVINN's
``mvu_pkg.sv`` gives it (read from the RTL itself, :func:`csr_addresses`), with the values
of :func:`kiln.mvu.emit.csr_writes` — the same list the C header writes. Memories are
loaded through the MVU's own write ports; results are read back through its controller
read port. The controller's part (weight loads, padding fills, the host steps) is done by
kiln between jobs, as the RISC-V core would.

>>> report = prove_on_rtl(plan, inputs)            # doctest: +SKIP
>>> report.mismatches, report.layers[0].rtl_cycles
(0, 2320)
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer.engine import run as run_engine
from kiln.mvu.emit import csr_writes, lane_words
from kiln.mvu.job import MvuJob
from kiln.mvu.model import Mvu
from kiln.mvu.plan import ZERO_WORD, HostPool, MvuLayer, MvuPlan
from kiln.mvu.rtl_build import build_bench, rtl_source_dir
from kiln.mvu.run import finish_layer, host_pool, load_tensor, start_layer, store_tensor

# Cycles the harness keeps clocking after a job's interrupt: a job's countdown already
# covers its output pipeline (kiln.mvu.plan.OUTPUT_DRAIN), so any write seen here is a
# write the model did not expect.
DRAIN_AFTER_IRQ = 32


@cache
def csr_addresses(source: str | None = None) -> dict[str, int]:
    """CSR name (``mvuwbaseptr``) → 12-bit address, from the RTL's ``mvu_csr_t`` enum."""
    path = Path(source) if source else rtl_source_dir()
    text = (path / "mvu" / "verification" / "lib" / "mvu" / "mvu_pkg.sv").read_text()
    found = {name.lower(): int(value, 16)
             for name, value in re.findall(r"CSR_(MVU\w+)\s*=\s*12'h([0-9a-fA-F]+)", text)}
    if "mvucommand" not in found:
        raise KilnError(f"no CSR map in {path}/mvu/verification/lib/mvu/mvu_pkg.sv")
    return found


@dataclass
class JobRun:
    """One job on the RTL: cycles from the ``mvucommand`` write to the interrupt, cycles
    with ``run`` high, data-RAM writes of the output serializer (and when)."""

    to_irq: int
    run_cycles: int
    writes: int
    first_write: int
    last_write: int


def job_script(job: MvuJob, mvu: int = 0) -> list[str]:
    """Harness lines that configure and start ``job`` and wait for it."""
    addresses = csr_addresses()
    lines = []
    for name, value in csr_writes(job, mvu):
        if name not in addresses:
            raise KilnError(f"CSR {name} is not in the RTL's map")
        lines.append(f"c {mvu << 12 | addresses[name]:x} {value & 0xFFFFFFFF:x}")
    lines.append(f"run {DRAIN_AFTER_IRQ}")
    return lines


def memory_script(unit: Mvu, sample: int, ranges: list[tuple[int, int]]) -> list[str]:
    """Lines that write the data-RAM words ``ranges`` [(base, count)] of ``sample``."""
    lines = []
    for base, count in ranges:
        words = unit.data[sample, base:base + count]
        lines += [f"d {base + i:x} {int(w):016x}" for i, w in enumerate(words)]
    return lines


def weight_script(weight_words: np.ndarray, scaler: np.ndarray, bias: np.ndarray
                  ) -> list[str]:
    """Lines that load a pass's weight, scaler and bias RAMs through the MVU's ports."""
    lines = [f"w {address:x} " + "".join(f"{int(lane):016x}" for lane in word[::-1])
             for address, word in enumerate(weight_words)]
    lines += [f"s {address:x} {line}" for address, line in enumerate(lane_words(scaler, 16))]
    lines += [f"b {address:x} {line}" for address, line in enumerate(lane_words(bias, 32))]
    return lines


def run_script(lines: list[str], binary: Path | None = None
               ) -> tuple[list[JobRun], dict[int, int]]:
    """Run harness ``lines``; return the job results and the words read back."""
    binary = binary or build_bench()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="kiln-mvu-") as script:
        script.write("\n".join(lines) + "\n")
        script.flush()
        result = subprocess.run([str(binary), script.name], capture_output=True, text=True)
    if result.returncode != 0:
        raise KilnError(f"the MVU RTL harness failed: {result.stderr.strip()[-500:]}")
    jobs, words = [], {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts[0] == "job":
            jobs.append(JobRun(*(int(v) for v in parts[1:6])))
        elif parts[0] == "q":
            words[int(parts[1], 16)] = int(parts[2], 16)
    return jobs, words


@dataclass
class RtlLayerProof:
    """One layer on the RTL: jobs, words compared and mismatching, cycles (RTL against the
    model's countdowns), output writes against the model's, simulation seconds."""

    name: str
    jobs: int
    words: int
    mismatches: int
    elements: int
    element_mismatches: int
    model_cycles: int
    rtl_run_cycles: int
    rtl_cycles_to_irq: int
    writes: int
    expected_writes: int
    seconds: float
    first_mismatch: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RtlProofReport:
    samples: int
    build_seconds: float
    layers: list[RtlLayerProof] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return sum(layer.mismatches + layer.element_mismatches for layer in self.layers)

    @property
    def words(self) -> int:
        return sum(layer.words for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "mismatches": self.mismatches, "words": self.words,
                "build_seconds": self.build_seconds,
                "layers": [layer.as_dict() for layer in self.layers]}


def _layer_on_rtl(layer: MvuLayer, unit: Mvu, sample: int, binary: Path
                  ) -> tuple[list[JobRun], np.ndarray]:
    """Run every pass and job of ``layer`` for one sample; return the job runs and the
    words of the buffer the jobs write (as the RTL left them)."""
    written = layer.written
    lines = ["reset"]
    # The zero word too: the controller keeps it zero (kiln.mvu.plan.ZERO_WORD says why).
    lines += memory_script(unit, sample, [(ZERO_WORD, 1),
                                          (layer.source.base, layer.source.words),
                                          (written.base, written.words)])
    for one in layer.passes:
        lines += weight_script(one.weight_words, one.scaler, one.bias)
        for job in one.jobs:
            lines += job_script(job)
    lines.append(f"q {written.base:x} {written.words:x}")
    runs, words = run_script(lines, binary)
    image = np.array([words[written.base + i] for i in range(written.words)],
                     dtype=np.uint64)
    return runs, image


def prove_on_rtl(plan: MvuPlan, inputs: np.ndarray, *, workers: int = 2,
                 progress: Any = None) -> RtlProofReport:
    """Run every job of ``plan`` on BARVINN's RTL for integer ``inputs`` [N, ...] and
    compare, per layer, the data-RAM words the jobs wrote with what kiln's model writes
    (word for word) and the layer's tensor with the engine's (element for element). Like
    :func:`kiln.mvu.run.prove`, each layer starts from the engine's previous tensor."""
    started = time.perf_counter()
    binary = build_bench()
    build_seconds = time.perf_counter() - started
    inputs = np.asarray(inputs)
    golden = run_engine(plan.program, inputs, keep=True)
    unit = Mvu(batch=len(inputs))
    store_tensor(unit, plan.input, inputs)
    report = RtlProofReport(len(inputs), build_seconds)
    for step in plan.steps:
        if isinstance(step, HostPool):
            host_pool(unit, step)
            continue
        begin = time.perf_counter()
        start_layer(unit, step)
        # kiln's model of the same jobs, for the word-level comparison and the counts.
        model = Mvu(batch=len(inputs))
        model.data[:] = unit.data
        model_results = []
        for one in step.passes:
            model.load_weights(one.weight_words)
            model.load_scaler_bias(one.scaler, one.bias)
            model_results += [model.run(job) for job in one.jobs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_layer_on_rtl, [step] * len(inputs),
                                    [unit] * len(inputs), range(len(inputs)),
                                    [binary] * len(inputs)))
        written = step.written
        region = slice(written.base, written.base + written.words)
        expected_words = model.data[:, region]
        got_words = np.stack([image for _, image in results])
        unit.data[:, region] = got_words
        finish_layer(unit, step)
        got = load_tensor(unit, step.target)
        expected = golden[step.op.output].reshape(got.shape)
        runs = results[0][0]
        proof = RtlLayerProof(
            name=step.op.name, jobs=len(step.jobs),
            words=int(got_words.size), mismatches=int(np.count_nonzero(
                got_words != expected_words)),
            elements=int(expected.size),
            element_mismatches=int(np.count_nonzero(got != expected)),
            model_cycles=sum(r.cycles for r in model_results),
            rtl_run_cycles=sum(r.run_cycles for r in runs),
            rtl_cycles_to_irq=sum(r.to_irq for r in runs),
            writes=sum(r.writes for r in runs),
            expected_writes=sum(r.outputs for r in model_results) * step.written_planes,
            seconds=time.perf_counter() - begin)
        if proof.mismatches or proof.element_mismatches:
            proof.first_mismatch = _first_word_mismatch(step, got_words, expected_words)
        report.layers.append(proof)
        if progress is not None:
            progress(proof)
        store_tensor(unit, step.target, expected)
    return report


def _first_word_mismatch(layer: MvuLayer, got: np.ndarray, expected: np.ndarray) -> str:
    differing = np.argwhere(got != expected)
    if not len(differing):
        return f"layer '{layer.op.name}': words agree, elements differ"
    sample, offset = (int(v) for v in differing[0])
    address = layer.written.base + offset
    return (f"layer '{layer.op.name}', sample {sample}, data RAM word {address}: model "
            f"{int(expected[sample, offset]):016x}, RTL {int(got[sample, offset]):016x}")


def check_rtl_proof(report: RtlProofReport) -> None:
    """Raise a KilnError naming the first layer where the RTL and kiln differ."""
    for layer in report.layers:
        if layer.mismatches or layer.element_mismatches:
            raise KilnError(f"BARVINN's RTL and kiln differ in layer '{layer.name}': "
                            f"{layer.mismatches} word(s), {layer.element_mismatches} "
                            f"element(s); first: {layer.first_mismatch}")
        if layer.writes != layer.expected_writes:
            raise KilnError(f"layer '{layer.name}': the RTL wrote {layer.writes} data words, "
                            f"kiln's model {layer.expected_writes}")
