"""The flow's report: ``report.md``, the same as a self-contained ``report.html`` (images
inlined), and ``summary.json`` for scripts; a one-screen summary first, then a section per
stage with its figures, tables and plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from kiln.flow.runner import StageRecord
from kiln.report.markdown import format_size, markdown_table, write_text

Block = tuple  # ("h1"|"h2"|"p"|"warn", text) | ("table", columns, rows) | ("img", path, caption)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"


def summary(model: str, records: list[StageRecord]) -> dict[str, Any]:
    """The headline figures of a flow, for the report's top and for scripts."""
    by = {r.stage: r for r in records}

    def figure(stage: str, key: str) -> Any:
        record = by.get(stage)
        return record.figures.get(key) if record and record.status in ("done", "cached") \
            else None

    onnx = by.get("onnx")
    untrained = None
    if figure("float", "untrained"):
        untrained = (f"the float model scores {_pct(figure('float', 'accuracy'))} on "
                     f"{figure('float', 'dataset')}, chance is {_pct(figure('float', 'chance'))}"
                     ": its weights look untrained (the flow does not train; give trained "
                     "weights: kiln train, --weights, or a model file)")
    return {
        "model": model,
        "untrained_warning": untrained,
        "float_accuracy": figure("float", "accuracy"),
        "quantized_accuracy": figure("compress", "accuracy"),
        "integer_accuracy": figure("integer", "accuracy"),
        "float_bytes": figure("float", "bytes"),
        "quantized_bytes": figure("compress", "bytes"),
        "engine_top1_agreement": figure("integer", "top1_agreement"),
        "onnx_bit_exact": figure("onnx", "bit_exact"),
        "onnx_formats": {f: onnx.figures[f]["bit_exact"] for f in ("qdq", "qoperator")
                         if onnx and f in onnx.figures},
        "rtl_bit_exact": figure("simulate", "bit_exact"),
        "accelerator": figure("cost", "accelerator"),
        "latency_cycles": figure("cost", "latency_cycles"),
        "energy_pj": figure("cost", "energy_pj"),
        "rtl_cycles_per_inference": figure("simulate", "cycles_per_inference"),
        "luts": figure("synth", "luts"), "flip_flops": figure("synth", "flip_flops"),
        "dsps": figure("synth", "dsps"), "cells": figure("synth", "cells"),
        "trained_accuracy": (figure("train", "test_accuracy") or [None])[-1],
        "schedule_latency_cycles": figure("schedule", "latency_cycles"),
        "schedule_gap_to_lower_bound": figure("schedule", "gap_to_lower_bound"),
        "mvu_cycles": figure("mvu", "countdown_cycles"),
        "mvu_rtl_mismatches": (figure("mvu", "rtl") or {}).get("mismatches"),
        "fpga_device": figure("fpga", "device"),
        "fmax_mhz": figure("fpga", "fmax_mhz"),
        "fpga_used": figure("fpga", "used"),
        "fpga_inferences_per_second": figure("fpga", "inferences_per_second"),
        "stages": [r.as_dict() for r in records],
    }


def fpga_text(record: StageRecord | None) -> str:
    """One line: where the design was placed, its Fmax and its resources."""
    if record is None or record.status not in ("done", "cached"):
        return "—"
    f = record.figures
    used, available = f["used"], f["available"]
    return (f"{f['fmax_mhz']:.1f} MHz on {f['device']} (constraint {f['clock_mhz']:.0f} MHz, "
            f"{'met' if f['clock_met'] else 'NOT met'}); "
            + ", ".join(f"{used[k]:,}/{available[k]:,} {label}" for k, label in (
                ("lut", "LUT"), ("ff", "FF"), ("dsp", "DSP"), ("bram", "BRAM")))
            + f"; {f['inferences_per_second']:,.0f} inferences/s")


def _bar_plot(path: Path, labels: list[str], series: dict[str, list[float]], *, title: str,
              ylabel: str, percent: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(max(5.0, 0.5 * len(labels) * len(series) + 2), 3.6),
                                dpi=110)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for index, (name, values) in enumerate(series.items()):
        bars = axes.bar(x + index * width, values, width, label=name)
        axes.bar_label(bars, labels=[f"{v:.2%}" if percent else f"{v:g}" for v in values],
                       fontsize=7, padding=2)
    axes.set_xticks(x + 0.4 - width / 2, labels, fontsize=8,
                    rotation=0 if len(labels) < 6 else 45, ha="center" if len(labels) < 6
                    else "right")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if percent:
        low = min(min(v) for v in series.values())
        axes.set_ylim(max(0.0, low - 0.05), min(1.0, max(max(v) for v in series.values()) +
                                                  0.03))
    if len(series) > 1:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def resources_text(record: StageRecord | None) -> str:
    if record is None or record.status not in ("done", "cached"):
        return "—"
    f = record.figures
    if f["target"] == "generic":  # word-level cells: no LUT mapping
        return (f"{_num(f['cells'])} word-level cells ({_num(f['flip_flops'])} flip-flops, "
                f"{_num(f['multipliers'])} multipliers); target generic")
    return (f"{_num(f['luts'])} LUT, {_num(f['flip_flops'])} FF, {_num(f['dsps'])} DSP "
            f"({f['target']})")


