// kiln_window_max: the maximum of each lane over a window, behind an im2col: a padded (or
// non-square) max pool. A window arrives as TAPS x CB beats of P lanes, ordered (tap,
// channel beat); positions in the padding hold the input's lowest value (the im2col's pad
// value), which never wins, as in the engine. A running maximum per channel beat lives in a
// CB-word memory: a tap's word replaces it (first tap) or raises it, and the last tap's
// result goes to a 4-entry output FIFO. One word a cycle; a word is taken only when the FIFO
// will have room for a result (credit).
module kiln_window_max #(
    parameter int P = 4,
    parameter int BITS = 8,
    parameter bit SIGNED = 0,
    parameter int CB = 1,
    parameter int TAPS = 9
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic [P*BITS-1:0] in_data,
    output logic out_valid,
    input  logic out_ready,
    output logic [P*BITS-1:0] out_data
);
    localparam int CBB = CB > 1 ? $clog2(CB) : 1;
    localparam int TB = TAPS > 1 ? $clog2(TAPS) : 1;
    localparam int FIFO_DEPTH = 4;

    logic [CBB-1:0] beat;
    logic [TB-1:0] tap;
    logic [2:0] credit_used;  // results taken (as their last tap's word) and not yet popped
    logic take, pop;
    assign in_ready = credit_used != 3'(FIFO_DEPTH);
    assign take = in_valid && in_ready;

    // Stage 1: the word, its channel beat, and whether it is the window's first or last tap.
    logic [P*BITS-1:0] word;
    logic [CBB-1:0] word_beat;
    logic word_valid, word_first, word_last;
    always_ff @(posedge clk) begin
        word <= in_data;
        word_beat <= beat;
        word_first <= tap == '0;
        word_last <= tap == TB'(TAPS - 1);
    end

    // Stage 2: the running maximum (read asynchronously, written back in the same cycle).
    logic [P*BITS-1:0] running [CB];
    logic [P*BITS-1:0] previous, raised;
    assign previous = running[word_beat];
    always_comb begin
        for (int p = 0; p < P; p++) begin
            if (word_first)
                raised[p*BITS +: BITS] = word[p*BITS +: BITS];
            else if (SIGNED ? $signed(word[p*BITS +: BITS]) > $signed(previous[p*BITS +: BITS])
                            : word[p*BITS +: BITS] > previous[p*BITS +: BITS])
                raised[p*BITS +: BITS] = word[p*BITS +: BITS];
            else
                raised[p*BITS +: BITS] = previous[p*BITS +: BITS];
        end
    end
    always_ff @(posedge clk) if (word_valid) running[word_beat] <= raised;

    logic push;
    logic [P*BITS-1:0] result;
    always_ff @(posedge clk) result <= raised;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            beat <= '0;
            tap <= '0;
            word_valid <= 1'b0;
            push <= 1'b0;
            credit_used <= '0;
        end else begin
            word_valid <= take;
            push <= word_valid && word_last;
            if (take) begin
                if (beat == CBB'(CB - 1)) begin
                    beat <= '0;
                    tap <= tap == TB'(TAPS - 1) ? '0 : tap + 1'b1;
                end else begin
                    beat <= beat + 1'b1;
                end
            end
            credit_used <= credit_used + 3'(take && tap == TB'(TAPS - 1)) - 3'(pop);
        end
    end

    assign pop = out_valid && out_ready;
    kiln_fifo #(.WIDTH(P*BITS), .DEPTH(FIFO_DEPTH)) u_out (
        .clk(clk), .rst_n(rst_n), .push(push), .push_data(result),
        .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data));
endmodule
