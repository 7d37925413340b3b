// kiln's test bench top for BARVINN's MVU RTL (mvutop_wrapper), MVU 0 only.
//
// mvutop_wrapper cannot be the simulator's top (interface ports), so this module owns the
// APB and MVU_EXT interfaces and brings their signals out as plain ports for the C++
// harness (harness.cpp). Nothing here computes: CSRs go in through the wrapper's APB
// decoder, weights/scalers/biases/data through the MVU's own write ports, results come
// back through a read-only view of the data RAM banks (peek_*): the MVU's controller read
// port cannot be used for that, because a bank's read "hit" is not gated by its enable
// (mvu.v: rdi_addr is tied to 0, so bank 0 answers every read, OR-ed into the word). out_*
// watch the MVU's data-RAM write port.
`timescale 1ns/1ps
module kiln_mvu_top import mvu_pkg::*; (
    input  logic                        clk,
    input  logic                        rst_n,
    input  logic [APB_ADDR_WIDTH-1:0]   paddr,
    input  logic [APB_DATA_WIDTH-1:0]   pwdata,
    input  logic                        psel,
    input  logic                        penable,
    input  logic                        pwrite,
    input  logic                        wrw_en,
    input  logic [BWBANKA-1:0]          wrw_addr,
    input  logic [BWBANKW-1:0]          wrw_word,
    input  logic                        wrc_en,
    input  logic [BDBANKA-1:0]          wrc_addr,
    input  logic [BDBANKW-1:0]          wrc_word,
    input  logic                        rdc_en,
    input  logic [BDBANKA-1:0]          rdc_addr,
    output logic [BDBANKW-1:0]          rdc_word,
    input  logic                        wrs_en,
    input  logic [BSBANKA-1:0]          wrs_addr,
    input  logic [BSBANKW-1:0]          wrs_word,
    input  logic                        wrb_en,
    input  logic [BBBANKA-1:0]          wrb_addr,
    input  logic [BBBANKW-1:0]          wrb_word,
    output logic                        done,
    output logic                        irq,
    output logic                        run,
    output logic                        out_write,
    output logic [BDBANKA-1:0]          out_addr,
    input  logic [BDBANKA-1:0]          peek_addr,
    output logic [BDBANKW-1:0]          peek_word
);
    MVU_EXT_INTERFACE ext(clk);
    APB #(.ADDR_WIDTH(APB_ADDR_WIDTH), .DATA_WIDTH(APB_DATA_WIDTH)) apb();

    assign apb.paddr   = paddr;
    assign apb.pwdata  = pwdata;
    assign apb.psel    = psel;
    assign apb.penable = penable;
    assign apb.pwrite  = pwrite;
    assign apb.pprot   = '0;
    assign apb.pstrb   = '1;

    assign ext.rst_n     = rst_n;
    assign ext.shacc_clr = '0;
    assign ext.ic_clr    = 1'b0;
    assign ext.ichp_clr  = 1'b0;
    assign ext.wrw_en    = NMVU'(wrw_en);
    assign ext.wrw_addr  = (NMVU*BWBANKA)'(wrw_addr);
    assign ext.wrw_word  = (NMVU*BWBANKW)'(wrw_word);
    assign ext.rdc_en    = NMVU'(rdc_en);
    assign ext.rdc_addr  = (NMVU*BDBANKA)'(rdc_addr);
    assign rdc_word      = ext.rdc_word[BDBANKW-1:0];
    assign ext.wrc_en    = NMVU'(wrc_en);
    assign ext.wrc_addr  = wrc_addr;
    assign ext.wrc_word  = wrc_word;
    assign ext.wrs_en    = NMVU'(wrs_en);
    assign ext.wrs_addr  = wrs_addr;
    assign ext.wrs_word  = wrs_word;
    assign ext.wrb_en    = NMVU'(wrb_en);
    assign ext.wrb_addr  = wrb_addr;
    assign ext.wrb_word  = wrb_word;
    assign done          = ext.done[0];
    assign irq           = ext.irq[0];

    mvutop_wrapper dut(.mvu_ext_if(ext), .apb(apb));

    // Observation only: the MVU's own data-RAM write port and its run signal.
    assign out_write = dut.mvu.wrd_en[0];
    assign out_addr  = dut.mvu.wrd_addr[BDBANKA-1:0];
    assign run       = dut.mvu.run[0];

    logic [BDBANKW-1:0] bank_peek [NDBANK];
    for (genvar b = 0; b < NDBANK; b++) begin : peek
        assign bank_peek[b] =
            dut.mvu.mvuarray[0].mvuunit.bankarray[b].db.data_ram.mem[peek_addr[BDBANKAWS-1:0]];
    end
    assign peek_word = bank_peek[peek_addr[BDBANKA-1:BDBANKAWS]];
endmodule