def _blocks(model: str, records: list[StageRecord], out: Path) -> list[Block]:
    facts = summary(model, records)
    by = {r.stage: r for r in records}
    blocks: list[Block] = [("h1", f"kiln flow: {model}")]
    exact = []
    if facts["engine_top1_agreement"] is not None:
        exact.append(f"engine top-1 = fake-quant on {_pct(facts['engine_top1_agreement'])}")
    if facts["onnx_formats"]:
        exact.append("ONNX Runtime " + ", ".join(
            f"{f}: {'bit-exact' if ok else 'DIFFERS'}" for f, ok in facts["onnx_formats"].items()))
    if facts["rtl_bit_exact"] is not None:
        exact.append("RTL " + ("bit-exact" if facts["rtl_bit_exact"] else "DIFFERS"))
    rows = [["accuracy (float → quantized → integer)",
             f"{_pct(facts['float_accuracy'])} → {_pct(facts['quantized_accuracy'])} → "
             f"{_pct(facts['integer_accuracy'])}"],
            ["size (float → quantized)",
             f"{format_size(facts['float_bytes'] or 0)} → "
             f"{format_size(facts['quantized_bytes'] or 0)}"
             if facts["float_bytes"] else "—"],
            ["bit-exact", "; ".join(exact) or "—"],
            [f"accelerator ({facts['accelerator'] or '—'})",
             f"{_num(facts['latency_cycles'])} cycles, "
             f"{_num((facts['energy_pj'] or 0) / 1e6)} µJ per inference"
             if facts["latency_cycles"] else "—"],
            ["RTL", f"{_num(facts['rtl_cycles_per_inference'])} cycles per inference"
             if facts["rtl_cycles_per_inference"] else "—"],
            ["resources (Yosys)", resources_text(by.get("synth"))],
            ["FPGA (placed and routed, nextpnr)", fpga_text(by.get("fpga"))],
            ["multi-core schedule",
             f"{_num(facts['schedule_latency_cycles'])} cycles, "
             f"{facts['schedule_gap_to_lower_bound']:.1%} above its lower bound"
             if facts["schedule_latency_cycles"] else "—"],
            ["BARVINN MVU",
             f"{_num(facts['mvu_cycles'])} cycles; on BARVINN's RTL: "
             + ("not run" if facts["mvu_rtl_mismatches"] is None
                else f"{facts['mvu_rtl_mismatches']} mismatching words")
             if facts["mvu_cycles"] else "—"]]
    blocks += [("h2", "Summary")]
    if facts["untrained_warning"]:
        blocks.append(("warn", f"Warning: {facts['untrained_warning']}."))
    blocks.append(("table", ["figure", "value"], rows))
    blocks += [("h2", "Stages"), ("table", ["stage", "status", "seconds (when it ran)", "note"],
                                  [[r.stage, r.status, f"{r.seconds:.1f}" if r.seconds else "",
                                    r.message] for r in records])]
    report_dir = out / "report"
    accuracies = {name: facts[key] for name, key in (
        ("float", "float_accuracy"), ("quantized", "quantized_accuracy"),
        ("integer", "integer_accuracy")) if facts[key] is not None}
    if accuracies:
        plot = _bar_plot(report_dir / "accuracy.png", list(accuracies),
                         {"test accuracy": list(accuracies.values())},
                         title="accuracy at each step", ylabel="top-1", percent=True)
        blocks += [("h2", "Accuracy"), ("img", plot, "test accuracy at each step")]
    compress = by.get("compress")
    if compress and compress.figures.get("widths"):
        widths = compress.figures["widths"]
        blocks += [("h2", f"Compression ({compress.figures['method']})"),
                   ("table", ["layer", "weight bits", "activation bits"],
                    [[w["layer"], w["weight_bits"], w["activation_bits"]] for w in widths])]
        plot = _bar_plot(report_dir / "widths.png", [w["layer"] for w in widths],
                         {"weights": [w["weight_bits"] for w in widths],
                          "activations": [w["activation_bits"] for w in widths]},
                         title="widths per layer", ylabel="bits")
        blocks.append(("img", plot, "weight and activation widths per layer"))
    integer = by.get("integer")
    if integer and integer.figures:
        f = integer.figures
        blocks += [("h2", f"Integer program ({f['rounding']} rounding)"),
                   ("p", f"Ops: {', '.join(f['ops'])}. Engine accuracy {_pct(f['accuracy'])}; "
                         f"top-1 equal to the fake-quant model on {_pct(f['top1_agreement'])}; "
                         f"outputs within 1 LSB {_pct(f['within_one_lsb'])}, exactly equal "
                         f"{_pct(f['exact'])}."),
                   ("table", ["layer", "kind", "weight bits", "accumulator bits"],
                    [[x["layer"], x["kind"], x["weight_bits"], x["acc_bits"]]
                     for x in f["layers"]])]
    onnx = by.get("onnx")
    if onnx and onnx.figures:
        rows = [[form, ", ".join(f"{k} {v}" for k, v in data["node_types"].items()),
                 ", ".join(n[0] for n in data["float_nodes"]) or "none",
                 f"{data['mismatches']} of {data['elements']:,}"]
                for form, data in onnx.figures.items() if isinstance(data, dict)]
        blocks += [("h2", "ONNX Runtime"),
                   ("table", ["form", "optimized graph (this CPU)", "layers left in float",
                              "integers differing"], rows)]
    cost = by.get("cost")
    if cost and cost.figures:
        f = cost.figures
        blocks += [("h2", f"Accelerator: {f['accelerator']} (objective {f['objective']})"),
                   ("p", f"{_num(f['latency_cycles'])} cycles and "
                         f"{_num(f['energy_pj'] / 1e6)} µJ per inference, MAC utilization "
                         f"{_pct(f['utilization'])}; not costed (no MACs): "
                         f"{', '.join(n[1] for n in f['not_costed']) or 'nothing'}."),
                   ("table", ["layer", "latency (cycles)", "energy (pJ)", "utilization"],
                    [[x["layer"], _num(x["latency_cycles"]), _num(x["energy_pj"]),
                      f"{x['utilization']:.2f}"] for x in f["layers"]])]
        for name, caption in (("latency_per_layer.png", "latency per layer"),
                              ("energy_per_layer.png", "energy per layer"),
                              ("energy_breakdown.png", "energy by memory level and operand")):
            if (out / "cost" / name).is_file():
                blocks.append(("img", out / "cost" / name, caption))
    rtl, simulate, synth = by.get("rtl"), by.get("simulate"), by.get("synth")
    if rtl and rtl.figures:
        rounding = rtl.figures.get("rounding")  # absent in an rtl stage cached before it
        blocks += [("h2", f"RTL ({rtl.figures['parallelism']}"
                          + (f", {rounding} requantization)" if rounding else ")")),
                   ("table", ["layer", "kind", "in → out", "P_in × P_out",
                              "busy cycles / inference"],
                    [[x["layer"], x["kind"], f"{x['in']} → {x['out']}",
                      f"{x['p_in']} × {x['p_out']}", x["cycles"]]
                     for x in rtl.figures["layers"]])]
    if simulate and simulate.figures:
        f = simulate.figures
        blocks.append(("p", f"Simulated on {f['simulator']}: {f['vectors']} test inputs, "
                            f"{'bit-exact on every beat of every layer' if f['bit_exact'] else 'MISMATCH'}; "  # noqa: E501
                            f"{_num(f['cycles_per_inference'])} cycles per inference at full "
                            f"rate, latency {_num(f['latency_cycles'])} cycles, utilization "
                            f"{f['utilization']:.2f} (build {f['build_seconds']:.0f} s, run "
                            f"{f['run_seconds']:.0f} s)."))
        if rtl and rtl.figures:
            # where the cycles go: each layer's busy cycles against the achieved interval
            # (the slowest layer sets the pace; the others wait)
            layers = [x for x in rtl.figures["layers"] if x["cycles"]]
            plot = _bar_plot(report_dir / "cycles.png", [x["layer"] for x in layers],
                             {"busy cycles per inference": [x["cycles"] for x in layers]},
                             title="RTL: busy cycles per layer", ylabel="cycles")
            blocks.append(("img", plot, "busy cycles of each layer per inference; the "
                                        "slowest layer sets the throughput (achieved: "
                                        f"{f['cycles_per_inference']:,.0f} per inference)"))
    if synth and synth.figures:
        f = synth.figures
        if f["target"] == "generic":  # word-level cells, no LUT or DSP mapping
            columns = ["cells (word level)", "flip-flops", "multipliers", "seconds"]
            values = [f["cells"], f["flip_flops"], f["multipliers"], f"{f['seconds']:.0f}"]
        else:
            columns = ["LUTs", "flip-flops", "DSPs", "multipliers", "cells", "seconds"]
            values = [f["luts"], f["flip_flops"], f["dsps"], f["multipliers"], f["cells"],
                      f"{f['seconds']:.0f}"]
        blocks += [("h2", f"Synthesis ({f['target']}, Yosys)"),
                   ("table", columns, [values])]
    blocks += _hardware_blocks(by, out)
    return blocks


