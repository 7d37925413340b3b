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
    parameter int AB = 7     // address bits
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic signed [15:0] read_limit,
    input  logic signed [15:0] need_rows,
    input  logic frame_done,
    input  logic settle,
    output logic rows_ready,
    output logic write_enable,
    output logic [AB-1:0] write_address
);
    localparam int COL_BITS = $clog2(ROW_STRIDE) > 0 ? $clog2(ROW_STRIDE) : 1;
    logic signed [15:0] held;
    logic [SB-1:0] load_slot;
    logic [COL_BITS-1:0] load_col;
    logic row_done;
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
            held <= held + 16'(row_done) - (frame_done ? 16'(H) : 16'd0);
        end
    end
endmodule
