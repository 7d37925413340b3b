"""What clock kiln's generated units close at, per FPGA family and speed grade.

Measured with Yosys + nextpnr 0.11.1 (PyPI yowasp builds), best of placement seeds 1-3, on
the shipped designs (``python benchmarks/rtl_timing.py``): each entry is the clock the
slowest path inside that kind of unit reached, rounded down. A design's predicted Fmax is
that of its slowest unit; place and route (``kiln synth --pnr``) measures the real one.

>>> predicted_fmax_mhz([], "ecp5", 6)
100.0
"""

from __future__ import annotations

from typing import Any

from kiln.rtl.memories import banks, weight_rom_shape
from kiln.rtl.requant import requant_dsps

#: MHz per (family, speed grade) and unit kind: the dense unit (MAC pipeline and pipelined
#: requantizers), the float32 requantizer (one long stage), a weight ROM of many block RAMs
#: left whole (its output multiplexer after the block RAMs), im2col and max pool, and a
#: design of more than MANY_DSPS DSP tiles (they spread over the device's DSP rows: the
#: routing between them and the logic sets the pace). ECP5's many-DSP entry: session 14,
#: with the multipliers' registers in the fabric, 82.7 / 93.6 MHz (102 DSPs on ECP5-85K);
#: session 16, with them inside the DSP blocks (kiln_mul), 99.6 / 105.8 MHz. Nexus grade 7:
#: the convnet 155.5 / 157.7 MHz, jsc 1x1 164.4 / 168.9; its deep-ROM, float32 and
#: many-DSP entries are scaled from ECP5's (unmeasured).
UNIT_FMAX_MHZ: dict[tuple[str, int], dict[str, float]] = {
    ("ecp5", 6): {"dense": 100.0, "float32_requant": 30.0,
                  "deep_rom": 70.0, "im2col": 100.0, "maxpool": 100.0, "many_dsps": 95.0},
    ("ecp5", 7): {"dense": 110.0, "float32_requant": 33.0,
                  "deep_rom": 77.0, "im2col": 110.0, "maxpool": 110.0, "many_dsps": 104.0},
    ("ecp5", 8): {"dense": 125.0, "float32_requant": 38.0,
                  "deep_rom": 87.0, "im2col": 125.0, "maxpool": 125.0, "many_dsps": 118.0},
    ("ice40", 0): {"dense": 40.0, "float32_requant": 12.0,
                   "deep_rom": 30.0, "im2col": 40.0, "maxpool": 40.0, "many_dsps": 30.0},
    # CrossLink-NX (LIFCL-40), nextpnr-nexus with router1
    ("nexus", 7): {"dense": 150.0, "float32_requant": 45.0,
                   "deep_rom": 105.0, "im2col": 150.0, "maxpool": 150.0, "many_dsps": 120.0},
}
SPEED_GRADES = {"ecp5": (6, 7, 8), "ice40": (0,), "nexus": (7,)}
MANY_DSPS = 64
DEFAULT_SPEED = {"ecp5": 6, "ice40": 0, "nexus": 7}


def unit_kind(layer: Any) -> str:
    """The timing class of one emitted layer (:class:`kiln.rtl.emit.Layer` or its dict)."""
    get = layer.get if isinstance(layer, dict) else lambda key, default=None: getattr(
        layer, key, default)
    if get("kind") == "maxpool":
        return "maxpool"
    if get("kind") == "add":
        return "dense"
    fields = layer if isinstance(layer, dict) else layer.__dict__
    lanes, depth = weight_rom_shape(fields)
    width = lanes * (get("wc_bits") or get("weight_bits") + 1)
    if get("w_banks", 1) == 1 and get("w_pack", 1) == 1 and banks(width, depth) > 1:
        # deeper than a few block RAMs and left whole
        return "deep_rom"
    if get("rounding") == "float32":
        return "float32_requant"
    return "dense"


def predicted_fmax_mhz(layers: list[Any], family: str, speed: int | None = None, *,
                       rounding: str = "nearest") -> float:
    """The clock the slowest of ``layers`` closes at on ``family`` (an empty design: the
    fastest unit's)."""
    speed = DEFAULT_SPEED[family] if speed is None else speed
    table = UNIT_FMAX_MHZ[(family, speed)]
    kinds = {"dense"}
    for layer in layers:
        kind = unit_kind(layer)
        if rounding == "float32" and kind != "maxpool":
            kind = "float32_requant"
        kinds.add(kind)
        fields = layer if isinstance(layer, dict) else layer.__dict__
        if fields["kind"] in ("conv", "avgpool") or fields["geometry"].get("WINDOW"):
            kinds.add("im2col")
    if sum(_dsps(layer) for layer in layers) > MANY_DSPS:
        kinds.add("many_dsps")
    return min(table[kind] for kind in kinds)


def _dsps(layer: Any) -> int:
    """DSP tiles of one layer (a Layer or its fields): its products and requantizers."""
    fields = layer if isinstance(layer, dict) else layer.__dict__
    if fields["kind"] == "maxpool":
        return 0
    if fields["kind"] == "add":  # two constant products a lane of a turn, two tiles each
        return 4 * fields["geometry"].get("LANES_PER_TURN", fields["p_in"])
    return weight_rom_shape(fields)[0] + requant_dsps(
        fields["kind"], fields["requants"], fields.get("passes", 1),
        fields.get("acc_bits", 32), fields.get("m_bits", 31))
