// kiln_fifo: a small first-in first-out queue (DEPTH a power of two, distributed RAM) for the
// units' outputs. The writer pushes only when it holds a credit for the entry, so push never
// finds it full; the reader sees out_valid/out_data and pops with out_ready.
module kiln_fifo #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 4
) (
    input  logic clk,
    input  logic rst_n,
    input  logic push,
    input  logic [WIDTH-1:0] push_data,
    output logic out_valid,
    input  logic out_ready,
    output logic [WIDTH-1:0] out_data
);
    localparam int AB = $clog2(DEPTH);
    logic [WIDTH-1:0] entries [DEPTH];
    logic [AB-1:0] head, tail;
    logic [AB:0] count;
    logic pop;
    assign pop = out_valid && out_ready;
    assign out_valid = count != '0;
    assign out_data = entries[head];
    always_ff @(posedge clk) if (push) entries[tail] <= push_data;
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin
            head <= '0;
            tail <= '0;
            count <= '0;
        end else begin
            if (push) tail <= tail + 1'b1;
            if (pop) head <= head + 1'b1;
            count <= count + (AB + 1)'(push) - (AB + 1)'(pop);
        end
    end
endmodule
