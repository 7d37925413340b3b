// kiln_skip_fifo: a deep valid/ready queue for the short branch of a fork (the skip path of a
// residual block), DEPTH entries in block RAM. The memory is read synchronously, one read in
// flight at a time ahead of a small output queue of its own, so that a beat can leave every
// cycle. in_ready depends only on registers (never on in_valid).
module kiln_skip_fifo #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 16   // a power of two
) (
    input  logic clk,
    input  logic rst_n,
    input  logic in_valid,
    output logic in_ready,
    input  logic [WIDTH-1:0] in_data,
    output logic out_valid,
    input  logic out_ready,
    output logic [WIDTH-1:0] out_data
);
    localparam int AB = DEPTH > 1 ? $clog2(DEPTH) : 1;
    logic [WIDTH-1:0] entries [DEPTH];
    logic [AB-1:0] head, tail;
    logic [AB:0] stored;       // entries in the memory, not yet read
    logic reading;             // a read in flight: its word is in `read_word` next cycle
    logic [WIDTH-1:0] read_word;
    logic [2:0] queued;        // words in the output queue
    logic fetch, push, pop;
    assign in_ready = stored != (AB + 1)'(DEPTH);
    assign push = in_valid && in_ready;
    // Room in the output queue (4 entries) for every word in flight: at most one read in
    // flight and three queued.
    assign fetch = stored != '0 && (3'(reading) + queued) < 3'd3;
    always_ff @(posedge clk) begin
        if (push) entries[tail] <= in_data;
        if (fetch) read_word <= entries[head];
    end

    // The output queue: kiln_fifo (4 entries); `fetch` only reads with room for the word.
    kiln_fifo #(.WIDTH(WIDTH), .DEPTH(4)) u_queue (
        .clk(clk), .rst_n(rst_n), .push(reading), .push_data(read_word),
        .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data));
    assign pop = out_valid && out_ready;

    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            head <= '0;
            tail <= '0;
            stored <= '0;
            reading <= 1'b0;
            queued <= '0;
        end else begin
            if (push) tail <= tail + 1'b1;
            if (fetch) head <= head + 1'b1;
            stored <= stored + (AB + 1)'(push) - (AB + 1)'(fetch);
            reading <= fetch;
            queued <= queued + 3'(reading) - 3'(pop);
        end
    end
endmodule
