"""``kiln emit-rtl``, ``kiln simulate`` and ``kiln synth``: hardware generation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import check_out_folder, console, print_json, table


def emit_rtl(
    program_dir: Annotated[Path, typer.Argument(help="A directory written by 'kiln lower'.")],
    out: Annotated[Path, typer.Option(help="Folder for the design.")],
    parallelism: Annotated[str, typer.Option(
        help="P_in x P_out for every layer, e.g. 4x4.")] = "4x4",
    config: Annotated[Path | None, typer.Option(
        help="YAML/JSON of per-layer parallelism: {default: [4, 4], layer_name: [8, 4]}.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Emit SystemVerilog for an integer program (MLPs and small CNNs), with ROM files
    and a cocotb testbench.

    Example:  kiln emit-rtl out/jsc-int8 --parallelism 4x4 --out out/jsc-rtl
    """
    from kiln.errors import ConfigError
    from kiln.integer import IntegerProgram
    from kiln.rtl import emit

    check_out_folder(out)
    program = IntegerProgram.load(program_dir)
    choice: object = parallelism
    if config is not None:
        from kiln.strict_yaml import load_yaml_file

        if not config.is_file():
            raise ConfigError(f"{config}: no such parallelism config")
        choice = {k: tuple(v) for k, v in (load_yaml_file(config) or {}).items()}
    design = emit(program, choice, out)
    rows = [[layer.name, f"{layer.in_n}->{layer.out_n}", f"{layer.p_in}x{layer.p_out}",
             layer.compute_cycles] for layer in design.layers]
    if as_json:
        print_json({"design": str(out), **design.as_dict()})
        return
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
             "ice40-hx8k, ecp5-25k, ecp5-45k, ecp5-85k.")] = "generic",
    pnr: Annotated[bool, typer.Option(
        "--pnr", help="Also place and route on the FPGA (nextpnr): Fmax and inferences/s.")
    ] = False,
    clock_mhz: Annotated[float, typer.Option(
        help="Clock constraint for place and route, MHz.")] = 50.0,
    seed: Annotated[int, typer.Option(help="nextpnr's placement seed.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Yosys resource figures of a design (LUTs, flip-flops, DSPs / multipliers), or its
    fit on an FPGA and, with --pnr, place and route: resources against the device's,
    the achieved Fmax and inferences per second.

    Example:  kiln synth out/jsc-rtl --target ice40
    Example:  kiln synth out/jsc-rtl --target ecp5-25k --pnr --clock-mhz 50
    """
    from kiln.rtl.fpga import DEVICES

    if target in DEVICES:
        _fit(design_dir, target, pnr, clock_mhz, seed, as_json)
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


def _fit(design_dir: Path, target: str, pnr: bool, clock_mhz: float, seed: int,
         as_json: bool) -> None:
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
        result = place_and_route(design_dir, target, clock_mhz=clock_mhz, seed=seed)
    if as_json:
        print_json(result.as_dict())
    else:
        rows = [[RESOURCE_NAMES[k], result.used[k], result.available[k],
                 f"{result.used[k] / max(result.available[k], 1):.1%}"] for k in result.used]
        console.print(table(f"{design_dir} placed and routed on {dev.name}",
                            ["resource", "used", "available", "utilization"], rows,
                            right_align={"used", "available", "utilization"}))
        console.print(table("timing and throughput", ["measure", "value"], [
            ["clock constraint (MHz)", f"{result.clock_mhz:g}"],
            ["achieved Fmax (MHz)", f"{result.fmax_mhz:.2f}"],
            ["cycles per inference", f"{result.cycles_per_inference:g}"],
            ["inferences per second at Fmax", f"{result.inferences_per_second:,.0f}"],
            ["multipliers in DSPs", "yes" if result.dsp_mapping else "no (too many)"],
            ["synthesis / place and route seconds",
             f"{result.synth_seconds:.0f} / {result.pnr_seconds:.0f}"]],
            right_align={"value"}))
    if not result.timing_met:
        raise TimingNotMetError(
            f"{design_dir} on {dev.name}: the {clock_mhz:g} MHz clock is not met, the design "
            f"reaches {result.fmax_mhz:.2f} MHz", hint=f"report kept: {result.report_path}")


def register(app: typer.Typer) -> None:
    app.command("emit-rtl")(emit_rtl)
    app.command()(simulate)
    app.command()(synth)
