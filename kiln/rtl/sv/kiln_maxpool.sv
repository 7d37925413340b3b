// kiln_maxpool: max pooling of a streamed feature map (raster order, CB beats of P
// lanes per pixel) through a line buffer of R rows (K rounded up to a power of two, see
// kiln_rows): each pooled pixel is emitted as CB beats, each lane the maximum over its
// K x K window (signed or unsigned compare), as soon as the window's rows have arrived.
//
// Pipelined for FPGA clocks: the K x K words of a beat are read one per cycle through one
// synchronous read port (block RAM or registered distributed RAM; rows and columns kept in
// registers and stepped by constants, the address registered the cycle after a read is
// issued; a row occupies a power-of-two stride of words), a running maximum takes them in
// the cycle after, and a 4-entry output FIFO holds the results in flight (a beat's last
// read is issued only when the FIFO will have room). Reading takes OH * OW * CB * K * K
// cycles per frame, while the next rows load through the write port. The rows an output row
// needs and may release are registered from its top row: the cycle after the generator moves
// to another output row, nothing is issued or loaded while they catch up.
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
    localparam int COL_BITS = ROW_WORDS > 1 ? $clog2(ROW_WORDS) : 1;
    localparam int ROW_STRIDE = 1 << COL_BITS;
    localparam int WORDS = R * ROW_STRIDE;
    localparam int AB = $clog2(WORDS);
    localparam int SB = ROW_BITS > 0 ? ROW_BITS : 1;

    logic [P*BITS-1:0] rows [WORDS];
    logic write_enable, rows_ready, frame_done, settle;
    logic [AB-1:0] write_address;
    // row counts for kiln_rows, as narrow as the rows allow (short compares there)
    localparam int RB = $clog2(H + R + 2) + 1;
    localparam logic signed [RB-1:0] NEVER = RB'((1 << (RB - 1)) - 1);  // > any row count
    logic signed [RB-1:0] read_limit, need_rows;   // registers, for kiln_rows

    // Generator: the output beat (oy, ox, cb) and the window word (dy, dx) it reads now;
    // row_base = oy * STRIDE, row = row_base + dy, col_base = ox * STRIDE * CB + cb and
    // col = col_base + dx * CB, all in registers, and the frame's first row slot.
    logic [15:0] oy, ox, cb, dy, dx;
    logic [15:0] row_base, row, col_base, col;
    logic [SB-1:0] slot_base;
    logic last_dx, last_dy, last_cb, last_ox, last_oy, last_read, last_of_row;
    assign last_dx = dx == 16'(K - 1);
    assign last_dy = dy == 16'(K - 1);
    assign last_cb = cb == 16'(CB - 1);
    assign last_ox = ox == 16'(OW - 1);
    assign last_oy = oy == 16'(OH - 1);
    assign last_read = last_dx && last_dy;
    assign last_of_row = last_read && last_cb && last_ox;
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            read_limit <= RB'(R);
            need_rows <= NEVER;
        end else begin
            read_limit <= RB'(row_base) + RB'(R);
            need_rows <= RB'(row_base) + RB'(K);
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

    logic [2:0] credit_used;
    logic issue;
    assign issue = rows_ready && !settle && !(last_read && credit_used == 3'd4);
    assign frame_done = issue && last_of_row && last_oy;

    // The next read's row and column, from the current ones by one constant add each.
    logic [15:0] row_base_next, row_next, col_base_next, col_next;
    always_comb begin
        row_base_next = row_base;
        col_base_next = col_base;
        row_next = row;
        col_next = col + 16'(CB);
        if (last_dx) begin
            col_next = col_base;
            row_next = row + 1'b1;
            if (last_dy) begin
                if (!last_cb) col_base_next = col_base + 1'b1;
                else if (!last_ox) col_base_next = col_base + 16'(STRIDE * CB) - 16'(CB - 1);
                else begin
                    col_base_next = '0;
                    row_base_next = last_oy ? '0 : row_base + 16'(STRIDE);
                end
                col_next = col_base_next;
                row_next = row_base_next;
            end
        end
    end

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            {oy, ox, cb, dy, dx} <= '0;
            {row_base, row, col_base, col} <= '0;
            slot_base <= '0;
            settle <= 1'b1;
        end else begin
            settle <= issue && last_of_row;
            if (issue) begin
                if (!last_dx) dx <= dx + 1'b1;
                else begin
                    dx <= '0;
                    if (!last_dy) dy <= dy + 1'b1;
                    else begin
                        dy <= '0;
                        if (!last_cb) cb <= cb + 1'b1;
                        else begin
                            cb <= '0;
                            if (!last_ox) ox <= ox + 1'b1;
                            else begin
                                ox <= '0;
                                oy <= last_oy ? '0 : oy + 1'b1;
                            end
                        end
                    end
                end
                row_base <= row_base_next;
                col_base <= col_base_next;
                row <= row_next;
                col <= col_next;
                if (frame_done) slot_base <= slot_base + SB'(H % R);
            end
        end
    end

    // Address stage: the issued read's buffer address, its first and last word flags.
    logic [AB-1:0] address;
    logic address_valid, address_first, address_last;
    always_ff @(posedge clk) begin
        if (issue) begin
            if (ROW_BITS == 0) address <= AB'(col[COL_BITS-1:0]);
            else address <= AB'({SB'(slot_base + SB'(row)), col[COL_BITS-1:0]});
            address_first <= dx == '0 && dy == '0;
            address_last <= last_read;
        end
    end
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) address_valid <= 1'b0;
        else address_valid <= issue;
    end

    // Read, then the running maximum; the beat's maximum goes into the FIFO.
    // (The block RAM's output gets a register of its own before the compare.)
    logic [P*BITS-1:0] word_read, word, best, larger;
    logic data_valid, data_first, data_last, read_valid, read_first, read_last;
    always_ff @(posedge clk) begin
        word_read <= rows[address];
        word <= word_read;
    end
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) {data_valid, data_first, data_last, read_valid, read_first, read_last} <= '0;
        else begin
            {data_valid, data_first, data_last} <= {address_valid, address_first, address_last};
            {read_valid, read_first, read_last} <= {data_valid, data_first, data_last};
        end
    end
    always_comb begin
        for (int lane = 0; lane < P; lane++) begin
            logic [BITS-1:0] value, held;
            value = word[lane*BITS +: BITS];
            held = best[lane*BITS +: BITS];
            if (read_first || (SIGNED ? ($signed(value) > $signed(held)) : (value > held)))
                larger[lane*BITS +: BITS] = value;
            else
                larger[lane*BITS +: BITS] = held;
        end
    end
    always_ff @(posedge clk) if (read_valid) best <= larger;

    logic push, pop;
    assign push = read_valid && read_last;
    assign pop = out_valid && out_ready;
    kiln_fifo #(.WIDTH(P*BITS), .DEPTH(4)) u_fifo (
        .clk(clk), .rst_n(rst_n), .push(push), .push_data(larger), .out_valid(out_valid),
        .out_ready(out_ready), .out_data(out_data));
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) credit_used <= '0;
        else credit_used <= credit_used + 3'(issue && last_read) - 3'(pop);
    end
endmodule
