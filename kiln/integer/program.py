"""``IntegerProgram``: the deployable integer model, and its on-disk format.

A program is a straight-line list of :class:`IntOp` over named integer tensors, plus how
to quantize its input and dequantize its output. ``save(dir)`` writes the documented
weight-export format:

* ``manifest.json``: format, version, rounding mode, input/output quantization, and per
  op its kind, tensors, attributes (shapes, strides, zero points, clamp bounds) and the
  arrays it owns with their shape, dtype and bit width;
* ``arrays.npz``: every array (quantized weights, int32 biases, per-channel M0 and n,
  float32 multipliers, scales);
* ``mem/<op>.<array>.mem``: each integer array as hex words, one per line, two's
  complement at its bit width, row-major, for ``$readmemh``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.atomic import atomic_folder
from kiln.errors import KilnError
from kiln.quant.spec import integer_range
from kiln.report.markdown import write_text

FORMAT = "kiln-integer-program"
VERSION = 1
OP_KINDS = ("conv", "dense", "affine", "requantize", "maxpool", "avgpool", "add", "flatten",
            "clamp", "pad")


@dataclass(frozen=True)
class TensorQuant:
    """How real values map to a tensor's integers: real = scale · (q − zero_point)."""

    scale: float
    zero_point: int
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.signed)[1]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round half to even, add the zero point, saturate (ONNX QuantizeLinear)."""
        scaled = np.asarray(x, dtype=np.float32) / np.float32(self.scale)
        return np.clip(np.rint(scaled) + self.zero_point, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float32) - self.zero_point) * np.float32(self.scale)

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "bits": self.bits,
                "signed": self.signed}


@dataclass
class IntOp:
    """One integer operation: ``output = kind(inputs; attrs, arrays)``."""

    kind: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    array_bits: dict[str, int] = field(default_factory=dict)

    @property
    def out_quant(self) -> TensorQuant:
        return TensorQuant(**self.attrs["out_quant"])


@dataclass
class IntegerProgram:
    """A network in integer-only arithmetic; run it with :func:`kiln.integer.run`.

    >>> program = IntegerProgram.load("out/convnet-int8")     # doctest: +SKIP
    >>> [op.kind for op in program.ops]                        # doctest: +SKIP
    ['conv', 'maxpool', 'conv', 'maxpool', 'flatten', 'dense', 'dense']
    """

    name: str
    input_shape: tuple[int, ...]
    input_quant: TensorQuant
    output_quant: TensorQuant
    rounding: str
    ops: list[IntOp]
    input_name: str = "input"
    output_name: str = "output"
    metadata: dict[str, Any] = field(default_factory=dict)

    def op(self, name: str) -> IntOp:
        for op in self.ops:
            if op.name == name:
                return op
        raise KilnError(f"program '{self.name}' has no op '{name}'")

    def layers(self) -> list[IntOp]:
        """The ops that carry weights (conv, dense, affine)."""
        return [op for op in self.ops if op.kind in ("conv", "dense", "affine")]

    # --- saving --------------------------------------------------------------------
    def save(self, directory: str | Path, *, extra_files: dict[str, Path] | None = None
             ) -> Path:
        """Write manifest.json, arrays.npz and mem/*.mem (see the module docstring), whole
        or not at all (:func:`kiln.atomic.atomic_folder`). ``extra_files`` are copied in
        (relative name -> source), e.g. the model the program was lowered from, so that
        the folder holds what it refers to."""
        import shutil

        final = Path(directory)
        with atomic_folder(final, marker="manifest.json") as partial:
            for name, source in (extra_files or {}).items():
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, partial / name)
            self._write(partial)
        return final

    def _write(self, directory: Path) -> Path:
        (directory / "mem").mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        ops = []
        for op in self.ops:
            entries = {}
            for key, value in op.arrays.items():
                array_key = f"{op.name}.{key}"
                arrays[array_key] = value
                entry = {"key": array_key, "shape": list(value.shape), "dtype": str(value.dtype)}
                bits = op.array_bits.get(key)
                if bits is not None:
                    entry["bits"] = bits
                    entry["mem"] = f"mem/{array_key}.mem"
                    write_text(directory / entry["mem"], to_mem(value, bits))
                entries[key] = entry
            ops.append({"kind": op.kind, "name": op.name, "inputs": op.inputs,
                        "output": op.output, "attrs": op.attrs, "arrays": entries})
        manifest = {"format": FORMAT, "version": VERSION, "name": self.name,
                    "rounding": self.rounding, "input_shape": list(self.input_shape),
                    "input_name": self.input_name, "output_name": self.output_name,
                    "input_quant": self.input_quant.as_dict(),
                    "output_quant": self.output_quant.as_dict(), "metadata": self.metadata,
                    "ops": ops}
        tmp = directory / ".arrays.npz.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(directory / "arrays.npz")
        write_text(directory / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> IntegerProgram:
        """Read a saved program; a missing, damaged or incomplete file is a KilnError."""
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise KilnError(f"{directory}: not a kiln integer program (no manifest.json)",
                            hint="make one with 'kiln lower MODEL --out DIR'")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise KilnError(f"{manifest_path}: damaged JSON: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise KilnError(f"{manifest_path}: not a kiln integer program manifest")
        arrays_path = directory / "arrays.npz"
        if not arrays_path.is_file():
            raise KilnError(f"{arrays_path}: missing (the program's weights)")
        try:
            with np.load(arrays_path) as stored:
                arrays = {key: stored[key] for key in stored.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise KilnError(f"{arrays_path}: damaged: {exc}") from exc
        try:
            ops = []
            for entry in manifest["ops"]:
                if entry["kind"] not in OP_KINDS:
                    raise KilnError(f"{manifest_path}: op '{entry['name']}' has unknown kind "
                                    f"'{entry['kind']}'")
                op_arrays, op_bits = {}, {}
                for key, spec in entry["arrays"].items():
                    if spec["key"] not in arrays:
                        raise KilnError(f"{arrays_path}: array '{spec['key']}' of op "
                                        f"'{entry['name']}' is missing")
                    value = arrays[spec["key"]]
                    if list(value.shape) != spec["shape"]:
                        raise KilnError(f"{arrays_path}: array '{spec['key']}' has shape "
                                        f"{list(value.shape)}, the manifest says {spec['shape']}")
                    op_arrays[key] = value
                    if "bits" in spec:
                        op_bits[key] = spec["bits"]
                ops.append(IntOp(entry["kind"], entry["name"], entry["inputs"], entry["output"],
                                 entry["attrs"], op_arrays, op_bits))
            return cls(manifest["name"], tuple(manifest["input_shape"]),
                       TensorQuant(**manifest["input_quant"]),
                       TensorQuant(**manifest["output_quant"]), manifest["rounding"], ops,
                       manifest.get("input_name", "input"), manifest.get("output_name", "output"),
                       manifest.get("metadata", {}))
        except KeyError as exc:
            raise KilnError(f"{manifest_path}: incomplete manifest, missing {exc}") from exc


def to_mem(values: np.ndarray, bits: int) -> str:
    """Integers as ``$readmemh`` text: two's complement hex at ``bits``, one per line."""
    width = (bits + 3) // 4
    mask = (1 << bits) - 1
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    return "".join(f"{int(v) & mask:0{width}x}\n" for v in flat)


def from_mem(text: str, bits: int, *, signed: bool = True) -> np.ndarray:
    """Parse ``$readmemh`` text written by :func:`to_mem` back into integers."""
    values = np.array([int(line, 16) for line in text.split() if line], dtype=np.int64)
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values
