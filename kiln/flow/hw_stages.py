"""The flow's stages on other hardware than the single-core cost model: the multi-core
schedule, BARVINN's matrix-vector unit, and the FPGA (fold, place and route, Fmax).

Each is a stage function like those of :mod:`kiln.flow.stages`: it reads the artifacts of
the stages before it through the :class:`~kiln.flow.stages.FlowContext`, writes its own
into the folder it is given and returns its figures; a model the target cannot take raises
:class:`~kiln.errors.KilnError` (the stage is refused, the others go on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.flow.stages import FlowContext, _parallelism
from kiln.hw.schedule.run import schedule
from kiln.hw.schedule.views import write_views
from kiln.mvu.generate import accuracy, calibration_inputs, generate, program_dataset
from kiln.mvu.lower import lower_for_mvu
from kiln.mvu.rtl_run import check_rtl_proof
from kiln.mvu.run import check_proof
from kiln.rtl import emit
from kiln.rtl.emit import check_emittable
from kiln.rtl.folding import Budget, fold
from kiln.rtl.fpga import place_and_route
from kiln.rtl.simulate import simulate


def stage_schedule(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The quantized model's MAC layers on a multi-core system (Stream's inputs): latency,
    energy, DRAM traffic, peak memory per core and the gap to a lower bound; validated."""
    options = ctx.config.schedule
    result = schedule(str(ctx.out / "compress" / "model.pt"), Path(options.system),
                      granularity=options.granularity, allocate=options.allocate)
    extra = {"allocate": options.allocate, "granularity": options.granularity,
             "evaluated_schedules": result.evaluated, "notes": result.notes,
             "validated": True}
    # the workload was read from the compress stage's model.pt: name it after the model
    result.schedule.graph.name = ctx.float_model()[1].name
    files = write_views(result.schedule, folder, extra=extra)
    figures = result.figures
    return {"system": Path(options.system).stem, **extra,
            "latency_cycles": figures["latency_cycles"], "energy_pj": figures["energy_pj"],
            "dram_traffic_bits": figures["dram_traffic_bits"],
            "peak_memory_bits": figures["peak_memory_bits"],
            "lower_bound": figures["lower_bound"],
            "gap_to_lower_bound": figures["gap_to_lower_bound"],
            "files": {k: str(Path(v).name) for k, v in files.items()}}


def stage_mvu(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The integer program as BARVINN MVU jobs: CSR values and bit-serial images, every job
    proven on kiln's model of the unit and, for the first ``[mvu].rtl`` inputs, on
    BARVINN's own RTL (Verilator)."""
    options = ctx.config.mvu
    program = ctx.program()
    mvu_program = lower_for_mvu(program, calibration=calibration_inputs(program))
    result = generate(mvu_program, folder / "mvu", prove_count=options.prove, samples=1,
                      rtl_count=options.rtl)
    dataset = program_dataset(mvu_program)
    proof = result.proof
    check_proof(proof)  # a mismatch is a broken stage, not a refusal
    figures: dict[str, Any] = {
        "layers": len(result.plan.layers), "jobs": sum(len(layer.jobs)
                                                       for layer in result.plan.layers),
        "countdown_cycles": result.plan.countdown, "proof_inputs": proof.samples,
        "proof_mismatches": proof.mismatches,
        "accuracy": accuracy(mvu_program, dataset) if dataset is not None else None,
        "rtl": None}
    if result.rtl is not None:
        check_rtl_proof(result.rtl)
        figures["rtl"] = {"inputs": result.rtl.samples, "words": result.rtl.words,
                          "mismatches": result.rtl.mismatches,
                          "run_cycles": sum(layer.rtl_run_cycles
                                            for layer in result.rtl.layers)}
    return figures


def stage_fpga(ctx: FlowContext, folder: Path) -> dict[str, Any]:
    """The program folded to fit the FPGA (or at ``[rtl]`` parallelism), synthesized,
    placed and routed with nextpnr: the achieved Fmax, resources and inferences/s."""
    options = ctx.config.fpga
    # ONNX Runtime's float32 requantization is a float multiplier per output in LUTs
    # (convnet on ECP5-25K: 22k LUT, 11 MHz); the FPGA takes the fixed-point one
    program = ctx.hardware_program(options.rounding)
    check_emittable(program)  # before folding: name what the hardware cannot take
    folding = None
    if options.fold:
        folding = fold(program, budget=Budget.of_device(options.device))
        design = emit(program, folding.parallelism(), folder / "design",
                      rom_layout=folding.rom_layout)
    else:
        design = emit(program, _parallelism(ctx), folder / "design")
    # what is placed is verified: simulated against the engine on a few test inputs
    x, _ = ctx.test_inputs()
    simulated = simulate(design, simulator="verilator",
                         inputs=program.input_quant.quantize(x[:options.vectors]), jobs=1)
    if not simulated.passed:
        raise RuntimeError(f"the folded design differs from the engine: {simulated.message}")
    result = place_and_route(design, options.device, clock_mhz=options.clock_mhz,
                             seeds=options.seeds, speed=options.speed)
    figures = result.as_dict()
    # the stage's folder is renamed into place when it ends: name the report inside it
    figures["report_path"] = f"fpga/design/{Path(result.report_path).name}"
    figures["rounding"] = program.rounding
    figures["simulated_vectors"] = simulated.vectors
    figures["bit_exact"] = simulated.passed
    figures["cycles_per_inference_simulated"] = simulated.cycles_per_inference
    figures["folded"] = folding is not None
    figures["parallelism"] = {layer.name: [layer.p_in, layer.p_out] for layer in design.layers}
    figures["clock_met"] = result.fmax_mhz >= result.clock_mhz
    return figures
