// kiln_rows: flow control of a line buffer of R rows (R a power of two) for a streamed
// feature map (raster order, ROW_WORDS words per row). Rows are counted since reset
// across frames; a row goes into slot (count mod R). The consumer says which rows of the
// current frame it still reads ([first_row, ...)) and how many it needs now (need_rows);
// a row is accepted while the one it replaces is no longer read, and the consumer may go
// on once the rows it needs have arrived. frame_done moves to the next frame (H rows on).
// A row slot starts every ROW_STRIDE words (a power of two: the address is a concatenation).
module kiln_rows #(
    parameter int H = 28,
    parameter int ROW_WORDS = 28,
    parameter int R = 4,
    parameter int ROW_STRIDE = ROW_WORDS
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic signed [31:0] first_row,
    input  logic signed [31:0] need_rows,
    input  logic frame_done,
    output logic rows_ready,
    output logic write_enable,
    output logic [31:0] write_address,
    output logic [31:0] frame_base
);
    logic [31:0] loaded;
    logic [31:0] load_col;
    logic signed [31:0] held;
    assign held = $signed(loaded - frame_base);
    assign in_ready = held - first_row < R;
    assign rows_ready = need_rows <= held;
    assign write_enable = in_valid && in_ready;
    assign write_address = (loaded & 32'(R - 1)) * ROW_STRIDE + load_col;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            loaded <= '0;
            load_col <= '0;
            frame_base <= '0;
        end else begin
            if (write_enable) begin
                if (load_col == 32'(ROW_WORDS - 1)) begin
                    load_col <= '0;
                    loaded <= loaded + 1'b1;
                end else begin
                    load_col <= load_col + 1'b1;
                end
            end
            if (frame_done) frame_base <= frame_base + 32'(H);
        end
    end
endmodule