def _hardware_blocks(by: dict[str, StageRecord], out: Path) -> list[Block]:
    """The sections of the train, schedule, mvu and fpga stages."""
    blocks: list[Block] = []
    train = by.get("train")
    if train and train.figures:
        f = train.figures
        blocks += [("h2", "Training"),
                   ("p", f"{f['epochs']} epochs (Adam, lr {f['lr']}, batch {f['batch_size']}, "
                         f"seed {f['seed']}) in {f['seconds']:.0f} s: test accuracy "
                         + " → ".join(_pct(a) for a in f["test_accuracy"]) + ".")]
    schedule = by.get("schedule")
    if schedule and schedule.figures:
        f = schedule.figures
        bound = f["lower_bound"]
        blocks += [("h2", f"Multi-core schedule ({f['system']})"),
                   ("p", f"{_num(f['latency_cycles'])} cycles, {_num(f['energy_pj'] / 1e6)} µJ,"
                         f" DRAM traffic {format_size(f['dram_traffic_bits'] / 8)}; lower "
                         f"bound {_num(bound['cycles'])} cycles "
                         f"({bound['bound_by'].replace('_', ' ')}), gap "
                         f"{f['gap_to_lower_bound']:.1%}; allocation {f['allocate']}, "
                         f"granularity {f['granularity']}; validated.")]
        for name, caption in (("timeline.png", "which core runs what, when"),
                              ("memory.png", "memory per core over time")):
            if (out / "schedule" / name).is_file():
                blocks.append(("img", out / "schedule" / name, caption))
    mvu = by.get("mvu")
    if mvu and mvu.figures:
        f = mvu.figures
        rtl = f.get("rtl")
        blocks += [("h2", "BARVINN matrix-vector unit"),
                   ("p", f"{f['layers']} layers as {f['jobs']} jobs, {_num(f['countdown_cycles'])}"
                         f" cycles per inference; proven on kiln's model of the unit on "
                         f"{f['proof_inputs']} inputs ({f['proof_mismatches']} mismatches)"
                         + (f", accuracy {_pct(f['accuracy'])}" if f.get("accuracy") else "")
                         + (f"; on BARVINN's own RTL (Verilator) for {rtl['inputs']} input(s): "
                            f"{rtl['mismatches']} of {rtl['words']:,} data-RAM words differ, "
                            f"{_num(rtl['run_cycles'])} cycles" if rtl else "") + ".")]
    fpga = by.get("fpga")
    if fpga and fpga.figures:
        f = fpga.figures
        critical = f.get("extra", {}).get("critical_path", {})
        blocks += [("h2", f"FPGA: {f['device']}"),
                   ("p", ("Folded to fit the device" if f["folded"] else "At the RTL stage's "
                          "parallelism") + f", {f['rounding']} requantization; simulated on "
                         f"{f['simulated_vectors']} test inputs first "
                         f"({'bit-exact' if f['bit_exact'] else 'MISMATCH'}), then "
                         f"synthesized (Yosys, {f['synth_seconds']:.0f} s) and placed and "
                         f"routed (nextpnr, {f['pnr_seconds']:.0f} s). "
                         + fpga_text(fpga) + "."
                         + (f" Critical path: {' → '.join(critical.get('through', []))}."
                            if critical.get("through") else "")),
                   ("table", ["layer", "P_in × P_out"],
                    [[name, f"{p[0]} × {p[1]}"] for name, p in f["parallelism"].items()])]
    return blocks


def _markdown(blocks: list[Block], out: Path) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "warn":
            lines += [f"**{block[1]}**", ""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({Path(block[1]).relative_to(out)})", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:.25em .6em;font-size:.9em;text-align:left}th{background:#f3f3f3}img{max-width:100%;
display:block;margin:.5em 0}.warn{color:#a40000;background:#fff0f0;padding:.5em}
figcaption{color:#666;font-size:.85em;margin-bottom:1.5em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em}"""


def _html(blocks: list[Block]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape(blocks[0][1])}</title><style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "warn":
            parts.append(f'<p class="warn"><strong>{html.escape(block[1])}</strong></p>')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                           + "</tr>" for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}' "
                         f"alt='{html.escape(block[2])}'><figcaption>{html.escape(block[2])}"
                         "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(model: str, records: list[StageRecord], out: Path) -> list[Path]:
    """report.md, report.html and summary.json in ``out`` (each written atomically)."""
    out = Path(out)
    blocks = _blocks(model, records, out)
    paths = [write_text(out / "report.md", _markdown(blocks, out)),
             write_text(out / "report.html", _html(blocks)),
             write_text(out / "summary.json", json.dumps(summary(model, records), indent=1,
                                                         default=str) + "\n")]
    return paths
