"""Run an :class:`MvuPlan` on the MVU model and compare every layer with kiln's engine.

The proof that the generated configurations and images are right: the model executes the
jobs exactly as configured, the host steps (padding fills, max pooling, the ReLU and the
layout of a raw buffer) run between them as the controller would, and each layer's output
read back from the data RAM must equal the engine's tensor for it, element for element.

>>> report = prove(plan, inputs)                 # doctest: +SKIP
>>> report.mismatches
0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer.engine import _UNARY
from kiln.integer.engine import run as run_engine
from kiln.mvu.job import LANES
from kiln.mvu.model import Mvu, pack_planes, unpack_planes
from kiln.mvu.plan import Buffer, HostPool, MvuLayer, MvuPlan


def store_tensor(unit: Mvu, buffer: Buffer, tensor: np.ndarray | None) -> None:
    """Write ``buffer`` whole: padding positions hold its fill value, the interior
    ``tensor`` [batch, C, H, W] (None: only the fill, as the host does before a layer)."""
    height, width = buffer.padded
    top, left = buffer.padding
    frame = np.zeros((unit.batch, height, width, buffer.blocks * LANES), dtype=np.int64)
    frame[..., :buffer.channels] = buffer.fill_value
    if tensor is not None:
        tensor = np.asarray(tensor, dtype=np.int64).reshape(
            unit.batch, buffer.channels, buffer.height, buffer.width)
        frame[:, top:top + buffer.height, left:left + buffer.width, :buffer.channels] = \
            tensor.transpose(0, 2, 3, 1)
    words = pack_planes(frame.reshape(unit.batch, height, width, buffer.blocks, LANES),
                        buffer.quant.bits)
    unit.data[:, buffer.base:buffer.base + buffer.words] = words.reshape(unit.batch, -1)


def load_tensor(unit: Mvu, buffer: Buffer) -> np.ndarray:
    """The interior of ``buffer`` as [batch, C, H, W] integers."""
    height, width = buffer.padded
    top, left = buffer.padding
    words = unit.data[:, buffer.base:buffer.base + buffer.words].reshape(
        unit.batch, height, width, buffer.blocks, buffer.quant.bits)
    values = unpack_planes(words, buffer.quant.bits, signed=buffer.quant.signed)
    values = values.reshape(unit.batch, height, width, buffer.blocks * LANES)
    interior = values[:, top:top + buffer.height, left:left + buffer.width, :buffer.channels]
    return interior.transpose(0, 3, 1, 2)


@dataclass
class LayerProof:
    name: str
    jobs: int
    countdown: int
    cycles: int
    outputs: int
    expected_outputs: int
    drain_cycles: int
    mismatches: int
    first_mismatch: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ProofReport:
    """Per layer: jobs, countdown, cycles the model ran, outputs, mismatches."""

    samples: int
    layers: list[LayerProof] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return sum(layer.mismatches for layer in self.layers)

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "mismatches": self.mismatches, "cycles": self.cycles,
                "layers": [layer.as_dict() for layer in self.layers]}


def host_pool(unit: Mvu, step: HostPool) -> None:
    """The controller's max pooling, from one data-RAM buffer to another."""
    source = load_tensor(unit, step.source)
    result = _UNARY[step.op.kind](step.op, source, "mvu")
    store_tensor(unit, step.target, result)


def start_layer(unit: Mvu, layer: MvuLayer) -> None:
    """What the controller does before a layer's jobs: fill the target's padding."""
    store_tensor(unit, layer.target, None)


def finish_layer(unit: Mvu, layer: MvuLayer) -> None:
    """What the controller does after a layer's jobs when they wrote a raw buffer: the
    ReLU, saturating (on every plane the unit wrote), and the target's layout (passes
    interleaved, padding kept)."""
    raw = layer.raw
    if raw is None:
        return
    out_h, out_w = layer.out_size
    planes = layer.written_planes
    values = np.zeros((unit.batch, out_h, out_w, layer.target.blocks, LANES), dtype=np.int64)
    offset = raw.base
    for one in layer.passes:
        count = out_h * out_w * one.blocks * planes
        words = unit.data[:, offset:offset + count].reshape(
            unit.batch, out_h, out_w, one.blocks, planes)
        values[:, :, :, one.first_block:one.first_block + one.blocks] = unpack_planes(
            words, planes, signed=raw.quant.signed)
        offset += count
    if layer.relu:
        values = np.clip(values, 0, layer.target.quant.qmax)
    tensor = values.reshape(unit.batch, out_h, out_w, -1)[..., :layer.target.channels]
    store_tensor(unit, layer.target, tensor.transpose(0, 3, 1, 2))


def _first_mismatch(layer: MvuLayer, got: np.ndarray, expected: np.ndarray) -> str:
    sample, channel, y, x = (int(v) for v in np.argwhere(got != expected)[0])
    rows = layer.out_size[0]
    block = channel // LANES
    pass_index = next(i for i, one in enumerate(layer.passes)
                      if one.first_block <= block < one.first_block + one.blocks)
    job = pass_index * rows + y
    return (f"layer '{layer.op.name}', job {job} (output row {y}, pass {pass_index}), "
            f"sample {sample}, channel {channel}, x {x}: expected {expected[sample, channel, y, x]}"
            f", got {got[sample, channel, y, x]}")


def prove(plan: MvuPlan, inputs: np.ndarray, *, stop_at_first: bool = False) -> ProofReport:
    """Run ``plan`` on the model for integer ``inputs`` [N, *input_shape] and compare every
    layer with the engine. A layer is compared on what the model itself produced from the
    previous layer's model output, so one wrong layer does not hide behind another."""
    inputs = np.asarray(inputs)
    golden = run_engine(plan.program, inputs, keep=True)
    unit = Mvu(batch=len(inputs))
    store_tensor(unit, plan.input, inputs)
    report = ProofReport(len(inputs))
    for step in plan.steps:
        if isinstance(step, HostPool):
            host_pool(unit, step)
            continue
        start_layer(unit, step)
        cycles = outputs = drain = 0
        for one in step.passes:
            unit.load_weights(one.weight_words)
            unit.load_scaler_bias(one.scaler, one.bias)
            for job in one.jobs:
                result = unit.run(job)
                cycles += result.cycles
                outputs += result.outputs
                drain += result.drain_cycles
        finish_layer(unit, step)
        got = load_tensor(unit, step.target)
        expected = golden[step.op.output].reshape(got.shape)
        wrong = int(np.count_nonzero(got != expected))
        proof = LayerProof(step.op.name, len(step.jobs), step.countdown, cycles, outputs,
                           step.out_size[0] * step.out_size[1] * step.target.blocks,
                           drain, wrong)
        if wrong:
            proof.first_mismatch = _first_mismatch(step, got, expected)
        report.layers.append(proof)
        if wrong and stop_at_first:
            break
        # Carry on from the engine's values, so later layers are checked on their own.
        store_tensor(unit, step.target, expected)
    return report


def check_proof(report: ProofReport) -> None:
    """Raise a KilnError naming the first mismatching layer, job and element."""
    for layer in report.layers:
        if layer.mismatches:
            raise KilnError(f"MVU model and engine differ in {layer.mismatches} element(s): "
                            f"first at {layer.first_mismatch}")
