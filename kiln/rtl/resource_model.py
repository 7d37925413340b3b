"""What a folded layer costs on an FPGA before it is built: a linear model per unit
(LUTs, flip-flops, DSPs from features of the layer's parameters, fitted to Yosys runs by
``benchmarks/rtl_resource_model.py`` into ``resource_model.json``; block RAMs counted
from the layer's memories), and the :class:`Budget` a folding must fit.

>>> Budget.of_device("ecp5-25k").dsp
28
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, KilnError
from kiln.rtl.emit import Layer
from kiln.rtl.fpga import device
from kiln.rtl.layers import UNITS_WITHOUT_MATRIX
from kiln.rtl.memories import block_rams, in_block_ram, weight_rom_shape
from kiln.rtl.requant import requant_dsps

RESOURCES = ("lut", "ff", "dsp", "bram")
MODEL_PATH = Path(__file__).with_name("resource_model.json")
@dataclass(frozen=True)
class Budget:
    """Resources a design may use."""

    lut: int
    ff: int
    dsp: int
    bram: int
    name: str = "budget"

    @classmethod
    def of_device(cls, name: str) -> Budget:
        dev = device(name)
        return cls(dev.luts, dev.flip_flops, dev.dsps, dev.brams, dev.name)

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``lut=20000,dsp=28,bram=56`` (ff defaults to the LUTs; a missing one is 0)."""
        values: dict[str, int] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key not in RESOURCES or not value.strip().isdigit():
                raise ConfigError(f"--budget '{text}': use lut=N,ff=N,dsp=N,bram=N "
                                  f"(got '{part}')")
            values[key] = int(value)
        if "lut" not in values:
            raise ConfigError(f"--budget '{text}': give at least lut=N")
        values.setdefault("ff", values["lut"])
        return cls(values["lut"], values["ff"], values.get("dsp", 0), values.get("bram", 0),
                   "budget " + text)

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in RESOURCES}


def family_of(budget: Budget) -> str:
    """The FPGA family a budget is for (a budget that names no device: ECP5)."""
    for family in ("ice40", "nexus"):
        if budget.name.startswith(family):
            return family
    return "ecp5"


# --- the resource model ---------------------------------------------------------------------
def _line_buffer(layer: dict[str, Any], rows: int) -> tuple[int, int]:
    """(width, depth) of a line buffer of ``rows`` rows rounded up to a power of two, each
    row a power-of-two stride of words (kiln_im2col, kiln_maxpool)."""
    geometry = layer["geometry"]
    slots = 1 << max(rows - 1, 0).bit_length()
    stride = 1 << max(geometry["W"] * geometry["CB"] - 1, 1).bit_length()
    return layer["p_in"] * layer["in_bits"], slots * stride


