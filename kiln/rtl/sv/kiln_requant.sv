// kiln_requant: an accumulator -> output integer, as kiln's engine does it, pipelined.
//   out = clamp(((acc * M) + round) >>> s + OUT_ZERO, LO, HI)
// with round = 2^(s-1) when ROUND_NEAREST (round half up), 0 for floor.
// The emitter narrows the engine's (M0, 31 + n) per channel to the fewest multiplier bits
// that give the same output for every accumulator the layer can produce (kiln.rtl.requant):
// acc is ACC_BITS wide, m is an unsigned M_BITS integer, s = 31 + n - (31 - M_BITS') >= 1
// in nearest mode. The input `shift` holds s - 1 (nearest) or s (floor): the shifter then
// keeps one fraction bit, and round half up is (t + 1) >>> 1.
// LATENCY = 7 registers from the inputs to `out`, one stage each for: the inputs (after the
// caller's lane multiplexer), each tile's operands, the product's 18x18 tiles (one
// MULT18X18D each, registered), their sum, the variable shift, the rounding add, and the
// clamp (compares against constants, in parallel with a narrow add of the zero point). It takes a new input every
// cycle. PASSES > 1 (= TILES) time-shares one DSP tile instead: the inputs are taken when
// `start` is high, each pass's operands are selected into registers of their own (nothing
// but routing in front of the DSP), the tiles are multiplied one per cycle and summed, and
// the result comes out LATENCY = PASSES + 6 cycles after `start`; a new input every PASSES
// cycles. The caller
// chooses it when the layer leaves the requantizers that much time and it saves DSPs.
// FLOAT32 = 1 computes ONNX Runtime's rint(float32(acc) * float32(M)) in integers: m holds
// M's 24-bit mantissa and shift its exponent (M = m * 2^-shift); |acc| is rounded to 24
// significant bits, multiplied, the product rounded to 24 significant bits, then shifted
// right rounding half to even; the sign is applied last (float rounding is symmetric).
// That path is one long stage (its bit scans are not pipelined) and runs at a lower clock.
module kiln_requant #(
    parameter int ACC_BITS = 32,
    parameter int M_BITS = 31,
    parameter int OUT_BITS = 8,
    parameter int OUT_ZERO = 0,
    parameter int LO = 0,
    parameter int HI = 255,
    parameter bit ROUND_NEAREST = 1,
    parameter bit FLOAT32 = 0,
    parameter int PASSES = 1
) (
    input  logic clk,
    /* verilator lint_off UNUSEDSIGNAL */  // used with PASSES > 1
    input  logic rst_n,
    /* verilator lint_on UNUSEDSIGNAL */
    input  logic start,  // PASSES > 1: take the inputs (ignored with PASSES = 1)
    input  logic signed [ACC_BITS-1:0] acc,
    input  logic        [M_BITS-1:0]   m,
    input  logic        [6:0]          shift,
    output logic [OUT_BITS-1:0] out
);
    localparam int PW = ACC_BITS + M_BITS + 1;  // the signed product
    // Bounds on the shifted value t (before the zero point): below LO - OUT_ZERO gives LO,
    // above HI - OUT_ZERO gives HI.
    localparam longint LOW = longint'(LO) - longint'(OUT_ZERO);
    localparam longint HIGH = longint'(HI) - longint'(OUT_ZERO);

    // round_half_even(value / 2^amount)
    function automatic logic [63:0] shift_round_even(input logic [63:0] value,
                                                     input logic [6:0] amount);
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

    // Stage 1: the inputs.
    logic signed [ACC_BITS-1:0] acc_1;
    logic [M_BITS-1:0] m_1;
    logic [6:0] shift_1;
    always_ff @(posedge clk) begin
        if (PASSES == 1 || start) begin
            acc_1 <= acc;
            m_1 <= m;
            shift_1 <= shift;
        end
    end

    generate
        if (FLOAT32) begin : g_float32
            logic signed [63:0] scaled;
            logic signed [63:0] biased;
            logic [OUT_BITS-1:0] result;
            logic signed [63:0] wide_acc;
            logic [63:0] magnitude;
            logic [63:0] magnitude24;
            logic [63:0] product24;
            logic [63:0] float_result;
            always_comb begin
                wide_acc = 64'(acc_1);
                magnitude = acc_1[ACC_BITS-1] ? 64'(64'sd0 - wide_acc) : 64'(wide_acc);
                magnitude24 = round_to_24_bits(magnitude);
                product24 = round_to_24_bits(magnitude24 * 64'(m_1));
                float_result = shift_round_even(product24, shift_1);
                scaled = acc_1[ACC_BITS-1] ? -$signed(float_result) : $signed(float_result);
                biased = scaled + 64'(OUT_ZERO);
                if (biased < 64'(LO)) result = OUT_BITS'(LO);
                else if (biased > 64'(HI)) result = OUT_BITS'(HI);
                else result = OUT_BITS'(biased);
            end
            // The result goes through the remaining stages' registers unchanged, so that
            // both modes have the same latency (PASSES = 1: 7).
            // (`out` is written by a process in both modes: Icarus drops a continuous
            // assignment to it from one generate branch.)
            logic [5*OUT_BITS-1:0] delay;
            always_ff @(posedge clk) begin
                delay <= {delay[4*OUT_BITS-1:0], result};
                out <= delay[5*OUT_BITS-1 -: OUT_BITS];
            end
        end else begin : g_fixed
            // Stage 2: the product.
            logic signed [PW-1:0] product_2;
            logic [6:0] shift_2;
            // Chunks: acc as a low unsigned 17-bit part and a signed high part (or one
            // signed part up to 18 bits); m as unsigned 17-bit parts. Each tile is an
            // 18x18 signed product (one DSP); tile (i, j) weighs 2^(17(i + j)).
            localparam int A_CHUNKS = ACC_BITS > 18 ? 2 : 1;
            localparam int M_CHUNKS = (M_BITS + 16) / 17;
            localparam int TILES = A_CHUNKS * M_CHUNKS;
            logic [34:0] acc_wide;
            logic [17*M_CHUNKS-1:0] m_wide;
            assign acc_wide = 35'(acc_1);
            assign m_wide = (17*M_CHUNKS)'(m_1);
            if (PASSES == 1) begin : g_parallel
                // Every tile at once, a kiln_mul each: its operands in registers of its own
                // and the product registered (on an ECP5 both inside the DSP block, not
                // fabric registers the placer puts far from it), then summed: no path runs
                // through a DSP and an adder of its partial products.
                logic [TILES*36-1:0] tiles;
                logic [6:0] shift_operand, shift_t;
                genvar tile;
                for (tile = 0; tile < TILES; tile++) begin : g_tile
                    // acc's chunk: all of it (one chunk), its low 17 bits, or its high part
                    localparam int A_CHUNK = A_CHUNKS == 1 ? 2 : tile / M_CHUNKS;
                    logic [17:0] a_chunk, m_chunk;
                    assign a_chunk = A_CHUNK == 2 ? acc_wide[17:0]
                                   : A_CHUNK == 0 ? {1'b0, acc_wide[16:0]} : acc_wide[34:17];
                    assign m_chunk = {1'b0, m_wide[17*(tile % M_CHUNKS) +: 17]};
                    kiln_mul #(.A_BITS(18), .B_BITS(18)) u_mul (
                        .clk(clk), .a(a_chunk), .b(m_chunk), .p(tiles[tile*36 +: 36]));
                end
                always_ff @(posedge clk) begin
                    shift_operand <= shift_1;
                    shift_t <= shift_operand;
                end
                always_ff @(posedge clk) begin
                    logic signed [PW-1:0] sum;
                    sum = '0;
                    for (int k = 0; k < TILES; k++)
                        sum = sum + (PW'($signed(tiles[k*36 +: 36]))
                                     <<< (17 * (k / M_CHUNKS + k % M_CHUNKS)));
                    product_2 <= sum;
                    shift_2 <= shift_t;
                end
            end else begin : g_passes
                localparam int PB = PASSES > 1 ? $clog2(PASSES) : 1;
                logic [PB-1:0] pass;
                logic running;
                logic signed [17:0] a_part, m_part;
                logic [2:0] weight;   // i + j
                // Pass k multiplies chunk k / M_CHUNKS of acc by chunk k % M_CHUNKS of m
                // (constant selects: no arithmetic on the pass number).
                always_comb begin
                    a_part = '0;
                    m_part = '0;
                    weight = '0;
                    for (int k = 0; k < PASSES; k++) begin
                        if (pass == PB'(k)) begin
                            if (A_CHUNKS == 1) a_part = acc_wide[17:0];
                            else if (k / M_CHUNKS == 0) a_part = {1'b0, acc_wide[16:0]};
                            else a_part = acc_wide[34:17];
                            m_part = {1'b0, m_wide[17*(k % M_CHUNKS) +: 17]};
                            weight = 3'(k / M_CHUNKS + k % M_CHUNKS);
                        end
                    end
                end
                always_ff @(posedge clk or negedge rst_n) begin
                    if (!rst_n) begin
                        pass <= '0;
                        running <= 1'b0;
                    end else if (start) begin
                        pass <= '0;
                        running <= 1'b1;
                    end else if (running) begin
                        pass <= pass + 1'b1;
                        running <= pass != PB'(PASSES - 1);
                    end
                end
                // The pass's operands and the tile's product in kiln_mul's registers (on an
                // ECP5 the DSP block's own: the selection stays out of the DSP's cycle),
                // then its sum.
                /* verilator lint_off UNUSEDSIGNAL */  // a sum narrower than 36 bits
                logic [35:0] tile_product;  // kiln_mul: operands registered, then product
                /* verilator lint_on UNUSEDSIGNAL */
                kiln_mul #(.A_BITS(18), .B_BITS(18)) u_mul (
                    .clk(clk), .a(a_part), .b(m_part), .p(tile_product));
                logic [2:0] operand_weight;
                logic operand_valid, operand_first, operand_last;
                logic [6:0] operand_shift;
                // (no wider than the sum: the sum is exact modulo 2^PW)
                localparam int TW = PW < 36 ? PW : 36;
                logic signed [TW-1:0] tile;
                assign tile = TW'($signed(tile_product));
                logic [2:0] tile_weight;
                logic tile_valid, tile_first, tile_last;
                logic [6:0] tile_shift;
                always_ff @(posedge clk) begin
                    operand_weight <= weight;
                    operand_valid <= running;
                    operand_first <= pass == '0;
                    operand_last <= pass == PB'(PASSES - 1);
                    operand_shift <= shift_1;
                    tile_weight <= operand_weight;
                    tile_valid <= operand_valid;
                    tile_first <= operand_first;
                    tile_last <= operand_last;
                    tile_shift <= operand_shift;
                end
                // The tile at its weight: a multiplexer of constant shifts (written as a
                // variable shift, Yosys turns 2^(17 w) into another multiplier).
                logic signed [PW-1:0] placed, sum, sum_next;
                always_comb begin
                    placed = PW'(tile);
                    for (int w = 1; w < A_CHUNKS + M_CHUNKS - 1; w++)
                        if (tile_weight == 3'(w)) placed = PW'(tile) <<< (17 * w);
                end
                assign sum_next = (tile_first ? PW'(0) : sum) + placed;
                always_ff @(posedge clk) begin
                    if (tile_valid) sum <= sum_next;
                    if (tile_valid && tile_last) begin
                        product_2 <= sum_next;
                        shift_2 <= tile_shift;
                    end
                end
            end
            // Stage 3: the variable arithmetic shift.
            logic signed [PW-1:0] shifted_3;
            always_ff @(posedge clk) shifted_3 <= product_2 >>> shift_2;
            // Stage 4: round half up (the shifter kept one fraction bit), or floor.
            logic signed [PW-1:0] value_4;
            always_ff @(posedge clk) begin
                if (ROUND_NEAREST) value_4 <= (shifted_3 + PW'(1)) >>> 1;
                else value_4 <= shifted_3;
            end
            // Stage 5: saturate to [LO, HI] or add the zero point (only the output's bits).
            always_ff @(posedge clk) begin
                if (64'(value_4) < LOW) out <= OUT_BITS'(LO);
                else if (64'(value_4) > HIGH) out <= OUT_BITS'(HI);
                else out <= OUT_BITS'(value_4) + OUT_BITS'(OUT_ZERO);
            end
        end
    endgenerate
endmodule
