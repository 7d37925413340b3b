// kiln_maxpool: max pooling of a streamed feature map (raster order, CB beats of P
// lanes per pixel). The frame is stored, then each pooled pixel is emitted as CB beats,
// each lane the maximum over its window (signed or unsigned compare).
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
    localparam int WORDS = H * W * CB;
    localparam int AB = $clog2(WORDS + 1);

    logic [P*BITS-1:0] frame [WORDS];
    logic loading;
    logic [AB-1:0] load_addr;
    logic [15:0] oy, ox, cb;

    always_comb begin
        for (int lane = 0; lane < P; lane++) begin
            logic [BITS-1:0] best;
            best = frame[(32'(oy) * STRIDE * W + 32'(ox) * STRIDE) * CB + 32'(cb)]
                        [lane*BITS +: BITS];
            for (int dy = 0; dy < K; dy++) begin
                for (int dx = 0; dx < K; dx++) begin
                    logic [BITS-1:0] value;
                    value = frame[((32'(oy) * STRIDE + dy) * W + 32'(ox) * STRIDE + dx) * CB
                                  + 32'(cb)][lane*BITS +: BITS];
                    if (SIGNED ? ($signed(value) > $signed(best)) : (value > best))
                        best = value;
                end
            end
            out_data[lane*BITS +: BITS] = best;
        end
    end
    assign in_ready = loading;
    assign out_valid = !loading;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            loading <= 1'b1;
            load_addr <= '0;
            {oy, ox, cb} <= '0;
        end else if (loading) begin
            if (in_valid) begin
                frame[load_addr] <= in_data;
                if (load_addr == AB'(WORDS - 1)) begin
                    load_addr <= '0;
                    loading <= 1'b0;
                end else begin
                    load_addr <= load_addr + 1'b1;
                end
            end
        end else if (out_ready) begin
            if (cb != 16'(CB - 1)) cb <= cb + 1'b1;
            else begin
                cb <= '0;
                if (ox != 16'(OW - 1)) ox <= ox + 1'b1;
                else begin
                    ox <= '0;
                    if (oy != 16'(OH - 1)) oy <= oy + 1'b1;
                    else begin
                        oy <= '0;
                        loading <= 1'b1;
                    end
                end
            end
        end
    end
endmodule
