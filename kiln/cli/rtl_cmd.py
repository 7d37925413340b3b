"""``kiln emit-rtl``, ``kiln simulate`` and ``kiln synth``: hardware generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, error_console, print_json, table


def emit_rtl(
    program_dir: Annotated[Path, typer.Argument(help="A directory written by 'kiln lower'.")],
    out: Annotated[Path, typer.Option(help="Folder for the design.")],
    parallelism: Annotated[str, typer.Option(
        help="P_in x P_out for every layer, e.g. 4x4.")] = "4x4",
    config: Annotated[Path | None, typer.Option(
        help="YAML/JSON of per-layer parallelism: {default: [4, 4], layer_name: [8, 4]}.")
    ] = None,
    device: Annotated[str | None, typer.Option(
        help="Fold every layer to fit this FPGA (ice40-up5k, ice40-hx8k, ecp5-25k, "
             "ecp5-45k, ecp5-85k, nexus-lifcl-40): the fastest design whose estimate "
             "fits.")] = None,
    budget: Annotated[str | None, typer.Option(
        help="Fold to explicit resources instead: lut=N,ff=N,dsp=N,bram=N.")] = None,
    target_cycles: Annotated[int | None, typer.Option(
        help="With --device/--budget: the cheapest folding whose slowest layer takes at "
             "most N cycles per inference.")] = None,
    uniform: Annotated[bool, typer.Option(
        "--uniform", help="With --device/--budget: one P for every stream (to compare; a "
                          "graph is otherwise folded slowest layer first).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Emit SystemVerilog for an integer program, with ROM files and a cocotb testbench:
    MLPs and CNNs, including residual adds, depthwise and grouped convs, average, global
    and padded max pools (a graph of streaming units; forks get skip FIFOs). What it
    cannot build is named all at once.

    Example:  kiln emit-rtl out/jsc-int8 --parallelism 4x4 --out out/jsc-rtl

    Example:  kiln emit-rtl out/convnet-int8 --device ecp5-25k --out out/convnet-25k

    Example:  kiln emit-rtl out/resnet8-int8 --device ecp5-85k --out out/resnet8-85k
    """
    from kiln.errors import ConfigError
    from kiln.integer import IntegerProgram
    from kiln.rtl import emit

    check_out_folder(out)
    if target_cycles is not None and target_cycles < 1:
        raise ConfigError(f"--target-cycles must be positive, got {target_cycles}")
    if (target_cycles is not None or uniform) and device is None and budget is None:
        raise ConfigError("--target-cycles and --uniform fold to a --device or --budget")
    if device is not None and budget is not None:
        raise ConfigError("give --device or --budget, not both")
    program = IntegerProgram.load(program_dir)
    choice: object = parallelism
    folding = None
    if device is not None or budget is not None:
        from kiln.rtl.folding import Budget, fold

        limits = Budget.of_device(device) if device else Budget.parse(budget or "")
        folding = fold(program, budget=limits, target_cycles=target_cycles, uniform=uniform)
        choice = folding.parallelism()
    elif config is not None:
        from kiln.strict_yaml import load_yaml_file

        if not config.is_file():
            raise ConfigError(f"{config}: no such parallelism config")
        choice = {k: tuple(v) for k, v in (load_yaml_file(config) or {}).items()}
    design = emit(program, choice, out, rom_layout=folding.rom_layout if folding else "banked")
    timing: dict[str, float | int | str] = {}
    if folding is not None:
        from kiln.rtl.resource_model import family_of
        from kiln.rtl.timing import DEFAULT_SPEED, predicted_fmax_mhz

        family = family_of(folding.budget)
        fmax = predicted_fmax_mhz(design.layers, family, rounding=design.rounding)
        timing = {"predicted_fmax_mhz": fmax, "family": family,
                  "speed_grade": DEFAULT_SPEED[family],
                  "predicted_inferences_per_second": fmax * 1e6 / max(folding.cycles, 1)}
        (out / "folding.json").write_text(json.dumps({**folding.as_dict(), **timing},
                                                     indent=2) + "\n")
    if as_json:
        extra = {"folding": {**folding.as_dict(), **timing}} if folding is not None else {}
        print_json({"design": str(out), **design.as_dict(), **extra})
        return
    if folding is not None:
        units = {layer.name: layer.unit_name for layer in design.layers}
        rows = [[layer.name, units[layer.name], f"{layer.p_in}x{layer.p_out}",
                 f"{layer.cycles:,}",
                 *(f"{layer.estimate[r]:,.0f}" for r in ("lut", "ff", "dsp", "bram"))]
                for layer in folding.layers]
        total = folding.estimate
        rows.append(["total", "", "", f"{folding.cycles:,} (slowest)",
                     *(f"{total[r]:,.0f} / {getattr(folding.budget, r):,}"
                       for r in ("lut", "ff", "dsp", "bram"))])
        console.print(table(f"{program.name} folded for {folding.budget.name} → {out}",
                            ["layer", "kind", "P_in x P_out", "cycles/inference",
                             "LUT (est.)", "FF (est.)", "DSP (est.)", "BRAM (est.)"], rows,
                            right_align={"cycles/inference", "LUT (est.)", "FF (est.)",
                                         "DSP (est.)", "BRAM (est.)"}))
        for note in folding.notes:
            console.print(f"note: {note}")
        console.print(f"predicted clock {timing['predicted_fmax_mhz']:g} MHz (kiln's timing "
                      f"model, speed grade {timing['speed_grade']} on "
                      f"{str(timing['family']).upper()}): "
                      f"{timing['predicted_inferences_per_second']:,.0f} inferences/s; "
                      f"'kiln synth {out} --target {folding.budget.name} --pnr' measures it")
        return
    rows = [[layer.name, f"{layer.in_n}->{layer.out_n}", f"{layer.p_in}x{layer.p_out}",
             layer.compute_cycles] for layer in design.layers]
    console.print(table(f"{program.name} → {out}", ["layer", "shape", "parallelism",
                                                    "compute cycles / vector"], rows))


