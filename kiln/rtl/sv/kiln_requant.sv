// kiln_requant: int32 accumulator -> output integer, as kiln's engine does it.
//   out = clamp(((acc * M0) + round) >>> (31 + n) + OUT_ZERO, LO, HI)
// with round = 2^(30+n) when ROUND_NEAREST (round half up), 0 for floor.
// Combinational; M0 in [2^30, 2^31), n signed (31 + n in [0, 62]).
module kiln_requant #(
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter bit ROUND_NEAREST = 1
) (
    input  logic signed [31:0] acc,
    input  logic        [31:0] m0,
    input  logic signed [7:0]  shift,
    output logic [OUT_BITS-1:0] out
);
    logic signed [63:0] product;
    logic signed [63:0] rounded;
    logic signed [63:0] scaled;
    logic signed [63:0] biased;
    logic [6:0] total_shift;
    always_comb begin
        total_shift = 7'(8'sd31 + shift);
        product = 64'(acc) * $signed({32'd0, m0});
        if (ROUND_NEAREST && total_shift != 0)
            rounded = product + (64'sd1 <<< (total_shift - 7'd1));
        else
            rounded = product;
        scaled = rounded >>> total_shift;
        biased = scaled + 64'(OUT_ZERO);
        if (biased < 64'(LO))
            out = OUT_BITS'(LO);
        else if (biased > 64'(HI))
            out = OUT_BITS'(HI);
        else
            out = OUT_BITS'(biased);
    end
endmodule
