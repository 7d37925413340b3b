"""BARVINN's own MVU configuration generator, reproduced for comparison, and where kiln's
configuration differs from it and why.

BARVINN's generator (``MVU_Code_Gen``) prints, for each convolution, ilength / ijump /
wlength / wjump, a per-job countdown and a per-layer total from closed formulas. Studied
against the MVU RTL those formulas are wrong for most layers; ``--barvinn-compat`` prints
them anyway, exactly, for users who compare with BARVINN's documentation, and kiln's
default output says per layer what differs:

* the window slide ``ijump[0]`` is −iprec·(iC·(fH−1)·iW + (fW−sW−1)·iC + 1), which equals
  the jump from a window's last word to the next window's first only when iC = 2;
* the jumps use the unpadded input width, while the next layer is stored padded;
* the countdown counts (iW − fW + 1)/sW windows per row (padding ignored; a float when the
  stride does not divide it, which stops a job mid-output), and the layer total multiplies
  by ⌈(iW + 2P)/s⌉ instead of the output rows.

>>> rows = barvinn_rows([ConvShape(3, 32, 32, 64, 3, 3, 1, 1)], (2, 2, 2))
>>> rows[0]["countdown"], rows[0]["total_layer_countdown"]
(1080.0, 36720.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kiln.mvu.plan import MvuLayer, MvuPlan


@dataclass(frozen=True)
class ConvShape:
    """A convolution as BARVINN's generator sees it (channels, not 64-blocks)."""

    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: int
    padding: int


def plan_shapes(plan: MvuPlan) -> list[ConvShape]:
    """The convolutions of a plan (BARVINN's generator only looks at convolutions)."""
    shapes = []
    for layer in plan.layers:
        if layer.op.kind != "conv":
            continue
        source = layer.source
        shapes.append(ConvShape(source.channels, source.height, source.width,
                                layer.target.channels, *layer.kernel, layer.stride[1],
                                layer.source.padding[1]))
    return shapes


def _barvinn_params(prec: tuple[int, int, int], ishape: list[int], fshape: list[int],
                    stride: int) -> tuple[list[int], list[int], list[int], list[int], float]:
    iprec, wprec, _ = prec
    ic, _, iw = ishape
    fc, fh, fw = fshape
    ilength = [0, iprec * wprec * fc - 1, fh - 1, ic * fw - 1, 0]
    ijump = [-iprec * (ic * (fh - 1) * iw + (fw - stride - 1) * ic + 1),
             -iprec * (ic * (fh - 1) * iw + fw * ic - 1),
             iprec * (ic * (iw - fw) + 1), iprec, 0]
    wlength = [0, fc - 1, iprec * wprec - 1, ic * fw * fh - 1, 0]
    wjump = [-wprec * (ic * fw * fh * fc - 1), wprec, -wprec * (ic * fw * fh - 1), wprec, 0]
    countdown = (ic * fw) * fh * (iprec * wprec) * fc * ((iw - fw + 1) / stride)
    return ilength, ijump, wlength, wjump, countdown


def barvinn_rows(shapes: list[ConvShape], prec: tuple[int, int, int]) -> list[dict[str, Any]]:
    """BARVINN's generator output, row by row, with its formulas (floats included)."""
    rows = []
    ishape = [math.ceil(shapes[0].in_channels / 64), shapes[0].in_height,
              shapes[0].in_width] if shapes else []
    for shape in shapes:
        fshape = [math.ceil(shape.out_channels / 64), shape.kernel_h, shape.kernel_w]
        ilength, ijump, wlength, wjump, countdown = _barvinn_params(prec, ishape, fshape,
                                                                    shape.stride)
        total = countdown * math.ceil((ishape[2] + 2 * shape.padding) / shape.stride)
        rows.append({"iShape": list(ishape), "fShape": fshape, "ilength": ilength,
                     "ijump": ijump, "wlength": wlength, "wjump": wjump,
                     "countdown": countdown, "total_layer_countdown": total})
        # The generator's own shape inference: channel blocks become fC.
        ishape = [fshape[0], int((ishape[1] - fshape[1] + 2 * shape.padding) / shape.stride) + 1,
                  int((ishape[2] - fshape[2] + 2 * shape.padding) / shape.stride) + 1]
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.3f}"
    return str(value)


