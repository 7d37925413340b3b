"""Lay an MVU-lowered program out on one MVU: data RAM buffers, per-layer jobs, images.

Every tensor lives in the data RAM as ``((y·Wp + x)·blocks + b)·prec + p`` (y, x in the
tensor's padded frame, its consumer's padding; channel 64·b + c in bit c; plane 0 = MSB).
The host (the RISC-V controller) fills a buffer with its padding value before the layer
that writes it, loads each layer's weights, scales and biases, runs max pooling between
jobs on the data RAM (the MVU's own pooler only pools consecutive outputs of one job), and
kicks one job per output row. A dense layer is a convolution whose kernel covers its whole
input (after a flatten, the kernel is the feature map: its weight index c·H·W + y·W + x is
exactly the NCHW flatten order), so every layer runs as a convolution job.

Layers whose weights exceed the 512-word weight RAM are split into *passes* of as many
64-channel output blocks as fit; each pass reloads the weight RAM.

The unit writes each job's outputs at consecutive addresses and has no ReLU (BARVINN's
RTL: ``outagu.v``, ``mvu.v``). So a layer whose outputs pass a ReLU, or that needs more
than one pass (its pixels' channel blocks would interleave), writes into a *raw* buffer,
job after job, with every plane the value can reach when there is a ReLU; the host then
applies the ReLU (saturating) and lays the result out in the target
(:func:`kiln.mvu.run.finish_layer`), as it does max pooling. Other layers write their
target directly.

>>> plan = plan_mvu(lower_for_mvu(program))       # doctest: +SKIP
>>> [len(layer.jobs) for layer in plan.layers]    # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant
from kiln.mvu.job import (
    DATA_WORDS,
    LANES,
    MAX_PRECISION,
    OUTPUT_DRAIN,
    SCALER_OUT_BITS,
    WEIGHT_WORDS,
    MvuJob,
)


@dataclass
class Buffer:
    """A tensor in the data RAM."""

    name: str
    channels: int
    height: int
    width: int
    padding: tuple[int, int]  # (top/bottom, left/right): the consumer's padding
    quant: TensorQuant
    base: int = 0

    @property
    def blocks(self) -> int:
        return math.ceil(self.channels / LANES)

    @property
    def padded(self) -> tuple[int, int]:
        return self.height + 2 * self.padding[0], self.width + 2 * self.padding[1]

    @property
    def words(self) -> int:
        height, width = self.padded
        return height * width * self.blocks * self.quant.bits

    def address(self, y: int, x: int, block: int = 0) -> int:
        """Word address of (y, x) in the padded frame, channel block ``block``, plane 0."""
        width = self.padded[1]
        return self.base + ((y * width + x) * self.blocks + block) * self.quant.bits

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "words": self.words,
                "shape": [self.channels, self.height, self.width],
                "padding": list(self.padding), "precision": self.quant.bits,
                "signed": self.quant.signed, "fill": self.fill_value}

    @property
    def fill_value(self) -> int:
        """What padded positions hold: the integer of real 0 (the zero point)."""
        return self.quant.zero_point


@dataclass
class Pass:
    """The jobs of one weight-RAM load: output blocks ``first_block`` … + ``blocks`` − 1."""

    first_block: int
    blocks: int
    weight_words: np.ndarray  # [n, 64] uint64 (4096-bit words, lane-major)
    scaler: np.ndarray  # [64, blocks]
    bias: np.ndarray  # [64, blocks]
    jobs: list[MvuJob] = field(default_factory=list)


@dataclass
class MvuLayer:
    """A conv or dense op as MVU jobs."""

    op: IntOp
    source: Buffer
    target: Buffer
    kernel: tuple[int, int]
    stride: tuple[int, int]
    out_size: tuple[int, int]
    passes: list[Pass]
    notes: list[str] = field(default_factory=list)
    in_blocks: int = 0  # input blocks the jobs walk: the source's, or more (zero weights)
    relu: bool = False  # the host applies the ReLU (the unit has none)
    wprec: int = 0  # weight planes the jobs walk: the op's bits, or more (sign-extended)
    raw: Buffer | None = None  # where the jobs write, when the host finishes the layer

    @property
    def written(self) -> Buffer:
        """The buffer the jobs write: the raw buffer, or the target itself."""
        return self.raw or self.target

    @property
    def written_planes(self) -> int:
        """Planes the unit writes per output vector: the target's, or with a ReLU every
        plane the value can reach (the host saturates it)."""
        return self.raw.quant.bits if self.raw is not None else self.target.quant.bits

    @property
    def jobs(self) -> list[MvuJob]:
        return [job for one in self.passes for job in one.jobs]

    @property
    def countdown(self) -> int:
        return sum(job.countdown for job in self.jobs)


@dataclass
class HostPool:
    """Max pooling done by the controller between jobs, on the data RAM."""

    op: IntOp
    source: Buffer
    target: Buffer
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class MvuPlan:
    """Everything the MVU and its controller need to run a program."""

    program: IntegerProgram
    input: Buffer
    buffers: list[Buffer]
    steps: list[MvuLayer | HostPool]

    @property
    def layers(self) -> list[MvuLayer]:
        return [step for step in self.steps if isinstance(step, MvuLayer)]

    @property
    def countdown(self) -> int:
        return sum(layer.countdown for layer in self.layers)


def _reject(op: IntOp, message: str, hint: str | None = None) -> KilnError:
    return KilnError(f"layer '{op.name}' ({op.kind}): {message}", hint=hint)


def weight_words(weight: np.ndarray, wprec: int, first_block: int, blocks: int,
                 in_blocks: int | None = None) -> np.ndarray:
    """Weight RAM words of output blocks ``first_block`` … for ``weight`` [K, C, FH, FW]:
    word (((f·FH + y)·FW + x)·iC + b)·wprec + p, lane o's bit c = plane p (MSB first, two's
    complement) of weight (64·(first_block+f) + o, 64·b + c, y, x)."""
    kernels, channels, height, width = weight.shape
    in_blocks = in_blocks or math.ceil(channels / LANES)
    padded = np.zeros((blocks * LANES, in_blocks * LANES, height, width), dtype=np.int64)
    chosen = weight[first_block * LANES:(first_block + blocks) * LANES]
    padded[:len(chosen), :channels] = chosen
    # -> [f, y, x, b, p, o, c] bits
    tiles = padded.reshape(blocks, LANES, in_blocks, LANES, height, width)
    tiles = tiles.transpose(0, 4, 5, 2, 1, 3)  # f, y, x, b, o, c
    shifts = np.arange(wprec - 1, -1, -1, dtype=np.int64)
    bits = (tiles[..., None, :, :] >> shifts[:, None, None]) & 1  # f, y, x, b, p, o, c
    packed = np.bitwise_or.reduce(bits.astype(np.uint64)
                                  << np.arange(LANES, dtype=np.uint64), axis=-1)
    return packed.reshape(-1, LANES)


def _layer_geometry(op: IntOp, source: Buffer) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """(weight [K, C, FH, FW], kernel, stride, padding) of a conv or dense op."""
    weight = op.arrays["weight"].astype(np.int64)
    if op.kind == "conv":
        return (weight, tuple(weight.shape[2:]), tuple(op.attrs["stride"]),
                tuple(op.attrs["padding"]))
    expected = source.channels * source.height * source.width
    if weight.shape[1] != expected:
        raise _reject(op, f"takes {weight.shape[1]} inputs, its source holds {expected}")
    weight = weight.reshape(len(weight), source.channels, source.height, source.width)
    return weight, (source.height, source.width), (1, 1), (0, 0)


def _conv_jobs(layer: MvuLayer, one: Pass, scale_shift: int, raw_offset: int
               ) -> list[MvuJob]:
    """One job per output row of pass ``one``; in a raw buffer, the pass's outputs start
    ``raw_offset`` words in (after the earlier passes'), row after row."""
    source, target, op = layer.source, layer.target, layer.op
    aprec, oprec = source.quant.bits, layer.written_planes
    wprec = layer.wprec
    in_blocks, out_blocks = layer.in_blocks, one.blocks
    fh, fw = layer.kernel
    sy, sx = layer.stride
    out_h, out_w = layer.out_size
    width = source.padded[1]
    window = in_blocks * fh * fw
    combos = aprec * wprec
    ilength = [0, combos * out_blocks - 1, fh - 1, in_blocks * fw - 1, 0]
    ijump = [-aprec * (in_blocks * (fh - 1) * width + in_blocks * (fw - sx) - 1),
             -aprec * (in_blocks * (fh - 1) * width + in_blocks * fw - 1),
             aprec * (in_blocks * (width - fw) + 1), aprec, 0]
    wlength = [0, out_blocks - 1, combos - 1, window - 1, 0]
    wjump = [-wprec * (window * out_blocks - 1), wprec, -wprec * (window - 1), wprec, 0]
    top, left = target.padding
    row_words = out_w * out_blocks * oprec
    jobs = []
    for row in range(out_h):
        obase = (layer.raw.base + raw_offset + row * row_words if layer.raw is not None
                 else target.address(row + top, left, one.first_block))
        jobs.append(MvuJob(
            iprec=aprec, wprec=wprec, oprec=oprec, ilength=ilength, ijump=ijump,
            wlength=wlength, wjump=wjump,
            countdown=out_w * out_blocks * combos * window + OUTPUT_DRAIN,
            isigned=source.quant.signed, wsigned=bool(op.attrs.get("weight_signed", True)),
            osigned=target.quant.signed or layer.relu, msbidx=scale_shift + oprec - 1,
            ibase=source.address(row * sy, 0), wbase=0, obase=obase, sbase=0, bbase=0,
            slength=out_blocks - 1, sjump=[-(out_blocks - 1), 1]))
    return jobs


def _make_layer(op: IntOp, source: Buffer, target: Buffer, scratch_base: int) -> MvuLayer:
    weight, kernel, stride, padding = _layer_geometry(op, source)
    if tuple(source.padding) != tuple(padding):
        raise _reject(op, f"its source is stored with padding {source.padding}, the layer "
                      f"needs {padding}")
    height, width = source.padded
    out_h = (height - kernel[0]) // stride[0] + 1
    out_w = (width - kernel[1]) // stride[1] + 1
    if (out_h, out_w) != (target.height, target.width):
        raise _reject(op, f"computes {out_h}x{out_w} outputs, its target holds "
                      f"{target.height}x{target.width}")
    wprec = int(op.attrs.get("weight_bits", 8))
    combos = source.quant.bits * wprec
    in_blocks = source.blocks
    between = combos * in_blocks * kernel[0] * kernel[1]
    relu = bool(op.attrs["mvu"]["relu"])
    planes = (int(op.attrs["mvu"].get("relu_planes", target.quant.bits + 1)) if relu
              else target.quant.bits)
    # Each output must take at least as many cycles as the serializer writes planes, and
    # more than the drain after the last product (else the drain emits one more output).
    needed = max(planes, OUTPUT_DRAIN + 1)
    notes = []
    if between < needed and source.padded == (1, 1):
        # A vector input (a dense layer): walk extra channel blocks with zero weights, so
        # each output takes long enough. What the extra words hold does not matter; they
        # only need to be inside the data RAM.
        in_blocks = -(-needed // (combos * kernel[0] * kernel[1]))
        between = combos * in_blocks * kernel[0] * kernel[1]
        if source.base + in_blocks * source.quant.bits <= DATA_WORDS:
            notes.append(f"walks {in_blocks - source.blocks} extra zero-weight input "
                         f"block(s) so that each output takes {between} >= {needed} cycles "
                         "(the output serializer and the drain)")
        else:
            in_blocks, between = source.blocks, combos * source.blocks
    if between < needed:
        # Widen the weights (sign- or zero-extended: the same values in more planes), so
        # the zig-zag takes long enough per output.
        per_plane = source.quant.bits * in_blocks * kernel[0] * kernel[1]
        wider = -(-needed // per_plane)
        if wider <= MAX_PRECISION:
            notes.append(f"walks its {wprec}-bit weights as {wider}-bit (extended) so that "
                         f"each output takes {per_plane * wider} >= {needed} cycles (the "
                         "output serializer and the drain)")
            wprec, between = wider, per_plane * wider
    if between < needed:
        raise _reject(op, f"an output every {between} cycles is faster than the unit can "
                      f"write it ({planes} planes through the serializer, and more than the "
                      f"{OUTPUT_DRAIN}-cycle drain: {needed} cycles), even with "
                      f"{MAX_PRECISION}-bit weights",
                      hint="use a lower output precision or a larger layer")
    shift = int(op.attrs["mvu"]["shift"])
    if shift + planes - 1 >= SCALER_OUT_BITS:
        raise _reject(op, f"its output bits {shift + planes - 1}..{shift} do not fit the "
                      f"scaler's {SCALER_OUT_BITS}-bit output",
                      hint="lower it again with kiln.mvu.lower_for_mvu")
    per_block = in_blocks * kernel[0] * kernel[1] * wprec
    if per_block > WEIGHT_WORDS:
        raise _reject(op, f"one 64-channel output block needs {per_block} weight words "
                      f"({in_blocks} input blocks × {kernel[0]}×{kernel[1]} × {wprec} "
                      f"bits); the weight RAM holds {WEIGHT_WORDS}",
                      hint="use fewer input channels, a smaller kernel or narrower weights")
    scale = np.zeros(target.blocks * LANES, dtype=np.int64)
    bias = np.zeros(target.blocks * LANES, dtype=np.int64)
    scale[:len(weight)] = np.broadcast_to(op.arrays["m0"], (len(weight),))
    bias[:len(weight)] = op.arrays["mvu_bias"]
    per_pass = WEIGHT_WORDS // per_block
    layer = MvuLayer(op, source, target, kernel, stride, (out_h, out_w), [], notes, in_blocks,
                     relu, wprec)
    if relu or per_pass < target.blocks:
        raw = Buffer(f"{target.name}.raw", target.blocks * LANES, out_h, out_w, (0, 0),
                     TensorQuant(1.0, 0, planes, target.quant.signed or relu), scratch_base)
        if raw.base + raw.words > DATA_WORDS:
            raise _reject(op, f"its raw output ({raw.words} words, written before the host "
                          f"applies the ReLU or interleaves passes) does not fit the data RAM "
                          f"after the activations ({raw.base} words)",
                          hint="use narrower activations or a smaller input")
        layer.raw = raw
        layer.notes.append("writes a raw buffer; the host "
                           + ("applies the ReLU" if relu else "interleaves the passes"))
    raw_offset = 0
    for first in range(0, target.blocks, per_pass):
        blocks = min(per_pass, target.blocks - first)
        lanes = slice(first * LANES, (first + blocks) * LANES)
        one = Pass(first, blocks, weight_words(weight, wprec, first, blocks, in_blocks),
                   scale[lanes].reshape(blocks, LANES).T.copy(),
                   bias[lanes].reshape(blocks, LANES).T.copy())
        one.jobs = _conv_jobs(layer, one, shift, raw_offset)
        raw_offset += out_h * out_w * blocks * planes
        layer.passes.append(one)
    if len(layer.passes) > 1:
        layer.notes.append(f"weights need {per_block * target.blocks} words: "
                           f"{len(layer.passes)} passes of {per_pass} output block(s)")
    return layer


def plan_mvu(program: IntegerProgram) -> MvuPlan:
    """Buffers and jobs for ``program`` (lowered by :func:`kiln.mvu.lower.lower_for_mvu`)."""
    if program.rounding != "mvu":
        raise KilnError(f"program '{program.name}' is not lowered for the MVU (rounding "
                        f"'{program.rounding}')", hint="lower it with kiln.mvu.lower_for_mvu")
    shape = tuple(program.input_shape)
    shapes: dict[str, tuple[int, int, int]] = {
        program.input_name: (shape[0], shape[1], shape[2]) if len(shape) == 3
        else (int(np.prod(shape)), 1, 1)}
    quants = {program.input_name: program.input_quant}
    # Which padding each tensor is stored with: its consumer's.
    consumer_padding: dict[str, tuple[int, int]] = {}
    for op in program.ops:
        if op.kind == "conv":
            consumer_padding[op.inputs[0]] = tuple(op.attrs["padding"])
    aliases: dict[str, str] = {}  # flatten output -> the tensor it views
    for op in program.ops:
        source_shape = shapes[aliases.get(op.inputs[0], op.inputs[0])]
        if op.kind == "flatten":
            aliases[op.output] = aliases.get(op.inputs[0], op.inputs[0])
            continue
        if op.kind == "conv":
            k, _, fh, fw = op.arrays["weight"].shape
            (py, px), (sy, sx) = op.attrs["padding"], op.attrs["stride"]
            shapes[op.output] = (k, (source_shape[1] + 2 * py - fh) // sy + 1,
                                 (source_shape[2] + 2 * px - fw) // sx + 1)
        elif op.kind == "dense":
            shapes[op.output] = (len(op.arrays["weight"]), 1, 1)
        elif op.kind == "maxpool":
            (kh, kw), (sy, sx) = op.attrs["kernel"], op.attrs["stride"]
            py, px = op.attrs["padding"]
            if op.attrs.get("ceil_mode"):
                raise _reject(op, "ceil_mode pooling is not supported")
            shapes[op.output] = (source_shape[0], (source_shape[1] + 2 * py - kh) // sy + 1,
                                 (source_shape[2] + 2 * px - kw) // sx + 1)
        quants[op.output] = op.out_quant
    buffers: dict[str, Buffer] = {}

    def buffer(name: str) -> Buffer:
        name = aliases.get(name, name)
        if name not in buffers:
            channels, height, width = shapes[name]
            buffers[name] = Buffer(name, channels, height, width,
                                   consumer_padding.get(name, (0, 0)), quants[name])
        return buffers[name]

    work = [op for op in program.ops if op.kind != "flatten"]
    # Addresses first: the jobs' base addresses depend on them.
    ordered = [buffer(program.input_name)] + [buffer(op.output) for op in work]
    scratch_base = _allocate(ordered)
    steps: list[MvuLayer | HostPool] = []
    for op in work:
        source, target = buffer(op.inputs[0]), buffer(op.output)
        if op.kind == "maxpool":
            steps.append(HostPool(op, source, target, tuple(op.attrs["kernel"]),
                                  tuple(op.attrs["stride"]), tuple(op.attrs["padding"])))
        else:
            steps.append(_make_layer(op, source, target, scratch_base))
    return MvuPlan(program, ordered[0], ordered, steps)


# Data word 0 stays zero and is never allocated. In BARVINN's RTL a data bank answers a read
# whenever an address "hits" it, enabled or not, and the banks' words are OR-ed (mvu.v:
# ``rd_bankhit``, ``rdd_word <= |rdd_words_t``): bank 0 always hits (the interconnect read
# address is tied to 0) and is then read at the controller's read address. So while a job
# reads another bank, the word at the controller's (parked) read address in bank 0 is OR-ed
# into every data word the MVU reads. With the controller parked at address 0, a zero there
# makes that harmless.
ZERO_WORD = 0


def _allocate(chain: list[Buffer]) -> int:
    """Ping-pong after the zero word: even tensors of the chain first, odd ones after the
    largest even one; returns where the raw buffers start (after both)."""
    start = ZERO_WORD + 1
    even = max((b.words for b in chain[0::2]), default=0)
    odd = max((b.words for b in chain[1::2]), default=0)
    if start + even + odd > DATA_WORDS:
        largest = max(chain, key=lambda b: b.words)
        raise KilnError(f"the activations need {even + odd} data RAM words in two buffers "
                        f"(largest: '{largest.name}', {largest.words} words); the MVU's data "
                        f"RAM holds {DATA_WORDS - start} (word {ZERO_WORD} is kept zero)",
                        hint="use narrower activations or a smaller input")
    for index, one in enumerate(chain):
        one.base = start if index % 2 == 0 else start + even
    return start + even + odd
