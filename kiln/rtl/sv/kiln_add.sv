// kiln_add: a residual add of two streams, elementwise, as kiln's engine does it:
//   y = clamp(((a - A_ZERO) * MA << SHIFT_A) + ((b - B_ZERO) * MB << SHIFT_B) + round)
//             >>> COMMON) + OUT_ZERO, LO, HI)
// i.e. both inputs brought to a common fixed-point exponent (COMMON = 31 + the larger of
// the two shifts), summed exactly, rounded once (round = 2^(COMMON-1) when ROUND_NEAREST,
// round half up; 0 for floor). MA, MB and the shifts are constants of the layer, so each
// product is a multiplier by a constant with its output registered; the emitter narrows
// them (kiln.rtl.requant.narrow_add: the same output for every input pair, checked over
// all of them) so that a product fits one 18x18 DSP tile where it can.
//
// A beat of P lanes is taken when both inputs are valid (a join) and the output FIFO will
// have room for it (credit): the pipeline behind it never stalls. With SERIAL > 1 a beat's
// lanes take SERIAL turns through ceil(P / SERIAL) lanes of arithmetic. Stages: the beat,
// the turn's lanes, the centred lanes, the products' DSP tiles, the products, their sum,
// the rounding and shift (to Y_BITS, which the emitter proves hold every sum), the clamp
// (compares against constants, beside the narrow add of the zero point), the beat
// reassembled: 10 cycles to the FIFO.
module kiln_add #(
    parameter int P = 4,
    parameter int A_BITS = 8,
    parameter bit A_SIGNED = 0,
    parameter int A_ZERO = 0,
    parameter int B_BITS = 8,
    parameter bit B_SIGNED = 0,
    parameter int B_ZERO = 0,
    parameter int MA = 1 << 30,     // the multipliers, unsigned, M_BITS wide (the emitter
    parameter int MB = 1 << 30,     // narrows the engine's Q31 ones where that is exact)
    parameter int M_BITS = 31,
    parameter int SHIFT_A = 0,      // COMMON minus each input's own exponent
    parameter int SHIFT_B = 0,
    parameter int COMMON = 31,
    parameter int SUM_BITS = 64,    // the sum, signed (the emitter's bound)
    parameter int Y_BITS = 16,      // the shifted sum, signed (the emitter's bound)
    parameter bit ROUND_NEAREST = 1,
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter int SERIAL = 1        // cycles per beat (lanes in turns of ceil(P / SERIAL))
) (
    input  logic clk,
    input  logic rst_n,
    input  logic a_valid,
    output logic a_ready,
    input  logic [P*A_BITS-1:0] a_data,
    input  logic b_valid,
    output logic b_ready,
    input  logic [P*B_BITS-1:0] b_data,
    output logic out_valid,
    input  logic out_ready,
    output logic [P*OUT_BITS-1:0] out_data
);
    localparam int XA = A_BITS + 2;            // a - A_ZERO, signed
    localparam int XB = B_BITS + 2;
    localparam int PA = XA + M_BITS + 1;       // (a - A_ZERO) * MA, signed
    localparam int PB = XB + M_BITS + 1;
    localparam int LATENCY = 7;  // from the turn's lanes to the clamp
    localparam int FIFO_BITS = $clog2(LATENCY + 6);  // every beat in flight
    localparam int FIFO_DEPTH = 1 << FIFO_BITS;
    localparam longint LOW = longint'(LO) - longint'(OUT_ZERO);
    localparam longint HIGH = longint'(HI) - longint'(OUT_ZERO);
    localparam logic [SUM_BITS-1:0] ROUND = ROUND_NEAREST ? SUM_BITS'(1) << (COMMON - 1) : '0;

    // The join: a beat from each input when the FIFO will have room for it (credit) and the
    // previous beat has had its turns. SERIAL > 1 time-shares the arithmetic: a beat's P
    // lanes go through it L = ceil(P / SERIAL) at a time, one group a cycle (the add is
    // rarely the slowest unit: its DSPs go to the MACs).
    localparam int L = (P + SERIAL - 1) / SERIAL;   // lanes per turn
    localparam int TB = SERIAL > 1 ? $clog2(SERIAL) : 1;
    logic take, busy, last_turn;
    logic [TB-1:0] turn;
    logic [FIFO_BITS:0] credit_used;
    assign last_turn = turn == TB'(SERIAL - 1);
    assign take = a_valid && b_valid && credit_used != (FIFO_BITS + 1)'(FIFO_DEPTH)
                  && (!busy || last_turn);
    assign a_ready = take;
    assign b_ready = take;

    logic [P*A_BITS-1:0] a_beat;
    logic [P*B_BITS-1:0] b_beat;
    always_ff @(posedge clk) begin
        if (take) begin
            a_beat <= a_data;
            b_beat <= b_data;
        end
    end

    // Stage k's group: valid, turn, last turn (stage 0: the group selected this cycle).
    localparam int CB = TB + 2;
    logic [LATENCY*CB-1:0] ctrl;
    // The group of this turn, selected with constant part-selects (lanes past P are 0).
    logic [L*A_BITS-1:0] a_held;
    logic [L*B_BITS-1:0] b_held;
    always_ff @(posedge clk) begin
        for (int l = 0; l < L; l++) begin
            a_held[l*A_BITS +: A_BITS] <= l < P ? a_beat[l*A_BITS +: A_BITS] : '0;
            b_held[l*B_BITS +: B_BITS] <= l < P ? b_beat[l*B_BITS +: B_BITS] : '0;
            for (int k = 1; k < SERIAL; k++)
                if (turn == TB'(k) && k*L + l < P) begin
                    a_held[l*A_BITS +: A_BITS] <= a_beat[(k*L + l)*A_BITS +: A_BITS];
                    b_held[l*B_BITS +: B_BITS] <= b_beat[(k*L + l)*B_BITS +: B_BITS];
                end
        end
    end

    // Each product in one 18x18 DSP tile, registered straight out of it: a multiplier of
    // more than TILE bits is split into its high and low parts (a tile each), summed in
    // the next stage (Yosys would otherwise add the tiles' outputs in logic before the
    // register: on ResNet-8 that was the design's slowest path, 82 MHz).
    localparam int TILE = 17;                     // unsigned multiplier bits in one tile
    localparam bit SPLIT = M_BITS > TILE;
    localparam int MA_LO = SPLIT ? MA % (1 << TILE) : MA;
    localparam int MB_LO = SPLIT ? MB % (1 << TILE) : MB;
    localparam int MA_HI = SPLIT ? MA / (1 << TILE) : 0;
    localparam int MB_HI = SPLIT ? MB / (1 << TILE) : 0;
    localparam int TA = XA + TILE + 1;            // one tile's product, signed
    localparam int TBW = XB + TILE + 1;
    logic [L*XA-1:0] a_centred;
    logic [L*XB-1:0] b_centred;
    logic [L*TA-1:0] a_low, a_high;
    logic [L*TBW-1:0] b_low, b_high;
    logic [L*PA-1:0] a_product;
    logic [L*PB-1:0] b_product;
    logic [L*SUM_BITS-1:0] sum;
    logic [L*Y_BITS-1:0] shifted;
    logic [L*OUT_BITS-1:0] part;
    always_ff @(posedge clk) begin
        for (int p = 0; p < L; p++) begin
            if (A_SIGNED)
                a_centred[p*XA +: XA] <= XA'($signed(a_held[p*A_BITS +: A_BITS])) - XA'(A_ZERO);
            else
                a_centred[p*XA +: XA] <= $signed(XA'({1'b0, a_held[p*A_BITS +: A_BITS]}))
                                         - XA'(A_ZERO);
            if (B_SIGNED)
                b_centred[p*XB +: XB] <= XB'($signed(b_held[p*B_BITS +: B_BITS])) - XB'(B_ZERO);
            else
                b_centred[p*XB +: XB] <= $signed(XB'({1'b0, b_held[p*B_BITS +: B_BITS]}))
                                         - XB'(B_ZERO);
            a_low[p*TA +: TA] <= TA'($signed(a_centred[p*XA +: XA])) * TA'(MA_LO);
            b_low[p*TBW +: TBW] <= TBW'($signed(b_centred[p*XB +: XB])) * TBW'(MB_LO);
            a_high[p*TA +: TA] <= SPLIT ? TA'($signed(a_centred[p*XA +: XA])) * TA'(MA_HI) : '0;
            b_high[p*TBW +: TBW] <= SPLIT ? TBW'($signed(b_centred[p*XB +: XB])) * TBW'(MB_HI)
                                          : '0;
            a_product[p*PA +: PA] <= (PA'($signed(a_high[p*TA +: TA])) <<< TILE)
                                     + PA'($signed(a_low[p*TA +: TA]));
            b_product[p*PB +: PB] <= (PB'($signed(b_high[p*TBW +: TBW])) <<< TILE)
                                     + PB'($signed(b_low[p*TBW +: TBW]));
            sum[p*SUM_BITS +: SUM_BITS] <=
                (SUM_BITS'($signed(a_product[p*PA +: PA])) <<< SHIFT_A)
                + (SUM_BITS'($signed(b_product[p*PB +: PB])) <<< SHIFT_B);
            // the rounding term, then the shift (wiring)
            shifted[p*Y_BITS +: Y_BITS] <=
                Y_BITS'($signed(sum[p*SUM_BITS +: SUM_BITS] + ROUND) >>> COMMON);
            if (64'($signed(shifted[p*Y_BITS +: Y_BITS])) < LOW)
                part[p*OUT_BITS +: OUT_BITS] <= OUT_BITS'(LO);
            else if (64'($signed(shifted[p*Y_BITS +: Y_BITS])) > HIGH)
                part[p*OUT_BITS +: OUT_BITS] <= OUT_BITS'(HI);
            else
                part[p*OUT_BITS +: OUT_BITS] <=
                    OUT_BITS'(shifted[p*Y_BITS +: Y_BITS]) + OUT_BITS'(OUT_ZERO);
        end
    end
    // The groups back into a beat: group k's lanes at k*L (constant part-selects).
    logic out_group_valid, out_group_last;
    logic [TB-1:0] out_group;
    assign {out_group_valid, out_group, out_group_last} = ctrl[(LATENCY-1)*CB +: CB];
    logic [P*OUT_BITS-1:0] result;
    logic push;
    always_ff @(posedge clk) begin
        if (out_group_valid)
            for (int q = 0; q < P; q++)
                if (out_group == TB'(q / L))
                    result[q*OUT_BITS +: OUT_BITS] <= part[(q % L)*OUT_BITS +: OUT_BITS];
    end

    logic pop;
    assign pop = out_valid && out_ready;
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            busy <= 1'b0;
            turn <= '0;
            ctrl <= '0;
            push <= 1'b0;
            credit_used <= '0;
        end else begin
            if (take) begin
                busy <= 1'b1;
                turn <= '0;
            end else if (busy) begin
                busy <= !last_turn;
                turn <= last_turn ? '0 : turn + 1'b1;
            end
            ctrl <= {ctrl[(LATENCY-1)*CB-1:0], busy, turn, busy && last_turn};
            push <= out_group_valid && out_group_last;
            credit_used <= credit_used + (FIFO_BITS + 1)'(take) - (FIFO_BITS + 1)'(pop);
        end
    end
    kiln_fifo #(.WIDTH(P*OUT_BITS), .DEPTH(FIFO_DEPTH)) u_out (
        .clk(clk), .rst_n(rst_n), .push(push), .push_data(result),
        .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data));
endmodule
