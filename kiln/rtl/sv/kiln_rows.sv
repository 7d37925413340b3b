// kiln_rows: flow control of a line buffer of R rows (R a power of two) for a streamed
// feature map (raster order, ROW_WORDS words per row). Rows of the current frame held so
// far are counted (`held`, relative to the frame's first row); a row goes into slot
// (rows since reset mod R), each slot ROW_STRIDE words (a power of two: the address is a
// concatenation). The consumer says, from registers of its own, up to which row the buffer
// may hold (read_limit = the first row it still reads + R) and how many rows it needs now
// (need_rows): a row is accepted while held < read_limit, and the consumer may go on once
// held >= need_rows. frame_done moves to the next frame (H rows on). Both handshakes are
// one compare of registers, for FPGA clocks. `settle` (the cycle after the consumer moved to
// another row, while its registered limit catches up) holds the loader back.
module kiln_rows #(
    parameter int H = 28,
    parameter int ROW_WORDS = 28,
    parameter int R = 4,
    parameter int ROW_STRIDE = 32,
    parameter int SB = 2,    // bits of a slot (>= 1)
    parameter int AB = 7,    // address bits
    parameter int RB = 16    // signed row counts: held, read_limit and need_rows (the
                             // consumer's "never" is the largest, 2^(RB-1) - 1 > H + R)
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic signed [RB-1:0] read_limit,
    input  logic signed [RB-1:0] need_rows,
    input  logic frame_done,
    input  logic settle,
    output logic rows_ready,
    output logic write_enable,
    output logic [AB-1:0] write_address
);
    localparam int COL_BITS = $clog2(ROW_STRIDE) > 0 ? $clog2(ROW_STRIDE) : 1;
    logic signed [RB-1:0] held;  // as narrow as the rows allow: short compares
    logic [SB-1:0] load_slot;
    logic [COL_BITS-1:0] load_col;
    logic row_done;
    logic signed [RB-1:0] held_up, held_next_frame, held_up_next_frame;
    assign held_up = held + RB'(1);
    assign held_next_frame = held - RB'(H);
    assign held_up_next_frame = held + RB'(1 - H);
    assign in_ready = held < read_limit && !settle;
    assign rows_ready = need_rows <= held;
    assign write_enable = in_valid && in_ready;
    assign row_done = write_enable && load_col == COL_BITS'(ROW_WORDS - 1);
    generate
        if (R > 1) begin : g_slots
            assign write_address = AB'({load_slot, load_col});
        end else begin : g_one_row
            assign write_address = AB'(load_col);
        end
    endgenerate

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            held <= '0;
            load_slot <= '0;
            load_col <= '0;
        end else begin
            if (write_enable) load_col <= row_done ? '0 : load_col + 1'b1;
            if (row_done) load_slot <= load_slot + 1'b1;
            // every candidate is one constant add from the register, beside the compare
            // that decides between them (not a compare then an add in one cycle)
            if (row_done && frame_done) held <= held_up_next_frame;
            else if (row_done) held <= held_up;
            else if (frame_done) held <= held_next_frame;
        end
    end
endmodule
