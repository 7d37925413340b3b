// kiln_mul: a registered signed multiplier, p = a * b two cycles after a and b arrive (a
// register on the operands, one on the product).
//
// Placed and routed on an ECP5 (kiln's Yosys script defines KILN_ECP5_DSP), it is one
// MULT18X18D with both registers inside the DSP block. With the registers in the fabric
// instead, the placer puts them beside the adders they feed, often tens of columns from
// the DSP row, and the routing to the DSP and back lands in the multiplier's cycle (the
// 85K convnet: 2.95 ns in + 3.93 ns multiply + 3.33 ns out = 93 MHz). Everywhere else
// (simulation, other families, operands wider than the DSP's 18 bits) the same two
// registers are written behaviourally and Yosys maps the product as it sees fit.
module kiln_mul #(
    parameter int A_BITS = 18,
    parameter int B_BITS = 18
) (
    input  logic clk,
    input  logic signed [A_BITS-1:0] a,
    input  logic signed [B_BITS-1:0] b,
    output logic signed [A_BITS+B_BITS-1:0] p
);
    localparam int P_BITS = A_BITS + B_BITS;
`ifdef KILN_ECP5_DSP
    localparam bit IN_DSP = A_BITS <= 18 && B_BITS <= 18;
`else
    localparam bit IN_DSP = 0;
`endif
    generate
        if (IN_DSP) begin : g_dsp
`ifdef KILN_ECP5_DSP
            logic [17:0] a_wide, b_wide;
            logic [35:0] p_wide;
            assign a_wide = 18'(a);  // sign-extended: a and b are signed
            assign b_wide = 18'(b);
            MULT18X18D #(
                .REG_INPUTA_CLK("CLK0"), .REG_INPUTB_CLK("CLK0"),
                .REG_PIPELINE_CLK("NONE"), .REG_OUTPUT_CLK("CLK0"),
                .GSR("DISABLED"), .RESETMODE("SYNC")
            ) u_dsp (
                .A17(a_wide[17]), .A16(a_wide[16]), .A15(a_wide[15]), .A14(a_wide[14]),
                .A13(a_wide[13]), .A12(a_wide[12]), .A11(a_wide[11]), .A10(a_wide[10]),
                .A9(a_wide[9]), .A8(a_wide[8]), .A7(a_wide[7]), .A6(a_wide[6]),
                .A5(a_wide[5]), .A4(a_wide[4]), .A3(a_wide[3]), .A2(a_wide[2]),
                .A1(a_wide[1]), .A0(a_wide[0]),
                .B17(b_wide[17]), .B16(b_wide[16]), .B15(b_wide[15]), .B14(b_wide[14]),
                .B13(b_wide[13]), .B12(b_wide[12]), .B11(b_wide[11]), .B10(b_wide[10]),
                .B9(b_wide[9]), .B8(b_wide[8]), .B7(b_wide[7]), .B6(b_wide[6]),
                .B5(b_wide[5]), .B4(b_wide[4]), .B3(b_wide[3]), .B2(b_wide[2]),
                .B1(b_wide[1]), .B0(b_wide[0]),
                .C17(1'b0), .C16(1'b0), .C15(1'b0), .C14(1'b0), .C13(1'b0), .C12(1'b0),
                .C11(1'b0), .C10(1'b0), .C9(1'b0), .C8(1'b0), .C7(1'b0), .C6(1'b0),
                .C5(1'b0), .C4(1'b0), .C3(1'b0), .C2(1'b0), .C1(1'b0), .C0(1'b0),
                .SIGNEDA(1'b1), .SIGNEDB(1'b1), .SOURCEA(1'b0), .SOURCEB(1'b0),
                .CLK0(clk), .CLK1(1'b0), .CLK2(1'b0), .CLK3(1'b0),
                .CE0(1'b1), .CE1(1'b0), .CE2(1'b0), .CE3(1'b0),
                .RST0(1'b0), .RST1(1'b0), .RST2(1'b0), .RST3(1'b0),
                .P35(p_wide[35]), .P34(p_wide[34]), .P33(p_wide[33]), .P32(p_wide[32]),
                .P31(p_wide[31]), .P30(p_wide[30]), .P29(p_wide[29]), .P28(p_wide[28]),
                .P27(p_wide[27]), .P26(p_wide[26]), .P25(p_wide[25]), .P24(p_wide[24]),
                .P23(p_wide[23]), .P22(p_wide[22]), .P21(p_wide[21]), .P20(p_wide[20]),
                .P19(p_wide[19]), .P18(p_wide[18]), .P17(p_wide[17]), .P16(p_wide[16]),
                .P15(p_wide[15]), .P14(p_wide[14]), .P13(p_wide[13]), .P12(p_wide[12]),
                .P11(p_wide[11]), .P10(p_wide[10]), .P9(p_wide[9]), .P8(p_wide[8]),
                .P7(p_wide[7]), .P6(p_wide[6]), .P5(p_wide[5]), .P4(p_wide[4]),
                .P3(p_wide[3]), .P2(p_wide[2]), .P1(p_wide[1]), .P0(p_wide[0])
            );
            assign p = p_wide[P_BITS-1:0];
`endif
        end else begin : g_fabric
            logic signed [A_BITS-1:0] a_held;
            logic signed [B_BITS-1:0] b_held;
            always_ff @(posedge clk) begin
                a_held <= a;
                b_held <= b;
                p <= P_BITS'(a_held) * P_BITS'(b_held);
            end
        end
    endgenerate
endmodule
