"""``emit``: an :class:`IntegerProgram` as a chain of streaming SystemVerilog layers.

Each weighted layer becomes a ``kiln_dense`` instance (a standalone BatchNorm, kiln's
``affine`` op, becomes a dense layer with a diagonal weight matrix) with its weights,
biases and requantization parameters in ``$readmemh`` files laid out one word per
[P_out x P_in] block. ``kiln_top.sv`` chains the layers with valid/ready streams; the folder
also gets the component sources, ``design.json`` (every parameter), the simulation harness
``kiln_tb.sv`` and the cocotb testbench ``test_top.py``.

Supported: conv (ungrouped; an im2col line buffer feeding a dense unit), max pool,
flatten, dense and affine ops, in ``floor``, ``nearest`` or ``float32`` rounding. Anything else
(residual adds, average pools) is refused with a clear error.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.atomic import atomic_folder
from kiln.errors import KilnError
from kiln.integer.arith import float32_fields
from kiln.integer.program import IntegerProgram, IntOp, TensorQuant
from kiln.report.markdown import write_text
from kiln.rtl.memories import bank_rows, weight_rom_layout, weight_rom_shape
from kiln.rtl.requant import (
    accumulator_range,
    narrow_multiplier,
    requant_dsps,
    requant_tiles,
    requantizers,
)
from kiln.rtl.roms import write_memories

SOURCES = Path(__file__).parent / "sv"
COMPONENTS = ("kiln_requant.sv", "kiln_dense.sv", "kiln_fifo.sv", "kiln_rows.sv",
              "kiln_im2col.sv", "kiln_maxpool.sv")


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
    kind: str = "dense"  # dense, conv (im2col + matrix unit) or maxpool
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
    diagonal: bool = False  # a per-channel affine map: P products a beat (kiln_dense)

    # (multipliers, shift fields) per output channel for the ROMs; not saved in design.json
    requant_fields: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stream_in_n = self.stream_in_n or self.in_n
        self.wc_bits = self.wc_bits or self.weight_bits + 1
        if not self.requants:
            # The lanes of one output beat are requantized during the next beat's
            # IN_BEATS accumulation cycles.
            self.requants = min(self.p_out, -(-self.p_out // self.in_beats))
        self.cycles_per_input = self.cycles_per_input or self.compute_cycles

    @property
    def in_beats(self) -> int:
        return -(-self.in_n // self.p_in)

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
        if self.kind == "maxpool":
            return 0
        if self.diagonal:
            turn = -(-self.p_out // self.requants) * self.passes
            return self.out_beats * turn * self.vectors_per_input
        return self.in_beats * self.out_beats * self.vectors_per_input

    @property
    def weight_lanes(self) -> int:
        """Weights in one word of the weight ROM."""
        return weight_rom_shape(self.__dict__)[0]

    @property
    def weight_words(self) -> int:
        """Words of the weight ROM."""
        return weight_rom_shape(self.__dict__)[1]


@dataclass
class Design:
    """An emitted design: where it is and what it holds."""

    directory: Path
    program_name: str
    rounding: str
    layers: list[Layer] = field(default_factory=list)

    input_vectors_per_input: int = 1

    @property
    def sources(self) -> list[Path]:
        return [self.directory / name for name in COMPONENTS] + [self.directory / "kiln_top.sv"]

    @property
    def simulation_sources(self) -> list[Path]:
        """The design plus ``kiln_tb.sv``, the simulation harness around ``kiln_top``."""
        return [*self.sources, self.directory / "kiln_tb.sv"]

    def as_dict(self) -> dict[str, Any]:
        return {"program": self.program_name, "rounding": self.rounding,
                "input_vectors_per_input": self.input_vectors_per_input,
                "layers": [{k: v for k, v in layer.__dict__.items() if k != "requant_fields"}
                           for layer in self.layers]}

    @classmethod
    def load(cls, directory: str | Path) -> Design:
        directory = Path(directory)
        path = directory / "design.json"
        if not path.is_file():
            raise KilnError(f"{directory}: not an emitted design (no design.json)",
                            hint="make one with 'kiln emit-rtl PROGRAM_DIR --out DIR'")
        data = json.loads(path.read_text())
        return cls(directory, data["program"], data["rounding"],
                   [Layer(**layer) for layer in data["layers"]],
                   data.get("input_vectors_per_input", 1))


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


def _parse_parallelism(parallelism: Any, count: int, names: list[str]) -> list[tuple[int, int]]:
    if isinstance(parallelism, str):
        parallelism = tuple(int(p) for p in parallelism.lower().split("x"))
    if isinstance(parallelism, tuple):
        per_layer = [parallelism] * count
    elif isinstance(parallelism, dict):
        default = parallelism.get("default", (1, 1))
        per_layer = [tuple(parallelism.get(name, default)) for name in names]
    else:
        per_layer = [tuple(p) for p in parallelism]
    for name, (p_in, p_out) in zip(names, per_layer, strict=True):
        if p_in < 1 or p_out < 1:
            raise KilnError(f"layer '{name}': parallelism must be positive, got {p_in}x{p_out}")
    return per_layer


def check_emittable(program: IntegerProgram) -> None:
    """Refuse, naming every op it cannot take, a program the RTL emitter cannot build."""
    if program.rounding not in ("floor", "nearest", "float32"):
        raise KilnError(f"program '{program.name}' uses {program.rounding} rounding; the "
                        "generated hardware implements floor, nearest and float32",
                        hint="lower with --rounding nearest")
    unsupported = [f"{op.name} ({op.kind})" for op in program.ops
                   if op.kind not in ("dense", "affine", "flatten", "conv", "maxpool")]
    if unsupported:
        raise KilnError("the RTL emitter supports conv, max pool, flatten, dense and affine "
                        f"ops; program '{program.name}' also has: {', '.join(unsupported)}")


def emit(program: IntegerProgram, parallelism: Any, out_dir: str | Path, *,
         rom_layout: str = "banked") -> Design:
    """Write the SystemVerilog design of ``program`` into ``out_dir``.

    ``parallelism`` is ``(P_in, P_out)``, ``"4x4"``, a list per layer, or a dict of
    layer name -> (P_in, P_out) with a ``default``. Consecutive layers must agree on the
    stream width (P_out of one = P_in of the next). Parallelism that does not divide a
    dimension, or exceeds it, is handled by padding lanes with zero weights.
    ``rom_layout`` says how deep weight ROMs are laid out (:mod:`kiln.rtl.memories`):
    ``banked`` (banks one block RAM deep, the fastest clock), ``packed`` (rows that fill
    the block RAMs' 36-bit columns, as fast, fewer block RAMs, more logic) or ``whole``
    (as Yosys maps it: the fewest block RAMs, a slower clock).
    """
    check_emittable(program)
    weighted = [op for op in program.ops if op.kind in ("dense", "affine", "conv")]
    per_layer = _parse_parallelism(parallelism, len(weighted), [op.name for op in weighted])
    for index in range(1, len(weighted)):
        before, after, op = per_layer[index - 1], per_layer[index], weighted[index]
        if before[1] != after[0]:
            raise KilnError(f"layer '{op.name}': its P_in {after[0]} must equal the previous "
                            f"layer's P_out {before[1]} (the stream width between them)")
    final = Path(out_dir)
    with atomic_folder(final, marker="design.json") as directory:  # whole or not at all
        design = _write_design(program, per_layer, directory, rom_layout)
    design.directory = final
    return design


def _write_design(program: IntegerProgram, per_layer: list[tuple[int, int]], directory: Path,
                  rom_layout: str) -> Design:
    (directory / "mem").mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        shutil.copyfile(SOURCES / name, directory / name)
    design = Design(directory, program.name, program.rounding)
    design.input_vectors_per_input = _input_vectors(program)
    for op, layer, weight in _walk(program, per_layer, rom_layout=rom_layout):
        if weight is not None:
            write_memories(directory / "mem", layer, weight, op.arrays["bias"])
        design.layers.append(layer)
    program.save(directory / "program")  # the golden model travels with the design
    write_text(directory / "kiln_top.sv", _top(design))
    write_text(directory / "design.json", json.dumps(design.as_dict(), indent=2) + "\n")
    from kiln.rtl.testbench import TESTBENCH, harness

    write_text(directory / "kiln_tb.sv", harness(design))
    write_text(directory / "test_top.py", TESTBENCH)
    return design


def plan_layers(program: IntegerProgram, parallelism: Any, *, rom_layout: str = "banked"
                ) -> list[Layer]:
    """The layers :func:`emit` would make (shapes, parallelism, cycles), writing nothing:
    what folding searches over."""
    weighted = [op for op in program.ops if op.kind in ("dense", "affine", "conv")]
    per_layer = _parse_parallelism(parallelism, len(weighted), [op.name for op in weighted])
    return [layer for _, layer, _ in _walk(program, per_layer, weights=False,
                                           rom_layout=rom_layout)]


def _input_vectors(program: IntegerProgram) -> int:
    shape = tuple(program.input_shape)
    if len(shape) == 3 and not (program.ops and program.ops[0].kind == "flatten"):
        return shape[1] * shape[2]
    return 1


def _walk(program: IntegerProgram, per_layer: list[tuple[int, int]], *, weights: bool = True,
          rom_layout: str = "banked"):
    """(op, layer, dense weight or None) for every emitted layer, in stream order."""
    shape = tuple(program.input_shape)  # (C, H, W) of a feature map, or (N,) of a vector
    ops = list(program.ops)
    if len(shape) == 3 and ops and ops[0].kind == "flatten":
        # An MLP on an image: stream the flattened input (NCHW order) as one vector.
        shape = (int(np.prod(shape)),)
        ops = ops[1:]
    flattened_from: tuple[int, ...] | None = None
    lanes = per_layer[0][0]
    parallel = iter(per_layer)
    for op in ops:
        if op.kind == "flatten":
            flattened_from = shape if len(shape) == 3 else None
            shape = (int(np.prod(shape)),)
            continue
        if op.kind == "maxpool":
            layer, shape = _maxpool_layer(op, shape, lanes)
            yield op, layer, None
            continue
        p_in, p_out = next(parallel)
        if op.kind == "conv":
            layer, weight, shape = _conv_layer(op, shape, p_in, p_out)
        else:
            weight = _as_dense(op)
            # A per-channel affine map stays one: lane p of a beat meets its own weight
            # (not after a flatten, whose stream order permutes the columns).
            diagonal = op.kind == "affine" and p_in == p_out and flattened_from is None
            if flattened_from is not None and weights:
                weight = _columns_in_stream_order(weight, flattened_from, p_in)
            layer = _dense_layer(op, weight, p_in, p_out, diagonal=diagonal)
            shape = (weight.shape[0],)
            flattened_from = None
        _size_arithmetic(layer, op, weight, program.rounding, rom_layout)
        yield op, layer, weight
        lanes = p_out


# op -> its narrowed multipliers: (id, rounding) -> (op, [(m, s, bits) per channel])
_NARROWED: dict[tuple[int, str], tuple[IntOp, list[tuple[int, int, int]]]] = {}


def _size_arithmetic(layer: Layer, op: IntOp, weight: np.ndarray, rounding: str,
                     rom_layout: str = "banked") -> None:
    """The layer's weight, accumulator and multiplier widths, and (for the ROMs) its
    narrowed multipliers and shifts in ``layer.requant_fields``."""
    in_q = TensorQuant(**op.attrs["in_quant"])
    low, high, layer.acc_bits = accumulator_range(
        weight, op.arrays["bias"].astype(np.int64), in_q.qmin - in_q.zero_point,
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
        if layer.diagonal:  # a requantizer per lane (float32 has no time-shared form)
            layer.requants, layer.passes = layer.p_out, 1
            layer.cycles_per_input = layer.compute_cycles
        else:
            layer.requants, layer.passes = requantizers(layer.p_out, layer.in_beats, 1)
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
    if layer.diagonal:
        # A beat's lanes leave together, each through its own requantizer time-sharing
        # one DSP tile: a beat every `tiles` cycles, as many requantizer DSPs as products.
        layer.requants, layer.passes = layer.p_out, tiles
        layer.cycles_per_input = layer.compute_cycles
    else:
        layer.requants, layer.passes = requantizers(layer.p_out, layer.in_beats, tiles)


def _dense_layer(op: IntOp, weight: np.ndarray, p_in: int, p_out: int, **extra: Any) -> Layer:
    in_q, out_q = TensorQuant(**op.attrs["in_quant"]), op.out_quant
    lo, hi = op.attrs["clamp"]
    return Layer(op.name, weight.shape[1], weight.shape[0], p_in, p_out, in_q.bits,
                 in_q.signed, in_q.zero_point, out_q.bits, out_q.zero_point, lo, hi,
                 int(op.array_bits.get("weight", 8)), int(np.count_nonzero(weight) or
                                                           weight.size), **extra)


def _conv_layer(op: IntOp, shape: tuple[int, ...], p_in: int, p_out: int
                ) -> tuple[Layer, np.ndarray, tuple[int, int, int]]:
    """A conv as im2col + matrix unit; weight columns in window order (ky, kx, cb, lane)."""
    channels, height, width = shape
    weight = _centred_weight(op)
    k_out, c_group, fy, fx = weight.shape
    stride, padding, dilation = op.attrs["stride"], op.attrs["padding"], op.attrs["dilation"]
    if op.attrs["groups"] != 1 or len({*stride}) != 1 or len({*padding}) != 1 or \
            len({*dilation}) != 1:
        raise KilnError(f"conv '{op.name}': the hardware supports ungrouped convolutions with "
                        "equal strides, paddings and dilations in both directions")
    beats = -(-channels // p_in)
    columns = np.zeros((k_out, fy, fx, beats * p_in), dtype=np.int64)
    columns[:, :, :, :channels] = weight.transpose(0, 2, 3, 1)
    dense = columns.reshape(k_out, -1)
    out_h = (height + 2 * padding[0] - dilation[0] * (fy - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (fx - 1) - 1) // stride[1] + 1
    geometry = {"H": height, "W": width, "CB": beats, "FY": fy, "FX": fx, "STRIDE": stride[0],
                "PAD": padding[0], "DILATION": dilation[0], "OH": out_h, "OW": out_w}
    blocks = fy * fx * beats * -(-k_out // p_out)
    layer = _dense_layer(op, dense, p_in, p_out, kind="conv", geometry=geometry,
                         stream_in_n=channels, vectors_per_input=out_h * out_w,
                         cycles_per_input=height * width * beats + out_h * out_w * blocks)
    layer.macs = int(weight.size) * out_h * out_w
    return layer, dense, (k_out, out_h, out_w)


def _maxpool_layer(op: IntOp, shape: tuple[int, ...], lanes: int
                   ) -> tuple[Layer, tuple[int, int, int]]:
    channels, height, width = shape
    kernel, stride, padding = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    if any(padding) or op.attrs["ceil_mode"] or len({*kernel}) != 1 or len({*stride}) != 1:
        raise KilnError(f"max pool '{op.name}': the hardware supports square, unpadded pools")
    quant = op.out_quant
    out_h = (height - kernel[0]) // stride[0] + 1
    out_w = (width - kernel[1]) // stride[1] + 1
    beats = -(-channels // lanes)
    geometry = {"H": height, "W": width, "CB": beats, "K": kernel[0], "STRIDE": stride[0],
                "OH": out_h, "OW": out_w}
    layer = Layer(op.name, channels, channels, lanes, lanes, quant.bits, quant.signed,
                  quant.zero_point, quant.bits, quant.zero_point, quant.qmin, quant.qmax, 8, 0,
                  kind="maxpool", geometry=geometry, vectors_per_input=out_h * out_w,
                  # one read per window word, while the next rows load
                  cycles_per_input=max(height * width, out_h * out_w * kernel[0] ** 2) * beats)
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


def _instance(module: str, name: str, params: dict[str, int], files: str,
              source: tuple[str, str, str], sink: tuple[str, str, str], comment: str
              ) -> list[str]:
    rendered = ", ".join(f".{k}({v})" for k, v in params.items())
    if files:
        rendered += ",\n                 " + files
    return [f"    // {comment}",
            f"    {module} #({rendered}) {name} (",
            "        .clk(clk), .rst_n(rst_n),",
            f"        .in_valid({source[0]}), .in_ready({source[1]}), .in_data({source[2]}),",
            f"        .out_valid({sink[0]}), .out_ready({sink[1]}), .out_data({sink[2]}));"]


def _top(design: Design) -> str:
    first, last = design.layers[0], design.layers[-1]
    nearest = 1 if design.rounding == "nearest" else 0
    lines = [
        f"// {design.program_name}: {len(design.layers)} layers, generated by kiln.",
        "module kiln_top (",
        "    input  logic clk,",
        "    input  logic rst_n,",
        "    input  logic in_valid,",
        "    output logic in_ready,",
        f"    input  logic [{first.p_in * first.in_bits - 1}:0] in_data,",
        "    output logic out_valid,",
        "    input  logic out_ready,",
        f"    output logic [{last.p_out * last.out_bits - 1}:0] out_data",
        ");",
    ]
    for index, layer in enumerate(design.layers):
        width = layer.p_out * layer.out_bits
        lines += [f"    logic l{index}_valid, l{index}_ready;",
                  f"    logic [{width - 1}:0] l{index}_data;"]
    for index, layer in enumerate(design.layers):
        source = ("in_valid", "in_ready", "in_data") if index == 0 else (
            f"l{index - 1}_valid", f"l{index - 1}_ready", f"l{index - 1}_data")
        sink = (f"l{index}_valid", f"l{index}_ready", f"l{index}_data")
        geometry = layer.geometry
        if layer.kind == "maxpool":
            params = {"H": geometry["H"], "W": geometry["W"], "CB": geometry["CB"],
                      "P": layer.p_in, "BITS": layer.in_bits, "SIGNED": int(layer.in_signed),
                      "K": geometry["K"], "STRIDE": geometry["STRIDE"]}
            lines += _instance("kiln_maxpool", f"layer_{index}", params, "", source, sink,
                               f"{layer.name}: max pool {geometry['K']}x{geometry['K']}")
            continue
        if layer.kind == "conv":
            window = (f"w{index}_valid", f"w{index}_ready", f"w{index}_data")
            lines += [f"    logic w{index}_valid, w{index}_ready;",
                      f"    logic [{layer.p_in * layer.in_bits - 1}:0] w{index}_data;"]
            params = {"H": geometry["H"], "W": geometry["W"], "CB": geometry["CB"],
                      "P": layer.p_in, "BITS": layer.in_bits, "ZERO": layer.in_zero,
                      "FY": geometry["FY"], "FX": geometry["FX"], "STRIDE": geometry["STRIDE"],
                      "PAD": geometry["PAD"], "DILATION": geometry["DILATION"]}
            lines += _instance("kiln_im2col", f"im2col_{index}", params, "", source, window,
                               f"{layer.name}: im2col {geometry['FY']}x{geometry['FX']}")
            source = window
        mem = f"mem/{layer.name}"
        params = {"IN_N": layer.in_n, "OUT_N": layer.out_n, "P_IN": layer.p_in,
                  "P_OUT": layer.p_out, "IN_BITS": layer.in_bits,
                  "IN_SIGNED": int(layer.in_signed), "IN_ZERO": layer.in_zero,
                  "WC_BITS": layer.wc_bits, "ACC_BITS": layer.acc_bits,
                  "M_BITS": layer.m_bits, "OUT_BITS": layer.out_bits,
                  "OUT_ZERO": layer.out_zero, "LO": layer.lo, "HI": layer.hi,
                  "ROUND_NEAREST": nearest, "FLOAT32": int(design.rounding == "float32"),
                  "REQUANTS": layer.requants, "PASSES": layer.passes,
                  "W_BANKS": layer.w_banks, "W_BANK_BITS": bank_rows(
                      layer.weight_lanes * layer.wc_bits, layer.w_pack).bit_length() - 1,
                  "W_PACK": layer.w_pack, "DIAGONAL": int(layer.diagonal)}
        files = (f'.W_FILE("{mem}.weights.mem"), .B_FILE("{mem}.bias.mem"), '
                 f'.M_FILE("{mem}.m0.mem"), .S_FILE("{mem}.shift.mem")')
        lines += _instance("kiln_dense", f"layer_{index}", params, files, source, sink,
                           f"{layer.name}: {layer.in_n} -> {layer.out_n}, "
                           f"{layer.p_in}x{layer.p_out}")
    final = len(design.layers) - 1
    lines += [f"    assign out_valid = l{final}_valid;",
              f"    assign l{final}_ready = out_ready;",
              f"    assign out_data = l{final}_data;",
              "endmodule", ""]
    return "\n".join(lines)
