// kiln_im2col: a streamed feature map in, convolution windows out, through a line buffer.
//
// Pixels arrive in raster order, each as CB = ceil(C / P) beats of P channel lanes. Only
// the last R input rows are kept (R = the window's height DILATION*(FY-1)+1 rounded up
// to a power of two), in a circular buffer of R rows indexed by a running row count that
// continues across frames. Output row oy is emitted as soon as the rows it reads have
// arrived; a row is accepted as soon as the row it replaces is no longer read, so loading
// and emitting overlap, also across frames (the next frame's first rows load while the
// last windows of this one go out). Every output position (raster order) is one window of
// FY * FX * CB beats, ordered (ky, kx, channel beat); positions in the padding read as the
// input zero point in every lane. Rows below the last window are loaded and never read.
module kiln_im2col #(
    parameter int H = 28,
    parameter int W = 28,
    parameter int CB = 1,
    parameter int P = 4,
    parameter int BITS = 8,
    parameter int ZERO = 0,
    parameter int FY = 3,
    parameter int FX = 3,
    parameter int STRIDE = 1,
    parameter int PAD = 1,
    parameter int DILATION = 1
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
    localparam int OH = (H + 2 * PAD - DILATION * (FY - 1) - 1) / STRIDE + 1;
    localparam int OW = (W + 2 * PAD - DILATION * (FX - 1) - 1) / STRIDE + 1;
    localparam int SPAN = DILATION * (FY - 1) + 1;
    localparam int ROW_BITS = (SPAN > 1) ? $clog2(SPAN) : 0;
    localparam int R = 1 << ROW_BITS;
    localparam int ROW_WORDS = W * CB;
    localparam int WORDS = R * ROW_WORDS;

    logic [P*BITS-1:0] rows [WORDS];
    logic write_enable, rows_ready, frame_done;
    logic [31:0] write_address, frame_base;

    // Window generator counters.
    logic [15:0] oy, ox, ky, kx, cb;
    logic signed [31:0] iy, ix, first_row, need_rows;
    logic in_frame;
    logic [P*BITS-1:0] pad_word;
    always_comb begin
        for (int lane = 0; lane < P; lane++) pad_word[lane*BITS +: BITS] = BITS'(ZERO);
        iy = $signed(32'(oy)) * STRIDE - PAD + $signed(32'(ky)) * DILATION;
        ix = $signed(32'(ox)) * STRIDE - PAD + $signed(32'(kx)) * DILATION;
        in_frame = iy >= 0 && iy < H && ix >= 0 && ix < W;
        // Output row oy reads the frame's rows [first_row, need_rows).
        first_row = $signed(32'(oy)) * STRIDE - PAD;
        if (first_row < 0) first_row = 0;
        need_rows = $signed(32'(oy)) * STRIDE - PAD + SPAN;
        if (need_rows > H) need_rows = H;
        // A window that lies wholly in the top padding reads no row, but it belongs to a
        // frame that must have begun: without this, a 1x1 conv with padding emitted the
        // next frame's first row before that frame's input existed.
        if (need_rows < 1) need_rows = 1;
    end
    kiln_rows #(.H(H), .ROW_WORDS(ROW_WORDS), .R(R)) u_rows (
        .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready),
        .first_row(first_row), .need_rows(need_rows), .frame_done(frame_done),
        .rows_ready(rows_ready), .write_enable(write_enable), .write_address(write_address),
        .frame_base(frame_base));
    assign out_valid = rows_ready;
    assign out_data = in_frame
        ? rows[((frame_base + 32'(iy)) & 32'(R - 1)) * ROW_WORDS + 32'(ix * CB) + 32'(cb)]
        : pad_word;
    assign frame_done = out_valid && out_ready && cb == 16'(CB - 1) && kx == 16'(FX - 1)
                        && ky == 16'(FY - 1) && ox == 16'(OW - 1) && oy == 16'(OH - 1);

    always_ff @(posedge clk) begin
        if (write_enable) rows[write_address] <= in_data;
    end

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            {oy, ox, ky, kx, cb} <= '0;
        end else if (out_valid && out_ready) begin
            if (cb != 16'(CB - 1)) cb <= cb + 1'b1;
            else begin
                cb <= '0;
                if (kx != 16'(FX - 1)) kx <= kx + 1'b1;
                else begin
                    kx <= '0;
                    if (ky != 16'(FY - 1)) ky <= ky + 1'b1;
                    else begin
                        ky <= '0;
                        if (ox != 16'(OW - 1)) ox <= ox + 1'b1;
                        else begin
                            ox <= '0;
                            oy <= (oy != 16'(OH - 1)) ? oy + 1'b1 : '0;
                        end
                    end
                end
            end
        end
    end
endmodule
