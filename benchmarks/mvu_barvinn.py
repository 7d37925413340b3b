"""BARVINN's MVU: kiln's configurations against BARVINN's generator, proven on the MVU model
and on BARVINN's own MVU RTL (Verilator).

    .venv/bin/python benchmarks/mvu_barvinn.py [--inputs 100] [--rtl-inputs 5] [--skip-accuracy]

1. BARVINN's published table (``../shared/data/barvinn/published-mvu-configs.txt``: its
   shortcut-free CIFAR ResNet-18, precisions 2/2/2) against ``kiln mvu --barvinn-compat``,
   character for character.
2. The same network in kiln's default mode (random 2-bit weights: the configurations depend
   on shapes, the proof on any weights): per-layer countdowns beside BARVINN's, the total,
   and the model's proof on random inputs.
3. The proof sweep: random plain CNNs (padded, strided, C < 64, C and K > 64, 1x1 and 3x3,
   max pooling, flatten + dense) and MLPs (several blocks in and out) at 1, 2, 4 and 8 bits,
   signed and unsigned: layers, inputs, mismatches, model cycles against countdowns; then
   every job of every network on BARVINN's RTL (``--rtl-inputs`` inputs each): data-RAM
   words compared with the model, tensor elements with the engine, RTL cycles against the
   model's, simulation time.
4. The zoo's convnet on Fashion-MNIST: float, int8 program, the program at 2, 4 and 8 bits
   (2 bits after QAT with examples/quant/mvu-w2a2.yaml, 4 and 8 by calibration) and its MVU
   lowering (16-bit scales, truncation with the rounding offset in the bias, wrap instead
   of saturation), and what the wrap alone costs (the MVU lowering with saturation); each
   on 20 test images (``--rtl-images``) on BARVINN's RTL.

Prints tables and writes benchmarks/results/mvu_barvinn.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PUBLISHED = Path(__file__).resolve().parents[2] / "shared/data/barvinn/published-mvu-configs.txt"

CNN = [{"conv": 70, "kernel": 3, "padding": 1}, {"maxpool": 2},
       {"conv": 130, "kernel": 3, "stride": 2, "padding": 1}, {"conv": 20, "kernel": 1},
       {"flatten": True}, {"dense": 9}]
CNN_5X5 = [{"conv": 16, "kernel": 5, "padding": 2}, {"conv": 200, "kernel": 3, "stride": 2},
           {"conv": 66, "kernel": 1}, {"flatten": True}, {"dense": 12}]
MLP = [{"dense": 150}, {"dense": 70}, {"dense": 10}]


def compat_section() -> dict:
    from kiln.models.arguments import load_model_argument
    from kiln.mvu.compat import barvinn_text
    from kiln.mvu.generate import graph_conv_shapes

    graph, _ = load_model_argument("resnet18-cifar-plain")
    text = barvinn_text(graph_conv_shapes(graph), (2, 2, 2))
    result = {"rows": text.count("\n| ["), "total_line": text.strip().splitlines()[-1]}
    if PUBLISHED.is_file():
        result["identical_to_published"] = text == PUBLISHED.read_text()
    print(f"BARVINN compatibility: {result}")
    return result


def resnet_section(inputs: int, rtl_inputs: int) -> dict:
    from kiln.mvu.compat import barvinn_rows, plan_shapes
    from kiln.mvu.lower import lower_for_mvu
    from kiln.mvu.plan import plan_mvu
    from kiln.mvu.run import prove
    from kiln.mvu.synthetic import RESNET18_PLAIN_CIFAR, random_inputs, synthetic_program

    program = synthetic_program((3, 32, 32), RESNET18_PLAIN_CIFAR, aprec=2, wprec=2, oprec=2,
                                seed=0)
    plan = plan_mvu(lower_for_mvu(program))
    rows = barvinn_rows(plan_shapes(plan), (2, 2, 2))
    start = time.perf_counter()
    report = prove(plan, random_inputs(program, inputs))
    seconds = time.perf_counter() - start
    layers = []
    print(f"\n{'layer':8} {'jobs':>5} {'passes':>6} {'kiln/job':>9} {'BARVINN/job':>11} "
          f"{'kiln layer':>11} {'BARVINN layer':>13} {'mismatches':>10}")
    for layer, row, proof in zip(plan.layers, rows, report.layers, strict=True):
        layers.append({"name": layer.op.name, "jobs": len(layer.jobs),
                       "passes": len(layer.passes), "countdown_per_job": layer.jobs[0].countdown,
                       "barvinn_countdown": row["countdown"], "countdown": layer.countdown,
                       "barvinn_total": row["total_layer_countdown"],
                       "model_cycles": proof.cycles, "mismatches": proof.mismatches})
        print(f"{layer.op.name:8} {len(layer.jobs):5} {len(layer.passes):6} "
              f"{layer.jobs[0].countdown:9} {row['countdown']:11.0f} {layer.countdown:11} "
              f"{row['total_layer_countdown']:13.0f} {proof.mismatches:10}")
    total_barvinn = int(sum(row["total_layer_countdown"] for row in rows))
    print(f"total countdown: kiln {plan.countdown:,}, BARVINN {total_barvinn:,}; model ran "
          f"{report.cycles:,} cycles per input on {inputs} inputs in {seconds:.1f} s, "
          f"{report.mismatches} mismatches")
    result = {"layers": layers, "countdown": plan.countdown,
              "barvinn_countdown": total_barvinn, "inputs": inputs,
              "model_cycles": report.cycles, "mismatches": report.mismatches,
              "seconds": round(seconds, 2)}
    if rtl_inputs:
        result.update(rtl_row(plan, random_inputs(program, rtl_inputs, seed=1)))
        print(f"on BARVINN's RTL: {rtl_inputs} inputs, {result['jobs']} jobs, "
              f"{result['rtl_words']} words, {result['rtl_mismatches']} mismatches, "
              f"{result['rtl_run_cycles']:,} cycles per input (model "
              f"{result['model_cycles']:,}), {result['rtl_seconds']} s")
    return result


def rtl_row(plan, inputs) -> dict:
    """Every job of ``plan`` on BARVINN's RTL for ``inputs``: the closing note's columns."""
    from kiln.mvu.rtl_run import prove_on_rtl

    start = time.perf_counter()
    report = prove_on_rtl(plan, inputs)
    seconds = time.perf_counter() - start
    layers = report.layers
    return {"rtl_inputs": len(inputs), "jobs": sum(layer.jobs for layer in layers),
            "rtl_words": report.words, "rtl_mismatches": report.mismatches,
            "rtl_elements": sum(layer.elements for layer in layers),
            "rtl_run_cycles": sum(layer.rtl_run_cycles for layer in layers),
            "model_cycles": sum(layer.model_cycles for layer in layers),
            "rtl_cycles_to_irq": sum(layer.rtl_cycles_to_irq for layer in layers),
            "rtl_writes_equal": all(layer.writes == layer.expected_writes for layer in layers),
            "rtl_build_seconds": round(report.build_seconds, 1),
            "rtl_seconds": round(seconds - report.build_seconds, 2)}


def sweep_section(inputs: int, rtl_inputs: int) -> list[dict]:
    from kiln.mvu.job import OUTPUT_DRAIN
    from kiln.mvu.lower import lower_for_mvu
    from kiln.mvu.plan import plan_mvu
    from kiln.mvu.run import prove
    from kiln.mvu.synthetic import random_inputs, synthetic_program

    results = []
    print(f"\n{'network':8} {'w':>2} {'a':>2} {'signed in/w':>11} {'layers':>6} {'inputs':>6} "
          f"{'cycles':>8} {'= countdown':>11} {'mismatches':>10}")
    for name, shape, layers in (("cnn", (3, 9, 7), CNN), ("cnn5x5", (5, 12, 12), CNN_5X5),
                                ("mlp", (100,), MLP)):
        for bits in (1, 2, 4, 8):
            for isigned, wsigned in ((False, True), (True, False), (True, True)):
                aprec = 2 if bits == 1 else bits  # 1-bit data: outputs faster than serializer
                program = synthetic_program(shape, layers, aprec=aprec, wprec=bits,
                                            oprec=aprec, isigned=isigned, wsigned=wsigned,
                                            input_zero_point=0 if isigned else 1, seed=bits)
                plan = plan_mvu(lower_for_mvu(program))
                report = prove(plan, random_inputs(program, inputs, seed=bits))
                equal = report.cycles == plan.countdown and all(
                    p.drain_cycles == OUTPUT_DRAIN * p.jobs and p.outputs == p.expected_outputs
                    for p in report.layers)
                row = {"network": name, "wprec": bits, "aprec": aprec,
                       "isigned": isigned, "wsigned": wsigned,
                       "layers": len(plan.layers), "inputs": inputs,
                       "cycles": report.cycles, "cycles_equal_countdown": equal,
                       "mismatches": report.mismatches}
                if rtl_inputs:
                    row.update(rtl_row(plan, random_inputs(program, rtl_inputs, seed=bits)))
                results.append(row)
                print(f"{name:8} {bits:2} {aprec:2} {str(isigned)[0] + '/' + str(wsigned)[0]:>11} "
                      f"{len(plan.layers):6} {inputs:6} {report.cycles:8} {str(equal):>11} "
                      f"{report.mismatches:10}" + (
                          f" | RTL: {row['jobs']} jobs, {row['rtl_words']} words, "
                          f"{row['rtl_mismatches']} mismatches, cycles {row['rtl_run_cycles']}"
                          f" (model {row['model_cycles']}), {row['rtl_seconds']} s"
                          if rtl_inputs else ""))
    return results


def accuracy_section(inputs: int, rtl_images: int) -> list[dict]:
    from kiln.cli.integer_cmd import _fake_quant_graph
    from kiln.integer import arith
    from kiln.integer import lower as lower_graph
    from kiln.mvu.generate import accuracy, calibration_inputs
    from kiln.mvu.lower import lower_for_mvu
    from kiln.mvu.plan import plan_mvu
    from kiln.mvu.run import prove
    from kiln.quant import QuantConfig, qat
    from kiln.training import predict

    rows = []
    for bits in (8, 4, 2):
        config = QuantConfig.load(f"examples/quant/mvu-w{bits}a{bits}.yaml") if bits < 8 \
            else None
        data = config.model_dump(mode="json", exclude_unset=True) if config else None
        graph, quantized, _, dataset, _, scale = _fake_quant_graph(
            "convnet", None, data, 8 if bits == 8 else None, 8 if bits == 8 else None, 8)
        how = "calibration"
        if bits == 2:
            quantized, _ = qat(quantized, dataset, method="ste", epochs=3, lr=5e-4, seed=0)
            how = "QAT (STE, 3 epochs)"
        program = lower_graph(quantized, rounding="nearest")
        program.metadata = {"dataset": dataset.name, "input_scale": scale}
        x, y = dataset.arrays("test")
        row = {"bits": bits, "how": how,
               "float": float((predict(graph, x).argmax(axis=1) == y).mean()),
               "program": accuracy(program, dataset)}
        mvu_program = lower_for_mvu(program, calibration=calibration_inputs(program))
        row["mvu"] = accuracy(mvu_program, dataset)
        wrap = arith.requantize_mvu
        arith.requantize_mvu = _saturating
        try:
            row["mvu_saturating"] = accuracy(mvu_program, dataset)
        finally:
            arith.requantize_mvu = wrap
        plan = plan_mvu(mvu_program)
        report = prove(plan, mvu_program.input_quant.quantize(x[:inputs]))
        row.update(mismatches=report.mismatches, proof_inputs=inputs,
                   countdown=plan.countdown)
        if rtl_images:
            row.update(rtl_row(plan, mvu_program.input_quant.quantize(x[:rtl_images])))
            print(f"convnet {bits}-bit on BARVINN's RTL: {row['rtl_inputs']} test images, "
                  f"{row['jobs']} jobs, {row['rtl_words']} words, {row['rtl_mismatches']} "
                  f"mismatches, {row['rtl_run_cycles']:,} RTL cycles per image (model "
                  f"{row['model_cycles']:,}), {row['rtl_seconds']} s")
        rows.append(row)
        print(f"convnet {bits}-bit ({how}): float {row['float']:.2%}, program "
              f"{row['program']:.2%}, MVU {row['mvu']:.2%} (saturating instead of wrapping: "
              f"{row['mvu_saturating']:.2%}); {inputs} test images on the model: "
              f"{report.mismatches} mismatches, countdown {plan.countdown:,}")
    return rows


def _saturating(acc, m0, shift, zero_point, qmin, qmax):
    """The MVU mode with saturation in place of the wrap (what the wrap costs)."""
    import numpy as np

    total_shift = 31 + np.asarray(shift, dtype=np.int64)
    half = np.int64(1) << (total_shift - 1)
    value = ((np.asarray(acc).astype(np.int64) * np.asarray(m0, dtype=np.int64) + half)
             >> total_shift) + zero_point
    return np.clip(value, qmin, qmax)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100, help="inputs per proof")
    parser.add_argument("--rtl-inputs", type=int, default=5,
                        help="inputs per sweep network on BARVINN's RTL (0: skip the RTL)")
    parser.add_argument("--rtl-images", type=int, default=20,
                        help="convnet test images on BARVINN's RTL")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/mvu_barvinn.json")
    args = parser.parse_args()
    results = {"compat": compat_section(),
               "resnet18_plain": resnet_section(args.inputs, args.rtl_inputs),
               "sweep": sweep_section(args.inputs, args.rtl_inputs)}
    if not args.skip_accuracy:
        results["convnet_accuracy"] = accuracy_section(args.inputs, args.rtl_images)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
