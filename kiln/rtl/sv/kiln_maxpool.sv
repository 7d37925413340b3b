// kiln_maxpool: max pooling of a streamed feature map (raster order, CB beats of P
// lanes per pixel) through a line buffer of R rows (K rounded up to a power of two, see
// kiln_rows): each pooled pixel is emitted as CB beats, each lane the maximum over its
// K x K window (signed or unsigned compare), as soon as the window's rows have arrived.
module kiln_maxpool #(
    parameter int H = 28,
    parameter int W = 28,
    parameter int CB = 1,
    parameter int P = 4,
    parameter int BITS = 8,
    parameter bit SIGNED = 0,
    parameter int K = 2,
    parameter int STRIDE = 2
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
    localparam int OH = (H - K) / STRIDE + 1;
    localparam int OW = (W - K) / STRIDE + 1;
    localparam int ROW_BITS = (K > 1) ? $clog2(K) : 0;
    localparam int R = 1 << ROW_BITS;
    localparam int ROW_WORDS = W * CB;
    localparam int WORDS = R * ROW_WORDS;

    logic [P*BITS-1:0] rows [WORDS];
    logic write_enable, rows_ready, frame_done;
    logic [31:0] write_address, frame_base;
    logic [15:0] oy, ox, cb;
    logic signed [31:0] first_row, need_rows;

    // The K x K window's words are read once, then compared lane by lane (one process:
    // an event-driven simulator evaluates it once per change of the line buffer).
    always_comb begin : pool
        logic [31:0] row_base;
        logic [31:0] column_base;
        logic [P*BITS-1:0] word;
        logic [BITS-1:0] value;
        logic [BITS-1:0] best;
        first_row = $signed(32'(oy)) * STRIDE;
        need_rows = first_row + K;
        row_base = frame_base + 32'(oy) * STRIDE;
        column_base = 32'(ox) * STRIDE * CB + 32'(cb);
        out_data = rows[(row_base & 32'(R - 1)) * ROW_WORDS + column_base];
        for (int dy = 0; dy < K; dy++) begin
            for (int dx = 0; dx < K; dx++) begin
                word = rows[((row_base + 32'(dy)) & 32'(R - 1)) * ROW_WORDS + column_base
                            + 32'(dx * CB)];
                for (int lane = 0; lane < P; lane++) begin
                    value = word[lane*BITS +: BITS];
                    best = out_data[lane*BITS +: BITS];
                    if (SIGNED ? ($signed(value) > $signed(best)) : (value > best))
                        out_data[lane*BITS +: BITS] = value;
                end
            end
        end
    end
    kiln_rows #(.H(H), .ROW_WORDS(ROW_WORDS), .R(R)) u_rows (
        .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready),
        .first_row(first_row), .need_rows(need_rows), .frame_done(frame_done),
        .rows_ready(rows_ready), .write_enable(write_enable), .write_address(write_address),
        .frame_base(frame_base));
    assign out_valid = rows_ready;
    assign frame_done = out_valid && out_ready && cb == 16'(CB - 1) && ox == 16'(OW - 1)
                        && oy == 16'(OH - 1);

    always_ff @(posedge clk) begin
        if (write_enable) rows[write_address] <= in_data;
    end

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            {oy, ox, cb} <= '0;
        end else if (out_valid && out_ready) begin
            if (cb != 16'(CB - 1)) cb <= cb + 1'b1;
            else begin
                cb <= '0;
                if (ox != 16'(OW - 1)) ox <= ox + 1'b1;
                else begin
                    ox <= '0;
                    oy <= (oy != 16'(OH - 1)) ? oy + 1'b1 : '0;
                end
            end
        end
    end
endmodule
