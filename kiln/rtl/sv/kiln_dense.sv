// kiln_dense: a fully-connected layer y = requant(W (x - IN_ZERO) + b), streamed.
//
// The input vector (IN_N elements) arrives in IN_BEATS = ceil(IN_N / P_IN) beats of P_IN
// elements; the output (OUT_N elements) leaves in OUT_BEATS beats of P_OUT elements.
// Zero points are subtracted from both operands before multiplying (x - IN_ZERO per
// input lane, w - w_zero per output channel).
// P_IN x P_OUT multipliers, P_OUT balanced adder trees of depth ceil(log2 P_IN) and
// P_OUT accumulators compute one [P_OUT x P_IN] weight block per cycle, so a vector
// takes IN_BEATS * OUT_BEATS compute cycles. Two input buffers let the next vector load
// while this one computes; a 4-entry output FIFO lets compute run ahead of the consumer; a pipeline register
// separates accumulation from requantization.
// Weights, biases and requantization parameters come from ROMs read with $readmemh
// (one word per block: lane 0 in the least significant bits), read synchronously so that
// they can live in block RAM. REQUANTS requantizers (32x32 multiply and 64-bit shift each,
// the largest part of a lane) serve the P_OUT lanes in ceil(P_OUT / REQUANTS) cycles after
// each output beat's accumulation: with REQUANTS >= P_OUT / IN_BEATS they keep up with the
// engine. Valid/ready on both sides.
module kiln_dense #(
    parameter int IN_N = 16,
    parameter int OUT_N = 16,
    parameter int P_IN = 4,
    parameter int P_OUT = 4,
    parameter int IN_BITS = 8,
    parameter bit IN_SIGNED = 0,
    parameter int IN_ZERO = 0,
    parameter int W_BITS = 8,
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter bit ROUND_NEAREST = 1,
    parameter bit FLOAT32 = 0,
    parameter int REQUANTS = P_OUT,  // requantizers, shared by the P_OUT lanes in turn
    parameter W_FILE = "weights.mem",
    parameter B_FILE = "bias.mem",
    parameter M_FILE = "m0.mem",
    parameter S_FILE = "shift.mem",
    parameter Z_FILE = "wzero.mem"
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
    localparam int LEVELS = $clog2(P_IN) > 0 ? $clog2(P_IN) : 1;
    localparam int LEAVES = 1 << LEVELS;
    localparam int XB = IN_BITS + 2;               // x - zero point, signed
    localparam int WB = W_BITS + 1;                // w - weight zero point, signed
    localparam int PB = XB + WB;                   // one product
    localparam int IB = IN_BEATS > 1 ? $clog2(IN_BEATS) : 1;
    localparam int OB = OUT_BEATS > 1 ? $clog2(OUT_BEATS) : 1;
    localparam int WA = IN_BEATS * OUT_BEATS > 1 ? $clog2(IN_BEATS * OUT_BEATS) : 1;

    // ROMs
    logic [P_IN*P_OUT*W_BITS-1:0] weight_rom [IN_BEATS*OUT_BEATS];
    logic [P_OUT*32-1:0] bias_rom [OUT_BEATS];
    logic [P_OUT*32-1:0] m0_rom [OUT_BEATS];
    logic [P_OUT*8-1:0] shift_rom [OUT_BEATS];
    logic [P_OUT*W_BITS-1:0] wzero_rom [OUT_BEATS];
    initial begin
        $readmemh(Z_FILE, wzero_rom);
        $readmemh(W_FILE, weight_rom);
        $readmemh(B_FILE, bias_rom);
        $readmemh(M_FILE, m0_rom);
        $readmemh(S_FILE, shift_rom);
    end

    // Input side: two vector buffers, filled alternately: one memory of 2 x IN_BEATS
    // words (the buffer number is the top address bit), written by the loader and read
    // synchronously one cycle ahead like the ROMs, so that Yosys may put it in block RAM.
    logic [P_IN*IN_BITS-1:0] buffer [2*IN_BEATS];
    logic [1:0] full;
    logic load_sel;
    logic [IB-1:0] load_beat;
    assign in_ready = !full[load_sel];

    // Compute engine state.
    logic comp_sel;
    logic running;
    logic [IB-1:0] i_beat;
    logic [OB-1:0] j_beat;
    // Flat vectors, not arrays: Yosys's frontend mishandles one-element arrays.
    logic [P_OUT*32-1:0] acc;
    logic last_i;
    logic fifo_full;
    logic step;
    assign last_i = (i_beat == IB'(IN_BEATS - 1));
    logic serializer_held;  // total_q still needed by the requantizers after this cycle
    assign step = running && !(last_i && (fifo_full || serializer_held));

    // The block counters' values after the next clock edge. The ROMs are read with them
    // one cycle ahead into registers (a synchronous read, which Yosys can put in block RAM:
    // SB_RAM40_4K on iCE40, DP16KD on ECP5), so each registered word is the one the
    // current block needs, exactly as an asynchronous read of the current counters.
    // The weight ROM's address j * IN_BEATS + i is counted, not multiplied (a multiply
    // would take a DSP block).
    logic [IB-1:0] i_next;
    logic [OB-1:0] j_next;
    logic comp_sel_next;
    logic [WA-1:0] w_addr, w_addr_next;
    always_comb begin
        i_next = i_beat;
        j_next = j_beat;
        comp_sel_next = comp_sel;
        w_addr_next = w_addr;
        if (!running && full[comp_sel]) begin
            i_next = '0;
            j_next = '0;
            w_addr_next = '0;
        end
        if (step) begin
            w_addr_next = w_addr + 1'b1;
            if (last_i) begin
                i_next = '0;
                j_next = (j_beat == OB'(OUT_BEATS - 1)) ? '0 : j_beat + 1'b1;
                if (j_beat == OB'(OUT_BEATS - 1)) begin
                    comp_sel_next = !comp_sel;
                    w_addr_next = '0;
                end
            end else begin
                i_next = i_beat + 1'b1;
            end
        end
    end
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) w_addr <= '0;
        else w_addr <= w_addr_next;
    end
    logic [P_IN*P_OUT*W_BITS-1:0] weight_word;
    logic [P_OUT*W_BITS-1:0] wzero_word;
    logic [P_OUT*32-1:0] bias_word_q;
    logic [P_OUT*32-1:0] m0_word;
    logic [P_OUT*8-1:0] shift_word;
    localparam int BA = $clog2(2 * IN_BEATS);
    logic [P_IN*IN_BITS-1:0] x_word_q;
    always_ff @(posedge clk) begin
        x_word_q <= buffer[(comp_sel_next ? BA'(IN_BEATS) : BA'(0)) + BA'(i_next)];
        weight_word <= weight_rom[w_addr_next];
        wzero_word <= wzero_rom[j_next];
        bias_word_q <= bias_rom[j_next];
        m0_word <= m0_rom[j_next];
        shift_word <= shift_rom[j_next];
    end

    // The current block: P_IN inputs and P_OUT x P_IN weights, zero points subtracted;
    // per output lane a balanced adder tree of depth ceil(log2 P_IN) over the P_IN
    // products (padded with zeros to a power of two), then the accumulator after this beat
    // with the bias on the last beat. One process for all lanes, reading the registers and
    // ROMs itself: an event-driven simulator (Icarus) wakes it a couple of times per cycle
    // instead of once per changed lane or product.
    logic [P_OUT*32-1:0] lane_total;
    always_comb begin : compute
        logic [P_IN*IN_BITS-1:0] x_word;
        logic [P_IN*P_OUT*W_BITS-1:0] w_word;
        logic [P_OUT*W_BITS-1:0] w_zero_word;
        logic [P_OUT*32-1:0] bias_word;
        logic [P_IN*XB-1:0] x_centered;  // signed lanes (flat vectors: see acc)
        logic [LEAVES*32-1:0] level;     // signed lanes, summed in place pairwise
        logic [IN_BITS-1:0] raw;
        logic signed [W_BITS-1:0] w;
        logic signed [W_BITS-1:0] w_zero;
        logic signed [WB-1:0] w_centered;
        x_word = x_word_q;
        w_word = weight_word;
        w_zero_word = wzero_word;
        bias_word = bias_word_q;
        for (int q = 0; q < P_IN; q++) begin
            raw = x_word[q*IN_BITS +: IN_BITS];
            if (IN_SIGNED) x_centered[q*XB +: XB] = XB'($signed(raw)) - XB'(IN_ZERO);
            else x_centered[q*XB +: XB] = $signed(XB'({1'b0, raw})) - XB'(IN_ZERO);
        end
        for (int p = 0; p < P_OUT; p++) begin
            w_zero = w_zero_word[p*W_BITS +: W_BITS];
            level = '0;
            for (int q = 0; q < P_IN; q++) begin
                w = w_word[(p*P_IN + q)*W_BITS +: W_BITS];
                w_centered = WB'(w) - WB'(w_zero);
                level[q*32 +: 32] = 32'(PB'($signed(x_centered[q*XB +: XB])) * PB'(w_centered));
            end
            for (int l = 0; l < LEVELS; l++)
                for (int k = 0; k < LEAVES / 2; k++)
                    if (k < (LEAVES >> (l + 1)))
                        level[k*32 +: 32] = level[2*k*32 +: 32] + level[(2*k + 1)*32 +: 32];
            lane_total[p*32 +: 32] = acc[p*32 +: 32] + 32'(level) +
                ((i_beat == IB'(IN_BEATS - 1)) ? bias_word[p*32 +: 32] : 32'd0);
        end
    end

    // A pipeline register between the accumulation and the requantization: the MAC path
    // and the 32x32 requantization multiply each get a clock cycle of their own.
    logic pending;  // result_q is complete: pushed into the FIFO this cycle
    logic [P_OUT*32-1:0] total_q;
    logic [P_OUT*32-1:0] m0_q;
    logic [P_OUT*8-1:0] shift_q;
    always_ff @(posedge clk) begin
        if (step && last_i) begin
            total_q <= lane_total;
            m0_q <= m0_word;
            shift_q <= shift_word;
        end
    end

    always_ff @(posedge clk) begin
        if (in_valid && in_ready)
            buffer[(load_sel ? BA'(IN_BEATS) : BA'(0)) + BA'(load_beat)] <= in_data;
    end

    // Requantization: REQUANTS units take the lanes in turn, SERIAL steps per output beat,
    // into result_q, which is pushed into the FIFO the cycle after the last step.
    localparam int SERIAL = (P_OUT + REQUANTS - 1) / REQUANTS;
    localparam int SB = SERIAL > 1 ? $clog2(SERIAL) : 1;
    localparam int LB = P_OUT > 1 ? $clog2(P_OUT) : 1;
    logic busy;
    logic [SB-1:0] serial_step;
    logic last_serial;
    assign last_serial = (serial_step == SB'(SERIAL - 1));
    logic [P_OUT*OUT_BITS-1:0] result_q;
    logic [REQUANTS*OUT_BITS-1:0] part;
    genvar r;
    generate
        for (r = 0; r < REQUANTS; r++) begin : g_requant
            logic [LB:0] lane;
            logic [LB:0] lane_read;
            logic signed [7:0] lane_shift;
            assign lane = (LB + 1)'(serial_step) * (LB + 1)'(REQUANTS) + (LB + 1)'(r);
            assign lane_read = (lane < (LB + 1)'(P_OUT)) ? lane : '0;
            assign lane_shift = shift_q[lane_read*8 +: 8];
            kiln_requant #(.OUT_BITS(OUT_BITS), .OUT_ZERO(OUT_ZERO), .LO(LO), .HI(HI),
                           .ROUND_NEAREST(ROUND_NEAREST), .FLOAT32(FLOAT32)) u_requant (
                .acc(total_q[lane_read*32 +: 32]), .m0(m0_q[lane_read*32 +: 32]),
                .shift(lane_shift), .out(part[r*OUT_BITS +: OUT_BITS]));
        end
    endgenerate
    // Lane p is written at serial step p / REQUANTS by requantizer p % REQUANTS: constant
    // part-selects in one process (Yosys mis-merges variable-index writes from several).
    always_ff @(posedge clk) begin
        if (busy)
            for (int p = 0; p < P_OUT; p++)
                if (serial_step == SB'(p / REQUANTS))
                    result_q[p*OUT_BITS +: OUT_BITS] <= part[(p % REQUANTS)*OUT_BITS +: OUT_BITS];
    end

    // Output FIFO (4 entries): room for the results in flight and the one behind them, so that
    // a consumer ready every cycle never stalls the engine.
    logic [P_OUT*OUT_BITS-1:0] fifo [4];
    logic [2:0] fifo_count;
    logic [1:0] fifo_head;
    logic push, pop;
    // A new accumulator may start into the requantizers only if the FIFO has room for it
    // behind everything in flight (the result being requantized, the one being pushed).
    assign fifo_full = (fifo_count + {2'd0, pending} + {2'd0, busy} >= 3'd4);
    assign serializer_held = busy && !last_serial;
    assign push = pending;
    // The slot after the last entry, wrapping at 4 (a 2-bit sum: an index expression
    // would not wrap in every simulator).
    logic [1:0] write_slot;
    assign write_slot = fifo_head + fifo_count[1:0];
    assign pop = out_valid && out_ready;
    assign out_valid = (fifo_count != 3'd0);
    assign out_data = fifo[fifo_head];

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            full <= 2'b00;
            load_sel <= 1'b0;
            load_beat <= '0;
            comp_sel <= 1'b0;
            running <= 1'b0;
            i_beat <= '0;
            j_beat <= '0;
            fifo_count <= 3'd0;
            fifo_head <= 2'd0;
            pending <= 1'b0;
            busy <= 1'b0;
            serial_step <= '0;
            acc <= '0;
        end else begin
            // Load (the buffer itself is written below, outside the reset process).
            if (in_valid && in_ready) begin
                if (load_beat == IB'(IN_BEATS - 1)) begin
                    load_beat <= '0;
                    load_sel <= !load_sel;
                end else begin
                    load_beat <= load_beat + 1'b1;
                end
            end
            // Start computing a loaded vector.
            if (!running && full[comp_sel]) begin
                running <= 1'b1;
                i_beat <= '0;
                j_beat <= '0;
            end
            // Compute one block per cycle.
            if (step) begin
                if (last_i) begin
                    acc <= '0;
                    i_beat <= '0;
                    if (j_beat == OB'(OUT_BEATS - 1)) begin
                        j_beat <= '0;
                        // Roll straight into the other buffer when it is already loaded:
                        // no idle cycle between vectors.
                        running <= full[!comp_sel];
                        comp_sel <= !comp_sel;
                    end else begin
                        j_beat <= j_beat + 1'b1;
                    end
                end else begin
                    acc <= lane_total;
                    i_beat <= i_beat + 1'b1;
                end
            end
            // Buffer bookkeeping: filled by the loader, freed by the engine.
            for (int b = 0; b < 2; b++) begin
                if (in_valid && in_ready && load_beat == IB'(IN_BEATS - 1) && load_sel == b[0])
                    full[b] <= 1'b1;
                else if (step && last_i && j_beat == OB'(OUT_BEATS - 1) && comp_sel == b[0])
                    full[b] <= 1'b0;
            end
            // Output FIFO.
            // Requantization steps, then the push.
            pending <= busy && last_serial;
            if (busy) begin
                serial_step <= last_serial ? '0 : serial_step + 1'b1;
                busy <= !last_serial || (step && last_i);
            end else begin
                busy <= step && last_i;
            end
            if (push) fifo[write_slot] <= result_q;
            if (pop) fifo_head <= fifo_head + 2'd1;
            fifo_count <= fifo_count + {2'd0, push} - {2'd0, pop};
        end
    end
endmodule
