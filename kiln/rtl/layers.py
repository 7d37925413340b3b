"""The layers an :class:`IntegerProgram` becomes in hardware: one :class:`Layer` per unit
(its shape, folding, widths and the sources it reads), built by walking the program's ops
in order over named tensors, so that a tensor read by several ops (a fork) and an op that
reads two (a residual add, the join) make a graph of streams, not only a chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.integer.arith import float32_fields
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant
from kiln.rtl.memories import weight_rom_layout, weight_rom_shape
from kiln.rtl.requant import (
    accumulator_range,
    narrow_add,
    narrow_multiplier,
    requant_dsps,
    requant_tiles,
    requantizers,
)

#: kinds of layer with no matrix unit (no weights, no kiln_requant)
UNITS_WITHOUT_MATRIX = ("maxpool", "add")
#: kinds of layer that take no (P_in, P_out) of their own: they keep their input's width
UNFOLDED_KINDS = ("maxpool", "avgpool", "add")
#: the ops the emitter takes (a pad, requantize or clamp standing alone is not one of them)
EMITTED_OPS = ("dense", "affine", "flatten", "conv", "maxpool", "avgpool", "add")
#: the weighted ops: each takes a (P_in, P_out) of the folding
WEIGHTED_OPS = ("dense", "affine", "conv")


@dataclass
class Layer:
    """One emitted layer: its shape, parallelism and quantization parameters."""

    name: str
    in_n: int
    out_n: int
    p_in: int
    p_out: int
    in_bits: int
    in_signed: bool
    in_zero: int
    out_bits: int
    out_zero: int
    lo: int
    hi: int
    weight_bits: int
    macs: int
    # dense; conv (im2col + matrix unit; a depthwise conv: im2col + diagonal unit); avgpool
    # (im2col + diagonal unit, weights 1); maxpool; add (kiln_add, two sources)
    kind: str = "dense"
    geometry: dict[str, int] = field(default_factory=dict)
    stream_in_n: int = 0  # elements per vector on the input stream (a pixel for conv)
    vectors_per_input: int = 1  # output vectors (pixels) per inference
    cycles_per_input: int = 0
    requants: int = 0  # requantizers shared by the P_OUT lanes (enough to keep up)
    wc_bits: int = 0  # a weight minus its zero point, signed (0: weight_bits + 1)
    acc_bits: int = 32  # every partial sum of the layer fits (kiln.rtl.requant)
    m_bits: int = 31  # the requantizers' multiplier, proven exact (kiln.rtl.requant)
    passes: int = 1  # cycles per lane in a requantizer: > 1 time-shares one DSP tile
    w_banks: int = 1  # the weight ROM in banks (kiln.rtl.memories)
    w_pack: int = 1  # weight words per ROM row (> 1: a packed ROM, kiln.rtl.memories)
    diagonal: bool = False  # a per-channel unit: P products a block (kiln_dense DIAGONAL)
    taps: int = 1  # a diagonal unit's blocks per output beat (kernel positions)
    # The layers whose outputs this one reads (-1: the design's input); empty: the layer
    # before it. Per source, the depth of the skip FIFO in front (0: none).
    sources: list[int] = field(default_factory=list)
    skip_depths: list[int] = field(default_factory=list)

    # (multipliers, shift fields) per output channel for the ROMs; not saved in design.json
    requant_fields: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stream_in_n = self.stream_in_n or self.in_n
        self.wc_bits = self.wc_bits or self.weight_bits + 1
        if not self.requants:
            # The lanes of one output beat are requantized during the next beat's
            # IN_BEATS accumulation cycles.
            self.requants = min(self.p_out, -(-self.p_out // self.blocks_per_beat))
        self.cycles_per_input = self.cycles_per_input or self.compute_cycles

    @property
    def in_beats(self) -> int:
        return -(-self.in_n // self.p_in)

    @property
    def blocks_per_beat(self) -> int:
        """Blocks an output beat sums: every input beat, or a diagonal unit's taps."""
        return self.taps if self.diagonal else self.in_beats

    @property
    def unit_name(self) -> str:
        """What the unit is, for tables: conv, depthwise conv, max pool (padded), ..."""
        if self.kind == "conv" and self.diagonal:
            return "depthwise conv"
        if self.kind == "maxpool" and self.geometry.get("WINDOW"):
            return "max pool (window)"
        if self.kind == "affine" or (self.kind == "dense" and self.diagonal):
            return "affine"
        return self.kind

    @property
    def has_im2col(self) -> bool:
        return self.kind in ("conv", "avgpool") or bool(self.geometry.get("WINDOW"))

    @property
    def out_beats(self) -> int:
        return -(-self.out_n // self.p_out)

    @property
    def requant_dsps(self) -> int:
        """ECP5 DSP tiles in the layer's requantizers (:func:`kiln.rtl.requant.requant_dsps`)."""
        return requant_dsps(self.kind, self.requants, self.passes, self.acc_bits, self.m_bits)

    @property
    def compute_cycles(self) -> int:
        """Ideal cycles per inference: one [P_out x P_in] block per cycle (a diagonal layer:
        one beat per turn of its requantizers)."""
        if self.kind in UNITS_WITHOUT_MATRIX:
            return 0
        if self.diagonal:
            turn = -(-self.p_out // self.requants) * self.passes
            return self.out_beats * max(turn, self.taps) * self.vectors_per_input
        return self.in_beats * self.out_beats * self.vectors_per_input

    @property
    def weight_lanes(self) -> int:
        """Weights in one word of the weight ROM."""
        return weight_rom_shape(self.__dict__)[0]

    @property
    def weight_words(self) -> int:
        """Words of the weight ROM."""
        return weight_rom_shape(self.__dict__)[1]


def _centred_weight(op: IntOp) -> np.ndarray:
    """The op's weights minus their per-output-channel zero point (what the hardware
    multiplies: the ROMs hold them centred, so no subtraction per weight)."""
    weight = op.arrays["weight"].astype(np.int64)
    zero = np.asarray(op.arrays.get("weight_zero", 0), dtype=np.int64)
    if zero.ndim == 0 or zero.size == 1:
        return weight - int(zero.reshape(-1)[0]) if zero.size else weight
    return weight - zero.reshape((-1,) + (1,) * (weight.ndim - 1))


def _as_dense(op: IntOp) -> np.ndarray:
    """The centred weight [out, in] of a dense or affine op."""
    if op.kind == "dense":
        return _centred_weight(op)
    return np.diag(_centred_weight(op))


# op -> its narrowed multipliers: (id, rounding) -> (op, [(m, s, bits) per channel])
_NARROWED: dict[tuple[int, str], tuple[IntOp, list[tuple[int, int, int]]]] = {}


def _size_arithmetic(layer: Layer, op: IntOp, weight: np.ndarray, bias: np.ndarray,
                     rounding: str, rom_layout: str = "banked") -> None:
    """The layer's weight, accumulator and multiplier widths, and (for the ROMs) its
    narrowed multipliers and shifts in ``layer.requant_fields``."""
    in_q = TensorQuant(**op.attrs["in_quant"])
    low, high, layer.acc_bits = accumulator_range(
        weight, bias.astype(np.int64), in_q.qmin - in_q.zero_point,
        in_q.qmax - in_q.zero_point)
    top = int(np.abs(weight).max(initial=0))
    layer.wc_bits = max(2, top.bit_length() + 1)
    layer.w_pack, layer.w_banks, _ = weight_rom_layout(
        layer.weight_lanes * layer.wc_bits, layer.weight_words, rom_layout)
    out_q = op.out_quant
    if rounding == "float32":
        # The float32 multiplier as a 24-bit mantissa and a right shift (kiln_requant FLOAT32).
        m, shift = float32_fields(op.arrays["multiplier_f32"])
        m = np.broadcast_to(m, (layer.out_n,)).astype(np.int64)
        shift = np.broadcast_to(shift, (layer.out_n,)).astype(np.int64)
        if np.any(shift < 0) or np.any(shift > 63):
            raise KilnError(f"layer '{layer.name}': a float32 multiplier outside 2^-39..2^24 "
                            "cannot be requantized by the generated hardware")
        layer.m_bits = 24
        layer.requant_fields = (m, shift)
        if layer.diagonal and layer.taps == 1:
            # a requantizer per lane (float32 has no time-shared form)
            layer.requants, layer.passes = layer.p_out, 1
        else:
            layer.requants, layer.passes = requantizers(layer.p_out, layer.blocks_per_beat, 1)
        layer.cycles_per_input = max(layer.cycles_per_input, layer.compute_cycles)
        return
    m0 = np.broadcast_to(op.arrays["m0"], (layer.out_n,))
    n = np.broadcast_to(op.arrays["shift"], (layer.out_n,))
    lo, hi = op.attrs["clamp"]
    key = (id(op), rounding)
    cached = _NARROWED.get(key)
    if cached is None or cached[0] is not op:
        if len(_NARROWED) > 256:
            _NARROWED.clear()
        cached = (op, [narrow_multiplier(int(m0[c]), int(n[c]), rounding, out_q.zero_point,
                                         lo, hi, int(low[c]), int(high[c]))
                       for c in range(layer.out_n)])
        _NARROWED[key] = cached  # folding plans every layer at many widths
    narrowed = cached[1]
    layer.m_bits = max(max(bits for _, _, bits in narrowed), 1)
    # The shifter keeps one fraction bit for round half up (kiln_requant).
    offset = 1 if rounding == "nearest" else 0
    layer.requant_fields = (np.array([m for m, _, _ in narrowed], dtype=np.int64),
                            np.array([s - offset for _, s, _ in narrowed], dtype=np.int64))
    if np.any(layer.requant_fields[1] > 127):
        raise KilnError(f"layer '{layer.name}': a requantization shift above 127 bits")
    tiles = requant_tiles(layer.acc_bits, layer.m_bits)
    if layer.diagonal and layer.taps == 1:
        # A beat's lanes leave together, each through its own requantizer time-sharing
        # one DSP tile: a beat every `tiles` cycles, as many requantizer DSPs as products.
        layer.requants, layer.passes = layer.p_out, tiles
    else:
        layer.requants, layer.passes = requantizers(layer.p_out, layer.blocks_per_beat, tiles)
    layer.cycles_per_input = max(layer.cycles_per_input, layer.compute_cycles)


def _dense_layer(op: IntOp, weight: np.ndarray, p_in: int, p_out: int, **extra: Any) -> Layer:
    in_q, out_q = TensorQuant(**op.attrs["in_quant"]), op.out_quant
    lo, hi = op.attrs["clamp"]
    return Layer(op.name, weight.shape[1], weight.shape[0], p_in, p_out, in_q.bits,
                 in_q.signed, in_q.zero_point, out_q.bits, out_q.zero_point, lo, hi,
                 int(op.array_bits.get("weight", 8)), int(np.count_nonzero(weight) or
                                                           weight.size), **extra)


def _conv_layer(op: IntOp, shape: tuple[int, ...], p_in: int, p_out: int
                ) -> tuple[Layer, np.ndarray, tuple[int, int, int]]:
    """A conv as im2col + matrix unit; weight columns in window order (ky, kx, cb, lane).
    A depthwise conv (one weight slice per channel) is im2col + a diagonal unit; another
    grouped conv is a matrix unit whose weights outside a group are zero."""
    channels, height, width = shape
    weight = _centred_weight(op)
    k_out, c_group, fy, fx = weight.shape
    stride, padding, dilation = op.attrs["stride"], op.attrs["padding"], op.attrs["dilation"]
    groups = op.attrs["groups"]
    out_h = (height + 2 * padding[0] - dilation[0] * (fy - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (fx - 1) - 1) // stride[1] + 1
    if groups > 1 and groups == channels == k_out:
        if p_in != p_out:
            raise KilnError(f"depthwise conv '{op.name}': its P_in and P_out must be equal "
                            f"(a lane per channel), got {p_in}x{p_out}")
        layer, dense = _window_unit(op, weight[:, 0].reshape(k_out, -1), shape, p_in,
                                    (fy, fx), stride[0], padding[0], dilation[0], "conv")
        layer.macs = int(weight.size) * out_h * out_w
        return layer, dense, (k_out, out_h, out_w)
    if groups > 1:  # the weights of other groups' channels are zero
        full = np.zeros((k_out, channels, fy, fx), dtype=np.int64)
        per_group = k_out // groups
        for group in range(groups):
            rows = slice(group * per_group, (group + 1) * per_group)
            full[rows, group * c_group:(group + 1) * c_group] = weight[rows]
        weight = full
    beats = -(-channels // p_in)
    columns = np.zeros((k_out, fy, fx, beats * p_in), dtype=np.int64)
    columns[:, :, :, :channels] = weight.transpose(0, 2, 3, 1)
    dense = columns.reshape(k_out, -1)
    geometry = {"H": height, "W": width, "CB": beats, "FY": fy, "FX": fx, "STRIDE": stride[0],
                "PAD": padding[0], "DILATION": dilation[0], "OH": out_h, "OW": out_w}
    blocks = fy * fx * beats * -(-k_out // p_out)
    layer = _dense_layer(op, dense, p_in, p_out, kind="conv", geometry=geometry,
                         stream_in_n=channels, vectors_per_input=out_h * out_w,
                         cycles_per_input=height * width * beats + out_h * out_w * blocks)
    layer.macs = int(_centred_weight(op).size) * out_h * out_w
    return layer, dense, (k_out, out_h, out_w)


def _window_unit(op: IntOp, per_channel: np.ndarray, shape: tuple[int, ...], lanes: int,
                 kernel: tuple[int, int], stride: int, padding: int, dilation: int, kind: str
                 ) -> tuple[Layer, np.ndarray]:
    """im2col + a diagonal unit: channel c sums its window's taps times per_channel[c, tap]
    (a depthwise conv; an average pool with weights 1). The weight as the dense matrix over
    the window vector (ky, kx, cb, lane) that it equals: what the ROMs and widths use."""
    channels, height, width = shape
    fy, fx = kernel
    beats = -(-channels // lanes)
    taps = fy * fx
    out_h = (height + 2 * padding - dilation * (fy - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (fx - 1) - 1) // stride + 1
    dense = np.zeros((channels, taps * beats * lanes), dtype=np.int64)
    channel = np.arange(channels)
    for tap in range(taps):
        dense[channel, tap * beats * lanes + channel] = per_channel[:, tap]
    geometry = {"H": height, "W": width, "CB": beats, "FY": fy, "FX": fx, "STRIDE": stride,
                "PAD": padding, "DILATION": dilation, "OH": out_h, "OW": out_w}
    layer = _dense_layer(op, dense, lanes, lanes, kind=kind, geometry=geometry,
                         stream_in_n=channels, vectors_per_input=out_h * out_w, diagonal=True,
                         taps=taps, cycles_per_input=height * width * beats
                         + out_h * out_w * taps * beats)
    return layer, dense


def _avgpool_layer(op: IntOp, shape: tuple[int, ...], lanes: int
                   ) -> tuple[Layer, np.ndarray, tuple[int, int, int]]:
    """An average (or global average) pool: window sums of x - zero, requantized, as the
    engine does it (im2col + a diagonal unit with every weight 1)."""
    channels = shape[0]
    kernel, stride = op.attrs["kernel"], op.attrs["stride"]
    if stride[0] != stride[1]:
        raise KilnError(f"average pool '{op.name}': the hardware supports equal strides")
    taps = kernel[0] * kernel[1]
    layer, dense = _window_unit(op, np.ones((channels, taps), dtype=np.int64), shape, lanes,
                                (kernel[0], kernel[1]), stride[0], 0, 1, "avgpool")
    layer.weight_bits = 2
    layer.macs = channels * taps * layer.vectors_per_input
    geometry = layer.geometry
    return layer, dense, (channels, geometry["OH"], geometry["OW"])


def _add_layer(op: IntOp, shape: tuple[int, ...], lanes: int, rounding: str,
               source_cycles: int) -> Layer:
    """A residual add: both inputs to the common exponent, one rounding (kiln_add). Its
    lanes take as many turns through the arithmetic as its slowest input leaves time for
    (``source_cycles`` per inference), so that its DSPs are few."""
    qa, qb = TensorQuant(**op.attrs["a_quant"]), TensorQuant(**op.attrs["b_quant"])
    out_q = op.out_quant
    lo, hi = op.attrs["clamp"]
    shift_a, shift_b = 31 + int(op.arrays["shift"][0]), 31 + int(op.arrays["shift_b"][0])
    common = max(shift_a, shift_b)
    nearest = rounding == "nearest"
    a_range = (qa.qmin - qa.zero_point, qa.qmax - qa.zero_point)
    b_range = (qb.qmin - qb.zero_point, qb.qmax - qb.zero_point)
    # the fewest multiplier bits that give the engine's output for every input pair
    m_a, m_b, narrowed = narrow_add(a_range, b_range, int(op.arrays["m0"][0]),
                                    int(op.arrays["m0_b"][0]), common - shift_a,
                                    common - shift_b, common, nearest)
    shift_a, shift_b = shift_a - (common - narrowed), shift_b - (common - narrowed)
    common = narrowed
    # The exact range of the sum over every input pair, and of the shifted sum.
    round_term = 1 << (common - 1) if nearest else 0
    extremes_a = [v * m_a << (common - shift_a) for v in a_range]
    extremes_b = [v * m_b << (common - shift_b) for v in b_range]
    low = min(extremes_a) + min(extremes_b) + round_term
    high = max(extremes_a) + max(extremes_b) + round_term
    sum_bits = max(low.bit_length(), high.bit_length()) + 1
    y_bits = max((low >> common).bit_length(), (high >> common).bit_length()) + 1
    channels = shape[0]
    vectors = shape[1] * shape[2] if len(shape) == 3 else 1
    beats = -(-channels // lanes)
    serial = max(1, min(lanes, source_cycles // (beats * vectors)))
    per_turn = -(-lanes // serial)
    serial = -(-lanes // per_turn)
    geometry = {"H": shape[1] if len(shape) == 3 else 1, "SERIAL": serial,
                "LANES_PER_TURN": per_turn,
                "B_BITS": qb.bits, "B_SIGNED": int(qb.signed), "B_ZERO": qb.zero_point,
                "MA": m_a, "MB": m_b, "M_BITS": max(m_a.bit_length(), m_b.bit_length(), 1),
                "SHIFT_A": common - shift_a, "SHIFT_B": common - shift_b,
                "COMMON": common, "SUM_BITS": sum_bits, "Y_BITS": y_bits}
    return Layer(op.name, channels, channels, lanes, lanes, qa.bits, qa.signed, qa.zero_point,
                 out_q.bits, out_q.zero_point, lo, hi, 8, 0, kind="add", geometry=geometry,
                 stream_in_n=channels, vectors_per_input=vectors,
                 cycles_per_input=beats * vectors * serial)


def _maxpool_layer(op: IntOp, shape: tuple[int, ...], lanes: int
                   ) -> tuple[Layer, tuple[int, int, int]]:
    """A max pool: square and unpadded, the line-buffer unit (kiln_maxpool); padded or with
    a non-square kernel, an im2col whose padding reads as the lowest value, then a running
    maximum over the window (kiln_window_max), as the engine pads."""
    channels, height, width = shape
    kernel, stride, padding = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    if op.attrs["ceil_mode"] or len({*stride}) != 1 or len({*padding}) != 1:
        raise KilnError(f"max pool '{op.name}': the hardware supports floor-mode pools with "
                        "equal strides and paddings in both directions")
    quant = op.out_quant
    pad = padding[0]
    out_h = (height + 2 * pad - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * pad - kernel[1]) // stride[1] + 1
    beats = -(-channels // lanes)
    geometry = {"H": height, "W": width, "CB": beats, "K": max(kernel), "STRIDE": stride[0],
                "OH": out_h, "OW": out_w}
    window = pad > 0 or kernel[0] != kernel[1]
    if window:
        geometry.update(WINDOW=1, FY=kernel[0], FX=kernel[1], PAD=pad, DILATION=1,
                        PAD_VALUE=TensorQuant(**op.attrs["in_quant"]).qmin)
    layer = Layer(op.name, channels, channels, lanes, lanes, quant.bits, quant.signed,
                  quant.zero_point, quant.bits, quant.zero_point, quant.qmin, quant.qmax, 8, 0,
                  kind="maxpool", geometry=geometry, vectors_per_input=out_h * out_w,
                  # one read per window word, while the next rows load
                  cycles_per_input=max(height * width,
                                       out_h * out_w * kernel[0] * kernel[1]) * beats)
    return layer, (channels, out_h, out_w)


def _columns_in_stream_order(weight: np.ndarray, shape: tuple[int, ...], lanes: int
                             ) -> np.ndarray:
    """Reorder a dense layer's columns from NCHW flatten order (c, y, x) to the order the
    stream delivers them: pixel (y, x), then channel beat, then lane (padded lanes 0)."""
    channels, height, width = shape
    beats = -(-channels // lanes)
    out = np.zeros((weight.shape[0], height, width, beats * lanes), dtype=np.int64)
    out[:, :, :, :channels] = weight.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
    return out.reshape(weight.shape[0], -1)




@dataclass
class _Stream:
    """A tensor as the hardware streams it: its shape, lanes, the layer that makes it (-1:
    the design's input) and, after a flatten, the feature map it was."""

    shape: tuple[int, ...]
    lanes: int
    producer: int
    flattened_from: tuple[int, ...] | None = None


def walk(program: IntegerProgram, per_layer: list[tuple[int, int]], *, weights: bool = True,
         rom_layout: str = "banked", check_widths: bool = True
         ) -> Iterator[tuple[IntOp, Layer, np.ndarray | None]]:
    """(op, layer, dense weight or None) for every emitted layer, in program order; each
    layer's ``sources`` name the layers it reads (-1: the design's input). With
    ``check_widths`` off (planning), a weighted layer takes its P_in as given even where
    the stream it reads is another width: the folding plans each layer at its own widths."""
    shape = tuple(program.input_shape)  # (C, H, W) of a feature map, or (N,) of a vector
    ops = list(program.ops)
    streams = {program.input_name: _Stream(shape, per_layer[0][0] if per_layer else 1, -1)}
    if len(shape) == 3 and ops and ops[0].kind == "flatten" and \
            ops[0].inputs == [program.input_name]:
        # An MLP on an image: stream the flattened input (NCHW order) as one vector.
        streams[ops[0].output] = _Stream((int(np.prod(shape)),), per_layer[0][0], -1)
        ops = ops[1:]
    parallel = iter(per_layer)
    index = 0
    made: list[Layer] = []
    for op in ops:
        source = streams[op.inputs[0]]
        shape, lanes = source.shape, source.lanes
        if op.kind == "flatten":
            streams[op.output] = _Stream((int(np.prod(shape)),), lanes, source.producer,
                                         shape if len(shape) == 3 else None)
            continue
        weight = bias = None
        if op.kind == "maxpool":
            layer, out_shape = _maxpool_layer(op, shape, lanes)
        elif op.kind == "avgpool":
            layer, weight, out_shape = _avgpool_layer(op, shape, lanes)
            bias = np.zeros(shape[0], dtype=np.int64)
        elif op.kind == "add":
            other = streams[op.inputs[1]]
            if (other.lanes != lanes and check_widths) or other.shape != shape:
                raise KilnError(f"add '{op.name}': its inputs stream {lanes} and {other.lanes} "
                                "lanes; a residual add needs the same width on both",
                                hint="give the layers that make both inputs the same P_out")
            slowest = max((made[s].cycles_per_input for s in (source.producer, other.producer)
                           if s >= 0), default=0)
            layer = _add_layer(op, shape, lanes, program.rounding, slowest)
            out_shape = shape
        else:
            p_in, p_out = next(parallel)
            if p_in != lanes and check_widths:
                made_by = ("the design's input" if source.producer < 0
                           else f"the P_out of layer #{source.producer}")
                raise KilnError(f"layer '{op.name}': its P_in {p_in} must equal the width of "
                                f"the stream it reads, {lanes} ({made_by})")
            bias = op.arrays["bias"]
            if op.kind == "conv":
                layer, weight, out_shape = _conv_layer(op, shape, p_in, p_out)
            else:
                weight = _as_dense(op)
                # A per-channel affine map stays one: lane p of a beat meets its own weight
                # (not after a flatten, whose stream order permutes the columns).
                diagonal = (op.kind == "affine" and p_in == p_out
                            and source.flattened_from is None)
                if source.flattened_from is not None and weights:
                    weight = _columns_in_stream_order(weight, source.flattened_from, p_in)
                layer = _dense_layer(op, weight, p_in, p_out, diagonal=diagonal)
                out_shape = (weight.shape[0],)
        layer.sources = [streams[name].producer for name in op.inputs]
        if weight is not None:
            _size_arithmetic(layer, op, weight, bias, program.rounding, rom_layout)
        streams[op.output] = _Stream(tuple(out_shape), layer.p_out, index)
        made.append(layer)
        index += 1
        yield op, layer, weight
