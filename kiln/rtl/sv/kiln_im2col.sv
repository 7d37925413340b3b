// kiln_im2col: a streamed feature map in, convolution windows out.
//
// Pixels arrive in raster order, each as CB = ceil(C / P) beats of P channel lanes. Once
// a whole frame is stored, every output position (raster order) is emitted as one window
// of FY * FX * CB beats, ordered (ky, kx, channel beat); positions in the padding read
// as the input zero point in every lane. The next frame loads once the windows are out.
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
    localparam int WORDS = H * W * CB;
    localparam int AB = $clog2(WORDS + 1);

    logic [P*BITS-1:0] frame [WORDS];
    logic loading;
    logic [AB-1:0] load_addr;

    // Window generator counters.
    logic [15:0] oy, ox, ky, kx, cb;
    logic signed [31:0] iy, ix;
    logic in_frame;
    logic [P*BITS-1:0] pad_word;
    always_comb begin
        for (int lane = 0; lane < P; lane++) pad_word[lane*BITS +: BITS] = BITS'(ZERO);
        iy = $signed(32'(oy)) * STRIDE - PAD + $signed(32'(ky)) * DILATION;
        ix = $signed(32'(ox)) * STRIDE - PAD + $signed(32'(kx)) * DILATION;
        in_frame = iy >= 0 && iy < H && ix >= 0 && ix < W;
    end
    assign in_ready = loading;
    assign out_valid = !loading;
    assign out_data = in_frame ? frame[(iy * W + ix) * CB + $signed(32'(cb))] : pad_word;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            loading <= 1'b1;
            load_addr <= '0;
            {oy, ox, ky, kx, cb} <= '0;
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
                if (kx != 16'(FX - 1)) kx <= kx + 1'b1;
                else begin
                    kx <= '0;
                    if (ky != 16'(FY - 1)) ky <= ky + 1'b1;
                    else begin
                        ky <= '0;
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
        end
    end
endmodule