def simulate(
    design_dir: Annotated[Path, typer.Argument(help="A folder written by 'kiln emit-rtl'.")],
    simulator: Annotated[str, typer.Option(help="verilator or icarus.")] = "verilator",
    vectors: Annotated[int, typer.Option(help="Test-set inputs to stream through.")] = 100,
    jobs: Annotated[int, typer.Option(
        help="Simulator processes, each on a consecutive share of the inputs.")] = 1,
    waves: Annotated[bool, typer.Option(
        "--waves", help="Record every signal (Verilator: VCD, Icarus: FST) in the "
                        "simulator's build folder, to open where a mismatch names the cycle.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Simulate a design with cocotb: every layer's outputs checked against the engine,
    with random input gaps and output backpressure; cycle counts at full rate.

    Example:  kiln simulate out/jsc-rtl --simulator icarus --vectors 1000 --jobs 2
    Example:  kiln simulate out/jsc-rtl --vectors 10 --waves    # then open dump.vcd
    """
    from kiln.rtl import simulate as run_simulation

    result = run_simulation(design_dir, simulator=simulator, vectors=vectors, jobs=jobs,
                            waves=waves)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(table(f"{design_dir} on {simulator}: {result.vectors} vectors bit-exact",
                        ["measure", "value"], [
                            ["cycles per inference (full rate)",
                             f"{result.cycles_per_inference:.1f}"],
                            ["ideal (slowest layer's blocks)", result.ideal_cycles],
                            ["utilization", f"{result.utilization:.3f}"],
                            ["latency (cycles)", result.latency_cycles],
                            ["build / run seconds",
                             f"{result.build_seconds:.1f} / {result.run_seconds:.1f}"],
                            ["simulator processes", result.extra.get("jobs", 1)],
                            *[["waveform", path] for path in result.extra.get("waves", [])]],
                        right_align={"value"}))


def synth(
    design_dir: Annotated[Path, typer.Argument(help="A folder written by 'kiln emit-rtl'.")],
    target: Annotated[str, typer.Option(
        help="generic, ice40 or xilinx (Yosys figures), or an FPGA to fit: ice40-up5k, "
             "ice40-hx8k, ecp5-25k, ecp5-45k, ecp5-85k, nexus-lifcl-40 (CrossLink-NX).")
    ] = "generic",
    pnr: Annotated[bool, typer.Option(
        "--pnr", help="Also place and route on the FPGA (nextpnr): Fmax and inferences/s.")
    ] = False,
    clock_mhz: Annotated[float | None, typer.Option(
        help="Clock constraint for place and route, MHz. Given, a clock the design misses "
             "exits 2. Left out, kiln targets the clock its timing model predicts for the "
             "design and a miss is only a warning (the achieved Fmax is reported either "
             "way).")] = None,
    seed: Annotated[int, typer.Option(help="nextpnr's (first) placement seed.")] = 1,
    seeds: Annotated[int, typer.Option(
        help="Place and route with this many seeds (seed, seed+1, ...; two at a time) and "
             "keep the fastest; every seed's Fmax is reported.")] = 1,
    speed: Annotated[int | None, typer.Option(
        help="Speed grade: ECP5 6 (nextpnr's default, the slowest), 7 or 8; Nexus 7.")
    ] = None,
    seed_timeout: Annotated[float | None, typer.Option(
        help="Stop a placement seed that runs longer than this many seconds (one can get "
             "stuck in routing); the other seeds count. Default: 7200.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Yosys resource figures of a design (LUTs, flip-flops, DSPs / multipliers), or its
    fit on an FPGA and, with --pnr, place and route: resources against the device's,
    the achieved Fmax and inferences per second.

    Example:  kiln synth out/jsc-rtl --target ice40
    Example:  kiln synth out/jsc-rtl --target ecp5-25k --pnr --seeds 3
    Example:  kiln synth out/jsc-rtl --target ecp5-25k --pnr --clock-mhz 100 --speed 8
    """
    from kiln.rtl.fpga import DEVICES

    if target in DEVICES:
        _fit(design_dir, target, pnr, clock_mhz, seed, seeds, speed, seed_timeout, as_json)
        return
    if pnr:
        from kiln.errors import ConfigError

        raise ConfigError(f"--pnr needs an FPGA target ({', '.join(DEVICES)}), got '{target}'")
    from kiln.rtl import synthesize

    result = synthesize(design_dir, target=target)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(table(f"{design_dir}: {target}", ["cells", "LUTs", "flip-flops", "DSPs",
                                                     "multipliers (word-level)", "seconds"],
                        [[result.cells, result.luts, result.flip_flops, result.dsps,
                          result.multipliers, f"{result.seconds:.0f}"]]))


def _fit(design_dir: Path, target: str, pnr: bool, clock_mhz: float | None, seed: int,
         seeds: int, speed: int | None, seed_timeout: float | None, as_json: bool) -> None:
    from kiln.rtl import Design
    from kiln.rtl.fpga import (
        RESOURCE_NAMES,
        TimingNotMetError,
        device,
        place_and_route,
        synthesize_for_device,
    )

    dev = device(target)
    if not pnr:
        design = Design.load(design_dir)
        _, used, dsp, seconds = synthesize_for_device(design, dev)
        capacity = dev.capacity()
        if as_json:
            print_json({"device": dev.name, "estimate": used, "available": capacity,
                        "dsp_mapping": dsp, "seconds": seconds})
            return
        console.print(table(f"{design_dir} on {dev.name} (Yosys estimate; --pnr for nextpnr's)",
                            ["resource", "used", "available", "fits"],
                            [[RESOURCE_NAMES[k], used[k], capacity[k],
                              "yes" if used[k] <= capacity[k] else "NO"] for k in capacity],
                            right_align={"used", "available"}))
        return
    with console.status(f"synthesizing, placing and routing on {dev.name} ..."):
        result = place_and_route(design_dir, target, clock_mhz=clock_mhz, seed=seed,
                                 seeds=seeds, speed=speed, seed_timeout=seed_timeout)
    if as_json:
        print_json(result.as_dict())
    else:
        rows = [[RESOURCE_NAMES[k], result.used[k], result.available[k],
                 f"{result.used[k] / max(result.available[k], 1):.1%}"] for k in result.used]
        console.print(table(f"{design_dir} placed and routed on {dev.name}",
                            ["resource", "used", "available", "utilization"], rows,
                            right_align={"used", "available", "utilization"}))
        console.print(table("timing and throughput", ["measure", "value"], [
            ["clock constraint (MHz)", f"{result.clock_mhz:g}"
             + ("" if clock_mhz is not None else " (predicted by kiln's timing model)")],
            ["achieved Fmax (MHz)", f"{result.fmax_mhz:.2f} (seed {result.extra['seed']}, "
             f"speed grade {result.extra['speed']})"],
            *([["Fmax per seed (MHz)", ", ".join(f"{s}: {f:.2f}" for s, f in
                                                 result.extra["seeds"].items())]]
              if len(result.extra["seeds"]) > 1 else []),
            *([["seeds stopped (past --seed-timeout)",
                ", ".join(map(str, result.extra["timed_out"]))]]
              if result.extra["timed_out"] else []),
            ["critical path", _path_text(result.extra["critical_path"])],
            ["cycles per inference", f"{result.cycles_per_inference:g}"],
            ["inferences per second at Fmax", f"{result.inferences_per_second:,.0f}"],
            ["multipliers in DSPs", "yes" if result.dsp_mapping else "no (too many)"],
            ["synthesis / place and route seconds",
             f"{result.synth_seconds:.0f} / {result.pnr_seconds:.0f}"]],
            right_align={"value"}))
    if not result.timing_met:
        message = (f"{design_dir} on {dev.name}: the {result.clock_mhz:g} MHz clock is not "
                   f"met, the design reaches {result.fmax_mhz:.2f} MHz")
        if clock_mhz is not None:  # the user asked for that clock
            raise TimingNotMetError(message, hint=f"report kept: {result.report_path}")
        error_console.print(f"[yellow]warning:[/yellow] {message} (kiln's predicted clock; the "
                      f"figures above are at the achieved Fmax; report: {result.report_path})",
                      highlight=False)


def _path_text(path: dict) -> str:
    if not path:
        return "not reported"
    units = " -> ".join(path["through"])
    lines = ", ".join(path.get("source_lines", [])[:6])
    return (f"{units} ({path['logic_ns']:.1f} ns logic, {path['routing_ns']:.1f} ns routing)"
            + (f"; {lines}" if lines else ""))


def register(app: typer.Typer) -> None:
    app.command("emit-rtl")(emit_rtl)
    app.command()(simulate)
    app.command()(synth)