def text_table(header: list[str], rows: list[list[Any]]) -> str:
    """A boxed table with a rule after every row (the layout BARVINN's generator prints)."""
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     + " |")
        lines.append(rule)
    return "\n".join(lines)


COMPAT_HEADER = ["iShape", "fShape", "ilength", "ijump", "wlength", "wjump", "countdown",
                 "total layer countdown"]


def barvinn_text(shapes: list[ConvShape], prec: tuple[int, int, int]) -> str:
    """What BARVINN's generator prints for these convolutions, character for character."""
    rows = barvinn_rows(shapes, prec)
    body = [[row["iShape"], row["fShape"], row["ilength"], row["ijump"], row["wlength"],
             row["wjump"], row["countdown"], row["total_layer_countdown"]] for row in rows]
    total = int(sum(row["total_layer_countdown"] for row in rows))
    return ("Generated MVU configuration:\n" + text_table(COMPAT_HEADER, body)
            + f"\nTotal countdown: {total}\n")


def differences(layer: MvuLayer, row: dict[str, Any]) -> list[str]:
    """Where kiln's first job of ``layer`` differs from BARVINN's row, and why."""
    job = layer.jobs[0]
    notes = []
    source = layer.source
    padded_width = source.padded[1]
    if job.ijump[0] != row["ijump"][0]:
        reasons = []
        if source.blocks != 2:
            reasons.append("BARVINN's formula is right only for exactly 2 input blocks (this "
                           f"layer has {source.blocks})")
        if padded_width != source.width:
            reasons.append(f"it uses the unpadded width {source.width}, not {padded_width}")
        notes.append(f"ijump[0] {job.ijump[0]} vs {row['ijump'][0]}: the window slide; "
                     + "; ".join(reasons or ["the pass splits the output blocks"]))
    for index in (1, 2):
        if job.ijump[index] != row["ijump"][index]:
            notes.append(f"ijump[{index}] {job.ijump[index]} vs {row['ijump'][index]}: the "
                         f"input is stored padded (width {padded_width}, not "
                         f"{source.width})")
    if job.wlength != row["wlength"] or job.wjump != row["wjump"]:
        notes.append(f"wlength/wjump {job.wlength}/{job.wjump} vs {row['wlength']}/"
                     f"{row['wjump']}: the weights take {len(layer.passes)} weight-RAM passes "
                     "(512 words each)")
    if job.countdown != row["countdown"]:
        notes.append(f"countdown {job.countdown} vs {_cell(row['countdown'])}: "
                     f"{layer.out_size[1]} output pixels per row × {layer.passes[0].blocks} "
                     "output block(s) × planes × window; BARVINN counts "
                     "(iW − fW + 1)/sW windows (padding ignored"
                     + (", a fraction: the job stops mid-output" if not
                        float(row["countdown"]).is_integer() else "") + ")")
    if layer.countdown != row["total_layer_countdown"]:
        notes.append(f"layer total {layer.countdown} vs {_cell(row['total_layer_countdown'])}"
                     f": {len(layer.jobs)} jobs (one per output row"
                     + (" and pass" if len(layer.passes) > 1 else "")
                     + "); BARVINN multiplies by ⌈(iW + 2P)/s⌉")
    return notes


IMAGE_NOTES = [
    "weights are written in two's complement with their sign plane (BARVINN's exporter "
    "keeps the low wprec bits of the magnitude pattern and drops signs)",
    "each 64×64 weight tile has lane o's 64 input-channel bits in bits 64·o … 64·o+63 (the "
    "exporter writes the tile transposed) and kernel positions in (y, x) order",
    "expected outputs come from kiln's integer engine in the MVU's own arithmetic, not from "
    "float ONNX Runtime results cast to integers",
]
