"""kiln's timing model (predicted clock per unit) and the reading of nextpnr's report."""

from __future__ import annotations

from kiln.rtl.emit import Layer
from kiln.rtl.fpga import critical_path
from kiln.rtl.timing import UNIT_FMAX_MHZ, predicted_fmax_mhz, unit_kind

LOG = """\
Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source u_top.layer_2.g_requant[0].u_requant.tile_TRELLIS_FF_Q.Q
Info:    routing  1.20  1.72 Net u_top.layer_2.tile[3] (1,2) -> (3,4)
Info:                          Sink u_top.layer_2.g_requant[0].u_requant.sum_CCU2C.A0
Info:                          Defined in:
Info:                               kiln_requant.sv:171.40-171.52
Info:      logic  0.45  2.17 Source u_top.layer_2.g_requant[0].u_requant.sum_CCU2C.S0
Info:    routing  0.80  2.97 Net u_top.layer_3.x_read[1] (3,4) -> (5,6)
Info:                          Sink u_top.layer_3.x_read_TRELLIS_FF_Q.DI
Info:                          Defined in:
Info:                               kiln_dense.sv:127.5-127.20
Info:      setup  0.10  3.07 Source u_top.layer_3.x_read_TRELLIS_FF_Q.DI
Info: 3.07 ns logic, ...
Info: Critical path report for cross-domain path '<async>' -> 'posedge $glbnet$clk':
Info:     source  0.00  0.00 Source rst_n$tr_io.O
"""


def _layer(**fields) -> Layer:
    base = dict(name="l", in_n=16, out_n=16, p_in=4, p_out=4, in_bits=8, in_signed=False,
                in_zero=0, out_bits=8, out_zero=0, lo=0, hi=255, weight_bits=8, macs=256)
    return Layer(**{**base, **fields})


def test_critical_path_names_units_lines_and_delays():
    path = critical_path(LOG)
    assert path["from"] == "layer_2 (g_requant)" and path["to"] == "layer_3"
    assert path["source_lines"] == ["kiln_requant.sv:171", "kiln_dense.sv:127"]
    assert path["logic_ns"] == 0.52 + 0.45 + 0.10 and path["routing_ns"] == 1.20 + 0.80
    assert critical_path("Info: nothing placed\n") == {}


def test_the_slowest_unit_sets_the_predicted_clock():
    table = UNIT_FMAX_MHZ[("ecp5", 6)]
    narrow = _layer(acc_bits=18, m_bits=17, passes=1)
    shared = _layer(acc_bits=22, m_bits=26, passes=4)
    wide = _layer(acc_bits=22, m_bits=26, passes=1)
    assert [unit_kind(x) for x in (narrow, shared, wide)] == ["dense"] * 3
    assert predicted_fmax_mhz([narrow, shared, wide], "ecp5") == table["dense"]
    # a weight ROM deeper than 4 block RAMs, left in one piece
    deep = _layer(in_n=4096, out_n=64, p_in=1, p_out=1, wc_bits=8, w_banks=1)
    assert unit_kind(deep) == "deep_rom" and unit_kind(_layer(**{**deep.__dict__,
                                                                 "w_banks": 64})) == "dense"
    assert predicted_fmax_mhz([narrow, deep], "ecp5") == table["deep_rom"]
    assert predicted_fmax_mhz([narrow], "ecp5", rounding="float32") == table["float32_requant"]
    conv = _layer(kind="conv", acc_bits=18, m_bits=17)
    assert predicted_fmax_mhz([conv], "ecp5") == min(table["dense"], table["im2col"])
    assert predicted_fmax_mhz([narrow], "ecp5", 8) > predicted_fmax_mhz([narrow], "ecp5", 6)
    # more than 64 DSP tiles spread over the device: routing-bound
    big = _layer(p_in=8, p_out=8, in_n=64, out_n=64, acc_bits=18, m_bits=17)
    assert predicted_fmax_mhz([big], "ecp5") == table["many_dsps"] < table["dense"]
