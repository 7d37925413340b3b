// kiln_dense: a fully-connected layer y = requant(W (x - IN_ZERO) + b), streamed and pipelined.
//
// The input vector (IN_N elements) arrives in IN_BEATS = ceil(IN_N / P_IN) beats of P_IN
// elements; the output (OUT_N elements) leaves in OUT_BEATS beats of P_OUT elements.
// P_IN x P_OUT multipliers, P_OUT balanced adder trees of depth ceil(log2 P_IN) and
// P_OUT accumulators compute one [P_OUT x P_IN] weight block per cycle, so a vector
// takes IN_BEATS * OUT_BEATS compute cycles. Two input buffers let the next vector load
// while this one computes.
// DIAGONAL = 1 is a per-channel unit, lane p of a beat meeting only its own weights (no
// adder tree): P_IN = P_OUT = P, P products a block. With TAPS = 1 it is an affine map
// y_c = requant(w_c (x_c - IN_ZERO) + b_c) (a BatchNorm; IN_N = OUT_N, one block a beat);
// with TAPS > 1 a depthwise convolution (or an average pool, all weights 1) behind an
// im2col: the window vector holds TAPS kernel positions of OUT_BEATS channel beats, in
// that order, and output beat j sums the TAPS words j, j + OUT_BEATS, j + 2 OUT_BEATS, ...
// times its weights (the weight ROM one word of P weights per beat and tap).
//
// Every block goes down a pipeline that never stalls (only the issue of blocks does):
//   issue: the block counters address the input buffer and the weight ROM (block RAM)
//   read:  the memories' outputs, their own registers, the weight banks' multiplexer (and,
//          for a packed weight ROM, the word's multiplexer within its row)
//   centre: x - IN_ZERO (the weights are stored centred on their zero point, WC_BITS wide)
//   product: one registered product per multiplier (a DSP with its output register)
//   tree:  the adder tree, a register after every level
//   acc:   the accumulator (the bias enters with the first block of an output beat)
// then the accumulated beat is captured and REQUANTS pipelined requantizers
// (kiln_requant) take its P_OUT lanes in SERIAL = ceil(P_OUT / REQUANTS) turns of PASSES
// cycles into the output FIFO. Flow control is by credit: a beat's last block is issued only
// when the FIFO will have room for it behind every beat already in flight, and at least
// SERIAL * PASSES cycles after the previous beat's (the requantizers' turn), so nothing
// downstream of the issue ever waits. With SERIAL * PASSES <= IN_BEATS they keep up.
// Weights, biases and requantization parameters come from ROMs read with $readmemh
// (one word per block: lane 0 in the least significant bits), read synchronously so that
// they can live in block RAM. Valid/ready on both sides.
module kiln_dense #(
    parameter int IN_N = 16,
    parameter int OUT_N = 16,
    parameter int P_IN = 4,
    parameter int P_OUT = 4,
    parameter int IN_BITS = 8,
    parameter bit IN_SIGNED = 0,
    parameter int IN_ZERO = 0,
    parameter int WC_BITS = 9,     // a weight minus its zero point, signed
    parameter int ACC_BITS = 32,   // holds every partial sum the layer can produce
    parameter int M_BITS = 31,     // the requantization multiplier, unsigned
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter bit ROUND_NEAREST = 1,
    parameter bit FLOAT32 = 0,
    parameter bit DIAGONAL = 0,      // a per-channel unit (see above)
    parameter int TAPS = 1,          // a diagonal unit's words per output beat
    parameter int REQUANTS = P_OUT,  // requantizers, shared by the P_OUT lanes in turn
    parameter int PASSES = 1,        // cycles per lane in a requantizer (kiln_requant)
    parameter int W_BANKS = 1,      // the weight ROM in banks of 2^W_BANK_BITS rows, each
    parameter int W_BANK_BITS = 1,  // one block RAM deep: files W_FILE.000, W_FILE.001, ...
    parameter int W_PACK = 1,       // weight words per ROM row: > 1 packs them so that a row
                                    // fills whole 36-bit block RAM columns (no parity bit
                                    // left empty), at one more read stage
    parameter W_FILE = "weights.mem",
    parameter B_FILE = "bias.mem",
    parameter M_FILE = "m0.mem",
    parameter S_FILE = "shift.mem"
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic [P_IN*IN_BITS-1:0] in_data,
    output logic out_valid,
    input  logic out_ready,
    output logic [P_OUT*OUT_BITS-1:0] out_data
);
    localparam int IN_BEATS = (IN_N + P_IN - 1) / P_IN;
    localparam int OUT_BEATS = (OUT_N + P_OUT - 1) / P_OUT;
    localparam int LEVELS = DIAGONAL ? 0 : $clog2(P_IN);
    localparam int LEAVES = 1 << LEVELS;
    localparam int TREE_STAGES = LEVELS;   // a register after every level
    localparam int XB = IN_BITS + 2;               // x - zero point, signed
    localparam int PB = XB + WC_BITS;              // one product
    localparam int IB = IN_BEATS > 1 ? $clog2(IN_BEATS) : 1;
    localparam int OB = OUT_BEATS > 1 ? $clog2(OUT_BEATS) : 1;
    localparam int W_WORDS = DIAGONAL ? OUT_BEATS * TAPS : IN_BEATS * OUT_BEATS;  // blocks
    localparam int BLOCKS = DIAGONAL ? TAPS : IN_BEATS;  // blocks an output beat sums
    localparam int TB_BITS = BLOCKS > 1 ? $clog2(BLOCKS) : 1;
    localparam int WA = W_WORDS > 1 ? $clog2(W_WORDS) : 1;
    localparam int SERIAL = (P_OUT + REQUANTS - 1) / REQUANTS;
    localparam int SB = SERIAL > 1 ? $clog2(SERIAL) : 1;
    localparam int REQUANT_LATENCY = PASSES > 1 ? PASSES + 6 : 7;  // kiln_requant's
    localparam int TURN = SERIAL * PASSES;         // cycles the requantizers take per beat
    localparam int PSB = PASSES > 1 ? $clog2(PASSES) : 1;
    // The weight ROM: W_WORDS words of WW bits, in rows of W_PACK words.
    localparam int W_LANES = DIAGONAL ? P_OUT : P_IN*P_OUT;
    localparam int WW = W_LANES*WC_BITS;
    localparam int W_ROWS = (W_WORDS + W_PACK - 1) / W_PACK;
    localparam int RW = W_PACK * WW;
    localparam int RA = W_ROWS > 1 ? $clog2(W_ROWS) : 1;
    localparam int LB = W_PACK > 1 ? $clog2(W_PACK) : 1;
    localparam int PACK_STAGE = W_PACK > 1 ? 1 : 0;  // the word's multiplexer in its row
    // More than GROUP banks: their multiplexer in two registered levels (groups of GROUP
    // banks, then the groups), as the banks spread over the device's block RAM columns.
    localparam int GROUP = 8;
    localparam int GROUP_STAGE = W_BANKS > GROUP ? 1 : 0;
    localparam int GROUPS = (W_BANKS + GROUP - 1) / GROUP;
    localparam int READ_EXTRA = PACK_STAGE + GROUP_STAGE;  // read stages beyond three
    // Pipeline registers from the issue to the accumulator's output.
    localparam int MAC_DEPTH = 5 + READ_EXTRA + TREE_STAGES;
    // Beats in flight between an issue and the FIFO: the credit loop must cover them all
    // for a consumer ready every cycle never to stall a one-block beat.
    localparam int IN_FLIGHT = MAC_DEPTH + TURN + REQUANT_LATENCY + 3;
    localparam int FIFO_BITS = $clog2(IN_FLIGHT + 1);
    localparam int FIFO_DEPTH = 1 << FIFO_BITS;

    // ROMs (the weights below, in banks)
    logic [P_OUT*ACC_BITS-1:0] bias_rom [OUT_BEATS];
    logic [P_OUT*M_BITS-1:0] m_rom [OUT_BEATS];
    logic [P_OUT*7-1:0] shift_rom [OUT_BEATS];
    initial begin
        $readmemh(B_FILE, bias_rom);
        $readmemh(M_FILE, m_rom);
        $readmemh(S_FILE, shift_rom);
    end

    // Input side: two vector buffers, filled alternately: one memory of 2 x 2^IB words
    // (the buffer number is the top address bit), written by the loader and read
    // synchronously by the issue, so that Yosys may put it in block RAM.
    logic [P_IN*IN_BITS-1:0] buffer [2 << IB];
    logic [1:0] full;
    logic load_sel;
    logic [IB-1:0] load_beat;
    assign in_ready = !full[load_sel];
    always_ff @(posedge clk) begin
        if (in_valid && in_ready) buffer[{load_sel, load_beat}] <= in_data;
    end

    // Issue: one block per cycle while a loaded vector remains and the credit allows.
    logic comp_sel;
    logic running;
    logic [TB_BITS-1:0] i_beat;  // the block within the output beat
    logic [IB-1:0] x_beat;       // the input word it reads
    logic [OB-1:0] j_beat;
    /* verilator lint_off UNUSEDSIGNAL */  // a packed ROM counts rows and words instead
    logic [WA-1:0] w_addr;
    /* verilator lint_on UNUSEDSIGNAL */
    logic last_i, last_j, issue;
    logic [FIFO_BITS:0] credit_used;   // beats issued and not yet taken from the FIFO
    logic [$clog2(TURN + 1):0] turn_wait;  // cycles until the requantizers are free
    assign last_i = (i_beat == TB_BITS'(BLOCKS - 1));
    assign last_j = (j_beat == OB'(OUT_BEATS - 1));
    assign issue = running && !(last_i && (credit_used == (FIFO_BITS + 1)'(FIFO_DEPTH)
                                           || turn_wait != '0));

    // The weight ROM's row and the word in it: w_addr itself, or (packed) counted beside it.
    logic [RA-1:0] w_row;
    /* verilator lint_off UNUSEDSIGNAL */  // read only in a packed ROM
    logic [LB-1:0] w_lane;
    /* verilator lint_on UNUSEDSIGNAL */
    generate
        if (W_PACK > 1) begin : g_packed_address
            always_ff @(posedge clk or negedge rst_n) begin
                if (!rst_n) begin
                    w_row <= '0;
                    w_lane <= '0;
                end else if ((!running && full[comp_sel]) || (issue && last_i && last_j)) begin
                    w_row <= '0;
                    w_lane <= '0;
                end else if (issue) begin
                    w_lane <= w_lane == LB'(W_PACK - 1) ? '0 : w_lane + 1'b1;
                    if (w_lane == LB'(W_PACK - 1)) w_row <= w_row + 1'b1;
                end
            end
        end else begin : g_word_address
            assign w_row = RA'(w_addr);
            assign w_lane = '0;
        end
    endgenerate

    // Read stages: the memories' registered outputs, then registers of their own (a block
    // RAM's output is slow), then the bank multiplexer (then, packed, the word in the row).
    // A deep weight ROM is cut into banks one block RAM deep, each with its output register
    // beside it, so that no path runs from a block RAM through a multiplexer of many.
    localparam int BB = W_BANKS > 1 ? $clog2(W_BANKS) : 1;
    logic [P_IN*IN_BITS-1:0] x_read, x_bank, x_held;
    logic [W_BANKS*RW-1:0] bank_read, bank_held;
    logic [RW-1:0] row_held;
    logic [WW-1:0] w_held;
    logic [BB-1:0] bank_select, bank_select_read, bank_select_held;
    genvar bank;
    generate
        if (W_BANKS == 1) begin : g_one_bank
            logic [RW-1:0] weight_rom [W_ROWS];
            initial $readmemh(W_FILE, weight_rom);
            always_ff @(posedge clk) bank_read <= weight_rom[w_row];
            assign bank_select = '0;
        end else begin : g_banks
            for (bank = 0; bank < W_BANKS; bank++) begin : g_bank
                // the last bank holds what is left (a partly filled bank would still take
                // its block RAMs)
                localparam int DEPTH = bank == W_BANKS - 1
                    ? W_ROWS - bank * (1 << W_BANK_BITS) : 1 << W_BANK_BITS;
                localparam int DB = DEPTH > 1 ? $clog2(DEPTH) : 1;  // its rows' address bits
                logic [RW-1:0] rom [DEPTH];
                initial $readmemh({W_FILE, ".", 8'(8'd48 + bank / 100),
                                   8'(8'd48 + bank / 10 % 10), 8'(8'd48 + bank % 10)}, rom);
                always_ff @(posedge clk)
                    bank_read[bank*RW +: RW] <= rom[w_row[DB-1:0]];
            end
            assign bank_select = BB'(w_row >> W_BANK_BITS);
        end
    endgenerate
    always_ff @(posedge clk) begin
        x_read <= buffer[{comp_sel, x_beat}];
        x_bank <= x_read;
        bank_held <= bank_read;
        bank_select_read <= bank_select;
        bank_select_held <= bank_select_read;
    end
    // The bank multiplexer: one level, or (many banks) groups then groups of groups.
    generate
        if (GROUP_STAGE == 0) begin : g_bank_mux
            always_ff @(posedge clk) begin
                row_held <= bank_held[RW-1:0];
                for (int k = 1; k < W_BANKS; k++)
                    if (bank_select_held == BB'(k)) row_held <= bank_held[k*RW +: RW];
            end
        end else begin : g_group_mux
            localparam int GB = GROUPS > 1 ? $clog2(GROUPS) : 1;
            logic [GROUPS*RW-1:0] group_held;
            logic [GB-1:0] group_select;
            always_ff @(posedge clk) begin
                for (int g = 0; g < GROUPS; g++) begin
                    group_held[g*RW +: RW] <= bank_held[g*GROUP*RW +: RW];
                    for (int k = 1; k < GROUP; k++)
                        if (g*GROUP + k < W_BANKS && bank_select_held[2:0] == 3'(k))
                            group_held[g*RW +: RW] <= bank_held[(g*GROUP + k)*RW +: RW];
                end
                group_select <= GB'(bank_select_held >> 3);
                row_held <= group_held[RW-1:0];
                for (int g = 1; g < GROUPS; g++)
                    if (group_select == GB'(g)) row_held <= group_held[g*RW +: RW];
            end
        end
    endgenerate
    // The input words wait beside the extra read stages.
    generate
        if (READ_EXTRA == 0) begin : g_x_direct
            always_ff @(posedge clk) x_held <= x_bank;
        end else begin : g_x_delayed
            logic [READ_EXTRA*P_IN*IN_BITS-1:0] x_wait;
            always_ff @(posedge clk) begin
                x_wait[P_IN*IN_BITS-1:0] <= x_bank;
                for (int k = 1; k < READ_EXTRA; k++)
                    x_wait[k*P_IN*IN_BITS +: P_IN*IN_BITS] <=
                        x_wait[(k-1)*P_IN*IN_BITS +: P_IN*IN_BITS];
                x_held <= x_wait[(READ_EXTRA-1)*P_IN*IN_BITS +: P_IN*IN_BITS];
            end
        end
    endgenerate
    generate
        if (W_PACK > 1) begin : g_packed_word
            // the word's place in its row, delayed to meet the row (issue + 3 + GROUP_STAGE)
            logic [(3 + GROUP_STAGE)*LB-1:0] lane_wait;
            always_ff @(posedge clk) begin
                lane_wait[LB-1:0] <= w_lane;
                for (int k = 1; k < 3 + GROUP_STAGE; k++)
                    lane_wait[k*LB +: LB] <= lane_wait[(k-1)*LB +: LB];
                w_held <= row_held[WW-1:0];
                for (int k = 1; k < W_PACK; k++)
                    if (lane_wait[(2 + GROUP_STAGE)*LB +: LB] == LB'(k))
                        w_held <= row_held[k*WW +: WW];
            end
        end else begin : g_word_rows
            assign w_held = row_held;
        end
    endgenerate

    // Control travels beside the data: valid, first and last block of a beat, the beat.
    // Flat vectors, one process each (stage k at [k*CTRL +: CTRL]; stage 0 is the issue).
    localparam int CTRL = 3 + OB;
    logic [CTRL-1:0] ctrl_issue;
    logic [MAC_DEPTH*CTRL-1:0] ctrl_regs;
    /* verilator lint_off UNUSEDSIGNAL */  // not every stage's flags are read
    logic [(MAC_DEPTH+1)*CTRL-1:0] ctrl;
    /* verilator lint_on UNUSEDSIGNAL */
    assign ctrl_issue = {issue, i_beat == '0, last_i, j_beat};
    assign ctrl = {ctrl_regs, ctrl_issue};
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) ctrl_regs <= '0;
        else ctrl_regs <= ctrl[MAC_DEPTH*CTRL-1:0];
    end

    // Centre and product stages: x - IN_ZERO per lane (signed, XB bits) into the
    // multipliers' operand registers, then the products' registers: P_OUT x P_IN kiln_mul
    // (on an ECP5 both registers are the DSP block's own). Flat vectors: Yosys's frontend
    // mishandles one-element arrays.
    function automatic logic [XB-1:0] centred(input logic [IN_BITS-1:0] x);
        if (IN_SIGNED) centred = XB'($signed(x)) - XB'(IN_ZERO);
        else centred = $signed(XB'({1'b0, x})) - XB'(IN_ZERO);
    endfunction
    logic [P_OUT*LEAVES*ACC_BITS-1:0] products;
    genvar mp, mq;
    generate
        for (mp = 0; mp < P_OUT; mp++) begin : g_row
            // DIAGONAL: lane p times its own weight; else every lane q of the block
            for (mq = 0; mq < (DIAGONAL ? 1 : LEAVES); mq++) begin : g_product
                if (mq < P_IN) begin : g_mul
                    localparam int X_LANE = DIAGONAL ? mp : mq;
                    localparam int W_LANE = DIAGONAL ? mp : mp*P_IN + mq;
                    /* verilator lint_off UNUSEDSIGNAL */  // an accumulator narrower
                    logic [PB-1:0] product;                  // than a product: its low bits
                    /* verilator lint_on UNUSEDSIGNAL */
                    kiln_mul #(.A_BITS(XB), .B_BITS(WC_BITS)) u_mul (
                        .clk(clk), .a(centred(x_held[X_LANE*IN_BITS +: IN_BITS])),
                        .b(w_held[W_LANE*WC_BITS +: WC_BITS]), .p(product));
                    assign products[(mp*LEAVES + mq)*ACC_BITS +: ACC_BITS] =
                        ACC_BITS'($signed(product));
                end else begin : g_empty  // a leaf of the adder tree with no lane
                    assign products[(mp*LEAVES + mq)*ACC_BITS +: ACC_BITS] = '0;
                end
            end
        end
    endgenerate

    // Tree stages: per lane, pairwise sums in place, a register after every level (the
    // products come from DSPs spread over the device: routing, not adders, sets the pace)
    // (one process; stage t's input at [t*TW +: TW] of tree, the products at stage 0).
    localparam int TW = P_OUT*LEAVES*ACC_BITS;
    logic [(TREE_STAGES > 0 ? TREE_STAGES : 1)*TW-1:0] tree_regs;
    logic [((TREE_STAGES > 0 ? TREE_STAGES : 1) + 1)*TW-1:0] tree;
    assign tree = {tree_regs, products};
    always_ff @(posedge clk) begin : tree_sums
        logic [TW-1:0] level;
        for (int t = 0; t < TREE_STAGES; t++) begin
            level = tree[t*TW +: TW];
            for (int l = t; l < t + 1 && l < LEVELS; l++)
                for (int p = 0; p < P_OUT; p++)
                    for (int k = 0; k < (LEAVES >> (l + 1)); k++)
                        level[(p*LEAVES + k)*ACC_BITS +: ACC_BITS] =
                            level[(p*LEAVES + 2*k)*ACC_BITS +: ACC_BITS]
                            + level[(p*LEAVES + 2*k + 1)*ACC_BITS +: ACC_BITS];
            tree_regs[t*TW +: TW] <= level;
        end
    end

    // Accumulator stage: the bias ROM is read for the block entering it, so that the bias
    // is there with the beat's first block.
    localparam int ACC_STAGE = MAC_DEPTH;
    // (Read two stages ahead: the block RAM's output gets a register of its own.)
    logic [P_OUT*ACC_BITS-1:0] bias_read, bias_word, acc;
    always_ff @(posedge clk) begin
        bias_read <= bias_rom[ctrl[(ACC_STAGE - 2)*CTRL +: OB]];
        bias_word <= bias_read;
    end
    logic in_acc, first_acc, last_acc;
    assign {in_acc, first_acc, last_acc} = ctrl[ACC_STAGE*CTRL + OB +: 3];
    logic [P_OUT*ACC_BITS-1:0] acc_next;
    always_comb begin
        for (int p = 0; p < P_OUT; p++)
            acc_next[p*ACC_BITS +: ACC_BITS] =
                (first_acc ? bias_word[p*ACC_BITS +: ACC_BITS] : acc[p*ACC_BITS +: ACC_BITS])
                + tree[TREE_STAGES*TW + p*LEAVES*ACC_BITS +: ACC_BITS];
    end
    always_ff @(posedge clk) if (in_acc) acc <= acc_next;

    // Capture: the finished beat, with its multipliers and shifts (read a stage ahead, by
    // the beat number of the block entering the accumulator, into registers of their own).
    logic [P_OUT*ACC_BITS-1:0] total;
    logic [P_OUT*M_BITS-1:0] m_read, m_word;
    logic [P_OUT*7-1:0] shift_read, shift_word;
    always_ff @(posedge clk) begin
        m_read <= m_rom[ctrl[(ACC_STAGE - 1)*CTRL +: OB]];
        shift_read <= shift_rom[ctrl[(ACC_STAGE - 1)*CTRL +: OB]];
        if (in_acc && last_acc) begin
            total <= acc_next;
            m_word <= m_read;
            shift_word <= shift_read;
        end
    end

    // Requantization: SERIAL turns, each feeding REQUANTS lanes into the pipelined
    // requantizers; a turn's results come out REQUANT_LATENCY cycles later.
    logic busy;
    logic [SB-1:0] serial_step;
    logic [PSB-1:0] pass;
    logic last_serial, last_pass, start;
    assign last_serial = (serial_step == SB'(SERIAL - 1));
    assign last_pass = (pass == PSB'(PASSES - 1));
    assign start = busy && pass == '0;
    logic [REQUANTS*OUT_BITS-1:0] part;
    genvar r;
    generate
        for (r = 0; r < REQUANTS; r++) begin : g_requant
            // The lane of this turn, selected with constant part-selects (a variable index
            // times a width that is not a power of two would be a multiplier).
            logic [ACC_BITS-1:0] lane_acc;
            logic [M_BITS-1:0] lane_m;
            logic [6:0] lane_shift;
            always_comb begin
                lane_acc = total[r*ACC_BITS +: ACC_BITS];
                lane_m = m_word[r*M_BITS +: M_BITS];
                lane_shift = shift_word[r*7 +: 7];
                for (int k = 1; k < SERIAL; k++)
                    if (serial_step == SB'(k) && k * REQUANTS + r < P_OUT) begin
                        lane_acc = total[(k*REQUANTS + r)*ACC_BITS +: ACC_BITS];
                        lane_m = m_word[(k*REQUANTS + r)*M_BITS +: M_BITS];
                        lane_shift = shift_word[(k*REQUANTS + r)*7 +: 7];
                    end
            end
            kiln_requant #(.ACC_BITS(ACC_BITS), .M_BITS(M_BITS), .OUT_BITS(OUT_BITS),
                           .OUT_ZERO(OUT_ZERO), .LO(LO), .HI(HI),
                           .ROUND_NEAREST(ROUND_NEAREST), .FLOAT32(FLOAT32),
                           .PASSES(PASSES)) u_requant (
                .clk(clk), .rst_n(rst_n), .start(start), .acc(lane_acc), .m(lane_m),
                .shift(lane_shift), .out(part[r*OUT_BITS +: OUT_BITS]));
        end
    endgenerate
    // The turns in the requantizers: valid, turn number, last turn (stage k at [k*TB +: TB]).
    localparam int TB = SB + 2;
    logic [REQUANT_LATENCY*TB-1:0] turn_regs;
    logic [(REQUANT_LATENCY+1)*TB-1:0] turns;
    assign turns = {turn_regs, start, serial_step, start && last_serial};
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) turn_regs <= '0;
        else turn_regs <= turns[REQUANT_LATENCY*TB-1:0];
    end
    logic out_turn_valid, out_turn_last;
    logic [SB-1:0] out_turn;
    assign {out_turn_valid, out_turn, out_turn_last} = turns[REQUANT_LATENCY*TB +: TB];
    // Lane p comes out at turn p / REQUANTS from requantizer p % REQUANTS: constant
    // part-selects in one process (Yosys mis-merges variable-index writes from several).
    logic [P_OUT*OUT_BITS-1:0] result;
    logic push;
    always_ff @(posedge clk) begin
        if (out_turn_valid)
            for (int p = 0; p < P_OUT; p++)
                if (out_turn == SB'(p / REQUANTS))
                    result[p*OUT_BITS +: OUT_BITS] <= part[(p % REQUANTS)*OUT_BITS +: OUT_BITS];
    end

    // Output FIFO (FIFO_DEPTH entries, distributed RAM): the credit counter guarantees room.
    logic [P_OUT*OUT_BITS-1:0] fifo [FIFO_DEPTH];
    logic [FIFO_BITS:0] fifo_count;
    logic [FIFO_BITS-1:0] fifo_head, fifo_tail;
    logic pop;
    assign pop = out_valid && out_ready;
    assign out_valid = (fifo_count != '0);
    assign out_data = fifo[fifo_head];
    always_ff @(posedge clk) if (push) fifo[fifo_tail] <= result;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            full <= 2'b00;
            load_sel <= 1'b0;
            load_beat <= '0;
            comp_sel <= 1'b0;
            running <= 1'b0;
            i_beat <= '0;
            x_beat <= '0;
            j_beat <= '0;
            w_addr <= '0;
            credit_used <= '0;
            turn_wait <= '0;
            busy <= 1'b0;
            serial_step <= '0;
            pass <= '0;
            push <= 1'b0;
            fifo_count <= '0;
            fifo_head <= '0;
            fifo_tail <= '0;
        end else begin
            // Load (the buffer itself is written above, outside the reset process).
            if (in_valid && in_ready) begin
                if (load_beat == IB'(IN_BEATS - 1)) begin
                    load_beat <= '0;
                    load_sel <= !load_sel;
                end else begin
                    load_beat <= load_beat + 1'b1;
                end
            end
            // Start issuing a loaded vector.
            if (!running && full[comp_sel]) begin
                running <= 1'b1;
                i_beat <= '0;
                x_beat <= '0;
                j_beat <= '0;
                w_addr <= '0;
            end
            if (issue) begin
                if (last_i) begin
                    i_beat <= '0;
                    if (last_j) begin
                        j_beat <= '0;
                        x_beat <= '0;
                        w_addr <= '0;
                        // Roll straight into the other buffer when it is already loaded.
                        running <= full[!comp_sel];
                        comp_sel <= !comp_sel;
                    end else begin
                        j_beat <= j_beat + 1'b1;
                        // a diagonal unit's next beat starts at its own channel word
                        x_beat <= DIAGONAL ? IB'(j_beat) + 1'b1 : '0;
                        w_addr <= w_addr + 1'b1;
                    end
                end else begin
                    i_beat <= i_beat + 1'b1;
                    // the next tap's word of this channel beat (a constant step)
                    x_beat <= x_beat + (DIAGONAL ? IB'(OUT_BEATS) : IB'(1));
                    w_addr <= w_addr + 1'b1;
                end
            end
            // Buffer bookkeeping: filled by the loader, freed by the issue of its last block.
            for (int b = 0; b < 2; b++) begin
                if (in_valid && in_ready && load_beat == IB'(IN_BEATS - 1) && load_sel == b[0])
                    full[b] <= 1'b1;
                else if (issue && last_i && last_j && comp_sel == b[0])
                    full[b] <= 1'b0;
            end
            // Credit and the requantizers' turns.
            credit_used <= credit_used + (FIFO_BITS + 1)'(issue && last_i)
                           - (FIFO_BITS + 1)'(pop);
            if (issue && last_i) turn_wait <= ($clog2(TURN + 1) + 1)'(TURN - 1);
            else if (turn_wait != '0) turn_wait <= turn_wait - 1'b1;
            // A captured beat takes its turns from the next cycle on (captures are at
            // least SERIAL cycles apart: the issue waits for the requantizers' turn).
            if (in_acc && last_acc) begin
                busy <= 1'b1;
                serial_step <= '0;
                pass <= '0;
            end else if (busy) begin
                pass <= last_pass ? '0 : pass + 1'b1;
                if (last_pass) begin
                    busy <= !last_serial;
                    serial_step <= last_serial ? '0 : serial_step + 1'b1;
                end
            end
            push <= out_turn_valid && out_turn_last;
            if (push) fifo_tail <= fifo_tail + 1'b1;
            if (pop) fifo_head <= fifo_head + 1'b1;
            fifo_count <= fifo_count + (FIFO_BITS + 1)'(push) - (FIFO_BITS + 1)'(pop);
        end
    end
endmodule
