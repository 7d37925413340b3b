// kiln_requant: int32 accumulator -> output integer, as kiln's engine does it.
//   out = clamp(((acc * M0) + round) >>> (31 + n) + OUT_ZERO, LO, HI)
// with round = 2^(30+n) when ROUND_NEAREST (round half up), 0 for floor.
// Combinational; M0 in [2^30, 2^31), n signed (31 + n in [0, 62]).
// FLOAT32 = 1 computes ONNX Runtime's rint(float32(acc) * float32(M)) in integers: m0 holds
// M's 24-bit mantissa and shift its exponent (M = m0 * 2^-shift); |acc| is rounded to 24
// significant bits, multiplied, the product rounded to 24 significant bits, then shifted
// right rounding half to even; the sign is applied last (float rounding is symmetric).
module kiln_requant #(
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter bit ROUND_NEAREST = 1,
    parameter bit FLOAT32 = 0
) (
    input  logic signed [31:0] acc,
    input  logic        [31:0] m0,
    input  logic signed [7:0]  shift,
    output logic [OUT_BITS-1:0] out
);
    logic signed [63:0] scaled;
    logic signed [63:0] biased;

    // round_half_even(value / 2^amount)
    function automatic logic [63:0] shift_round_even(input logic [63:0] value, input logic [6:0] amount);
        logic [63:0] kept;
        logic [63:0] remainder;
        logic [63:0] half;
        kept = value >> amount;
        remainder = value - (kept << amount);
        half = (amount == 7'd0) ? 64'd0 : (64'd1 << (amount - 7'd1));
        if (amount != 7'd0 && (remainder > half || (remainder == half && kept[0])))
            kept = kept + 64'd1;
        shift_round_even = kept;
    endfunction

    // value rounded half to even to 24 significant bits (a float32 significand)
    function automatic logic [63:0] round_to_24_bits(input logic [63:0] value);
        logic [6:0] top;
        logic [6:0] amount;
        top = 7'd0;
        for (int i = 0; i < 64; i++)
            if (value[i]) top = 7'(i);
        amount = (top > 7'd23) ? top - 7'd23 : 7'd0;
        round_to_24_bits = shift_round_even(value, amount) << amount;
    endfunction

    // Only the selected rounding is built: in an event-driven simulator (Icarus) the
    // float32 path's bit scans would otherwise run on every accumulator change.
    generate
        if (FLOAT32) begin : g_float32
            logic signed [63:0] wide_acc;
            logic [63:0] magnitude;
            logic [63:0] magnitude24;
            logic [63:0] product24;
            logic [63:0] float_result;
            always_comb begin
                wide_acc = 64'(acc);
                magnitude = acc[31] ? 64'(64'sd0 - wide_acc) : 64'(wide_acc);
                magnitude24 = round_to_24_bits(magnitude);
                product24 = round_to_24_bits(magnitude24 * {40'd0, m0[23:0]});
                float_result = shift_round_even(product24, 7'(shift));
                scaled = acc[31] ? -$signed(float_result) : $signed(float_result);
            end
        end else begin : g_fixed
            logic signed [63:0] product;
            logic signed [63:0] rounded;
            logic [6:0] total_shift;
            always_comb begin
                total_shift = 7'(8'sd31 + shift);
                product = 64'(acc) * $signed({32'd0, m0});
                if (ROUND_NEAREST && total_shift != 0)
                    rounded = product + (64'sd1 <<< (total_shift - 7'd1));
                else
                    rounded = product;
                scaled = rounded >>> total_shift;
            end
        end
    endgenerate

    always_comb begin
        biased = scaled + 64'(OUT_ZERO);
        if (biased < 64'(LO))
            out = OUT_BITS'(LO);
        else if (biased > 64'(HI))
            out = OUT_BITS'(HI);
        else
            out = OUT_BITS'(biased);
    end
endmodule
