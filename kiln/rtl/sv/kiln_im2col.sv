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
//
// Pipelined for FPGA clocks. The window generator keeps the current beat's input row,
// column and column word in registers, each stepped by one constant add as its counters
// advance (no multiplier). An issued beat's buffer address (row slot and column word, a
// row occupying a power-of-two stride of words) and "inside the image" flag are registered
// in the next cycle, the line buffer is read synchronously at that address the cycle after
// (block RAM or registered distributed RAM), and the padding is substituted as the word
// enters an 8-entry output FIFO; a beat is issued only when the FIFO will have room
// (credit). The rows an output row needs and may release are registered from the window's
// top row: the cycle after the generator moves to another output row, nothing is issued or
// loaded while they catch up.
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
    localparam int COL_BITS = ROW_WORDS > 1 ? $clog2(ROW_WORDS) : 1;
    localparam int ROW_STRIDE = 1 << COL_BITS;
    localparam int WORDS = R * ROW_STRIDE;
    localparam int AB = $clog2(WORDS);
    localparam int SB = ROW_BITS > 0 ? ROW_BITS : 1;   // a row slot
    localparam int CW = 20;                             // signed positions and columns

    logic [P*BITS-1:0] rows [WORDS];
    logic write_enable, rows_ready, frame_done, settle;
    logic [AB-1:0] write_address;
    // row counts for kiln_rows, as narrow as the rows allow (short compares there)
    localparam int RB = $clog2(H + R + 2) + 1;
    localparam logic signed [RB-1:0] NEVER = RB'((1 << (RB - 1)) - 1);  // > any row count
    logic signed [RB-1:0] read_limit, need_rows;   // registers, for kiln_rows

    // Window generator: counters and, for the current beat, the input row iy and column ix
    // it reads, its column word (ix * CB + cb) and its frame's first row slot.
    logic [15:0] oy, ox, ky, kx, cb;
    logic signed [CW-1:0] iy_base;      // oy * STRIDE - PAD: the window's top row
    logic signed [CW-1:0] ix_base;      // ox * STRIDE - PAD: the window's left column
    logic signed [CW-1:0] iy, ix;       // the beat's input row and column
    logic signed [CW-1:0] col_base;     // ix_base * CB
    logic signed [CW-1:0] col_kx;       // ix * CB
    logic signed [CW-1:0] col;          // ix * CB + cb
    logic [SB-1:0] slot_base;           // the beat's frame's first row slot
    logic last_cb, last_kx, last_ky, last_ox, last_oy, last_of_row;
    assign last_cb = cb == 16'(CB - 1);
    assign last_kx = kx == 16'(FX - 1);
    assign last_ky = ky == 16'(FY - 1);
    assign last_ox = ox == 16'(OW - 1);
    assign last_oy = oy == 16'(OH - 1);
    assign last_of_row = last_cb && last_kx && last_ky && last_ox;

    // Output row oy reads the frame's rows [max(top, 0), need): the buffer may hold rows up
    // to max(top, 0) + R, and the row goes out once `need` rows are there. A window that
    // lies wholly in the top padding reads no row, but it belongs to a frame that must have
    // begun: without the floor of 1, a 1x1 conv with padding emitted the next frame's first
    // row before that frame's input existed. Registered from iy_base every cycle.
    // (The clamps compare iy_base itself, beside the adds: one carry chain per register.)
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            read_limit <= RB'(R);
            need_rows <= NEVER;
        end else begin
            read_limit <= iy_base < 0 ? RB'(R) : RB'(iy_base) + RB'(R);
            if (iy_base > CW'(H - SPAN)) need_rows <= RB'(H);
            else if (iy_base < CW'(1 - SPAN)) need_rows <= RB'(1);
            else need_rows <= RB'(iy_base) + RB'(SPAN);
        end
    end
    kiln_rows #(.H(H), .ROW_WORDS(ROW_WORDS), .R(R), .ROW_STRIDE(ROW_STRIDE), .SB(SB),
                .AB(AB), .RB(RB)) u_rows (
        .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready),
        .read_limit(read_limit), .need_rows(need_rows), .frame_done(frame_done),
        .settle(settle), .rows_ready(rows_ready), .write_enable(write_enable),
        .write_address(write_address));
    always_ff @(posedge clk) begin
        if (write_enable) rows[write_address] <= in_data;
    end

    // Issue: a beat leaves the generator when its rows are there and the FIFO has room.
    logic [3:0] credit_used;
    logic issue;
    assign issue = rows_ready && !settle && credit_used != 4'd8;
    assign frame_done = issue && last_of_row && last_oy;

    // The next beat's position, from the current one by one constant add each.
    logic signed [CW-1:0] iy_next, ix_next, col_next, iy_base_next, ix_base_next,
                          col_base_next, col_kx_next;
    always_comb begin
        iy_base_next = iy_base;
        ix_base_next = ix_base;
        col_base_next = col_base;
        iy_next = iy;
        ix_next = ix;
        col_kx_next = col_kx;
        col_next = col + 1'b1;
        if (last_cb) begin
            if (!last_kx) begin
                ix_next = ix + CW'(DILATION);
                col_kx_next = col_kx + CW'(DILATION * CB);
                col_next = col_kx_next;
            end else begin
                if (!last_ky) begin
                    iy_next = iy + CW'(DILATION);
                end else begin
                    if (!last_ox) begin
                        ix_base_next = ix_base + CW'(STRIDE);
                        col_base_next = col_base + CW'(STRIDE * CB);
                    end else begin
                        ix_base_next = -CW'(PAD);
                        col_base_next = -CW'(PAD * CB);
                        iy_base_next = last_oy ? -CW'(PAD) : iy_base + CW'(STRIDE);
                    end
                    iy_next = iy_base_next;
                end
                ix_next = ix_base_next;
                col_kx_next = col_base_next;
                col_next = col_base_next;
            end
        end
    end

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            {oy, ox, ky, kx, cb} <= '0;
            iy_base <= -CW'(PAD);
            ix_base <= -CW'(PAD);
            col_base <= -CW'(PAD * CB);
            iy <= -CW'(PAD);
            ix <= -CW'(PAD);
            col_kx <= -CW'(PAD * CB);
            col <= -CW'(PAD * CB);
            slot_base <= '0;
            settle <= 1'b1;
        end else begin
            settle <= issue && last_of_row;
            if (issue) begin
                if (!last_cb) cb <= cb + 1'b1;
                else begin
                    cb <= '0;
                    if (!last_kx) kx <= kx + 1'b1;
                    else begin
                        kx <= '0;
                        if (!last_ky) ky <= ky + 1'b1;
                        else begin
                            ky <= '0;
                            if (!last_ox) ox <= ox + 1'b1;
                            else begin
                                ox <= '0;
                                oy <= last_oy ? '0 : oy + 1'b1;
                            end
                        end
                    end
                end
                iy_base <= iy_base_next;
                ix_base <= ix_base_next;
                col_base <= col_base_next;
                iy <= iy_next;
                ix <= ix_next;
                col_kx <= col_kx_next;
                col <= col_next;
                if (frame_done) slot_base <= slot_base + SB'(H % R);
            end
        end
    end

    // Address stage: the issued beat's buffer address and whether it lies in the image.
    logic [AB-1:0] address;
    logic address_valid, address_in_image;
    always_ff @(posedge clk) begin
        if (issue) begin
            if (ROW_BITS == 0) address <= AB'(col[COL_BITS-1:0]);
            else address <= AB'({SB'(slot_base + SB'(iy)), col[COL_BITS-1:0]});
            address_in_image <= iy >= 0 && iy < CW'(H) && ix >= 0 && ix < CW'(W);
        end
    end

    // Read stage: the word at the registered address, then the padding substituted.
    // (The block RAM's output gets a register of its own before the padding multiplexer.)
    logic [P*BITS-1:0] word_read, word;
    logic data_valid, data_in_image, read_valid, read_in_image;
    always_ff @(posedge clk) begin
        word_read <= rows[address];
        word <= word_read;
        data_in_image <= address_in_image;
        read_in_image <= data_in_image;
    end
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            address_valid <= 1'b0;
            data_valid <= 1'b0;
            read_valid <= 1'b0;
        end else begin
            address_valid <= issue;
            data_valid <= address_valid;
            read_valid <= data_valid;
        end
    end
    logic [P*BITS-1:0] pad_word;
    always_comb
        for (int lane = 0; lane < P; lane++) pad_word[lane*BITS +: BITS] = BITS'(ZERO);

    // Output FIFO: 8 entries, room guaranteed by the credit.
    logic pop;
    assign pop = out_valid && out_ready;
    kiln_fifo #(.WIDTH(P*BITS), .DEPTH(8)) u_fifo (
        .clk(clk), .rst_n(rst_n), .push(read_valid),
        .push_data(read_in_image ? word : pad_word), .out_valid(out_valid),
        .out_ready(out_ready), .out_data(out_data));
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) credit_used <= '0;
        else credit_used <= credit_used + 4'(issue) - 4'(pop);
    end
endmodule