def memories(layer: dict[str, Any]) -> list[tuple[int, int]]:
    """(width, depth) of the unit's memories: weight ROM, the two input buffers (a
    power-of-two depth each) and the line buffer of an im2col or max pool."""
    skips = [(layer["p_in"] * layer["in_bits"], depth) for depth in layer.get("skip_depths", [])
             if depth]  # the skip FIFOs in front of the unit
    if layer["kind"] == "maxpool":
        return [_line_buffer(layer, layer["geometry"]["K"]), *skips]
    if layer["kind"] == "add":
        return skips
    in_beats = -(-layer["in_n"] // layer["p_in"])
    weight_bits = layer.get("wc_bits") or layer["weight_bits"] + 1  # stored centred
    lanes, words = weight_rom_shape(layer)
    out = [(lanes * weight_bits, words),
           (layer["p_in"] * layer["in_bits"], 2 << max(in_beats - 1, 1).bit_length())]
    if layer["kind"] in ("conv", "avgpool"):
        geometry = layer["geometry"]
        out.append(_line_buffer(layer, geometry["DILATION"] * (geometry["FY"] - 1) + 1))
    return out + skips


def features(layer: dict[str, Any]) -> dict[str, float]:
    """What the model multiplies by its coefficients, per unit."""
    if layer["kind"] == "add":  # the lanes of arithmetic: one turn's
        return {"add_lanes": float(layer["geometry"].get("LANES_PER_TURN", layer["p_in"]))}
    if layer["kind"] == "maxpool":
        geometry = layer["geometry"]
        return {"pool": 1.0, "pool_buffer_bits": float(geometry["W"] * geometry["CB"]
                                                       * layer["p_in"] * layer["in_bits"])}
    small = sum(w * d for w, d in memories(layer) if not in_block_ram(w, d))
    products = weight_rom_shape(layer)[0]  # a multiplier per weight of a block
    out = {"unit": 1.0, "products": float(products),
           "product_bits": float(products * layer["weight_bits"] * layer["in_bits"]),
           "lanes": float(layer["p_out"]), "requants": float(layer["requants"]),
           "requant_dsps": float(_requant_dsps(layer)),
           "inputs": float(layer["p_in"] * layer["in_bits"]), "small_memory_bits": float(small)}
    if layer["kind"] in ("conv", "avgpool"):
        geometry = layer["geometry"]
        out["im2col"] = 1.0
        out["line_bits"] = float(geometry["FY"] * geometry["W"] * geometry["CB"]
                                 * layer["p_in"] * layer["in_bits"])
    return out


LUT_FEATURES = ("unit", "products", "lanes", "requants", "small_memory_bits", "im2col",
                "line_bits", "pool", "pool_buffer_bits")
FF_FEATURES = ("unit", "products", "lanes", "requants", "inputs", "im2col", "pool")
DSP_FEATURES = ("products", "requant_dsps", "im2col")  # no intercept: DSPs are multipliers


def _requant_dsps(layer: dict[str, Any]) -> int:
    """The requantizers' DSP tiles of a layer's fields (a plain lookup: the folding scores
    every layer of every chain)."""
    return requant_dsps(layer["kind"], layer["requants"], layer.get("passes", 1),
                        layer.get("acc_bits", 32), layer.get("m_bits", 31))


def fit_resource_model(samples: list[dict[str, Any]], family: str) -> dict[str, Any]:
    """Least-squares coefficients (non-negative by clipping) for LUTs, FFs and DSPs."""
    model: dict[str, Any] = {"family": family, "samples": len(samples)}
    for resource, names in (("lut", LUT_FEATURES), ("ff", FF_FEATURES),
                            ("dsp", DSP_FEATURES)):
        rows = [features(s["layer"]) for s in samples]
        matrix = np.array([[row.get(n, 0.0) for n in names] for row in rows])
        target = np.array([s["used"][resource] for s in samples], dtype=float)
        active = matrix.any(axis=0)
        coefficients = np.zeros(len(names))
        if active.any():
            solution, *_ = np.linalg.lstsq(matrix[:, active], target, rcond=None)
            coefficients[active] = np.clip(solution, 0, None)
        model[resource] = {n: round(float(c), 4) for n, c in zip(names, coefficients,
                                                                strict=True)}
    return model


WINDOW_FEATURES = ("im2col", "line_bits", "pool", "pool_buffer_bits")


def lut_parts(row: dict[str, float], model: dict[str, Any]) -> tuple[float, float]:
    """(matrix unit, window unit) LUTs of the per-unit fit, before flattening."""
    lut = model["lut"]
    window = sum(lut.get(n, 0.0) * row.get(n, 0.0) for n in WINDOW_FEATURES)
    total = sum(lut.get(n, 0.0) * v for n, v in row.items())
    return total - window, window


def load_model(family: str) -> dict[str, Any]:
    if not MODEL_PATH.is_file():
        raise KilnError(f"{MODEL_PATH}: the resource model is missing",
                        hint="run benchmarks/rtl_resource_model.py")
    stored = json.loads(MODEL_PATH.read_text())
    if family not in stored:
        fallback = next(iter(stored.values()))
        return {**fallback, "family": family, "borrowed_from": fallback["family"]}
    return stored[family]


def predict_layer(layer: dict[str, Any] | Layer, model: dict[str, Any]) -> dict[str, float]:
    """Estimated LUT/FF/DSP/BRAM of one emitted layer (its im2col included)."""
    layer = layer.__dict__ if isinstance(layer, Layer) else layer
    row = features(layer)
    if layer["kind"] == "add":
        # Not in the fitted model: per lane, measured with Yosys on ECP5 (kiln_add: two
        # constant products, a sum and a clamp, registered), plus its skip FIFOs.
        lanes = row["add_lanes"]
        return {"lut": ADD_LUT_PER_LANE * lanes, "ff": ADD_FF_PER_LANE * lanes,
                "dsp": ADD_DSP_PER_LANE * lanes,
                "bram": float(sum(block_rams(w, d) for w, d in memories(layer)
                                  if in_block_ram(w, d)))}
    # The fit is per unit (hierarchy kept); flatten_* scales it to the flattened netlist,
    # LUTs separately for the matrix units and the window units (im2col, max pool).
    out = {resource: sum(model[resource].get(n, 0.0) * v for n, v in row.items())
           * model.get(f"flatten_{resource}", 1.0) for resource in ("ff", "dsp")}
    dense, window = lut_parts(row, model)
    out["lut"] = (dense * model.get("flatten_lut_dense", 1.0)
                  + window * model.get("flatten_lut_window", 1.0))
    # memories() lists the weight ROM first
    weight_rom = 0 if layer["kind"] not in UNITS_WITHOUT_MATRIX else None
    layout = rom_layout_of(layer)
    out["bram"] = float(sum(block_rams(w, d, layout=layout if index == weight_rom else "whole")
                            for index, (w, d) in enumerate(memories(layer))
                            if in_block_ram(w, d)))
    return out


def rom_layout_of(layer: dict[str, Any]) -> str:
    """How an emitted layer's weight ROM is laid out (kiln.rtl.memories.ROM_LAYOUTS)."""
    if layer.get("w_pack", 1) > 1:
        return "packed"
    return "banked" if layer.get("w_banks", 1) > 1 else "whole"


ADD_LUT_PER_LANE, ADD_FF_PER_LANE, ADD_DSP_PER_LANE = 150.0, 200.0, 4.0
