// kiln's C++ harness for BARVINN's MVU RTL under Verilator (see kiln/mvu/rtl.py).
//
// Reads a command script (argv[1]) and prints results to stdout, one line each:
//   reset                 hold rst_n low for 4 cycles
//   w ADDR HEX            weight RAM word (4096 bits, most significant hex digit first)
//   s ADDR HEX / b ADDR HEX   scaler (64 x 16 bit) / bias (64 x 32 bit) RAM word
//   d ADDR HEX            data RAM word (64 bits) through the controller write port
//   c ADDR HEX            one APB write (address, 32-bit value)
//   run DRAIN             after a mvucommand write: clock until irq, then DRAIN more
//                         cycles; prints "job TO_IRQ RUN WRITES FIRST LAST"
//   q ADDR COUNT          read COUNT data words (a read-only view of the RAM banks);
//                         prints "q ADDR HEX" per word
// The controller read port (rdc_*) stays parked at address 0: see kiln/mvu/plan.py on why
// data word 0 is kept zero.
// Addresses and values are hexadecimal.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "Vkiln_mvu_top.h"
#include "verilated.h"

static Vkiln_mvu_top* top;
static uint64_t cycle = 0;

static void tick() {
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
    ++cycle;
}

template <typename Wide>
static void set_wide(Wide& target, int words, const std::string& hex) {
    for (int i = 0; i < words; ++i) target[i] = 0;
    int digit = 0;
    for (int pos = static_cast<int>(hex.size()) - 1; pos >= 0; --pos, ++digit) {
        char ch = hex[pos];
        uint32_t v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch | 0x20) - 'a' + 10;
        if (digit / 8 < words) target[digit / 8] |= v << (4 * (digit % 8));
    }
}

static void apb_write(uint32_t address, uint32_t value) {
    top->paddr = address;
    top->pwdata = value;
    top->pwrite = 1;
    top->psel = 1;
    top->penable = 0;
    tick();
    top->penable = 1;
    tick();
    top->psel = 0;
    top->penable = 0;
    top->pwrite = 0;
}

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SCRIPT\n", argv[0]);
        return 2;
    }
    std::ifstream script(argv[1]);
    if (!script) {
        std::fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    top = new Vkiln_mvu_top;
    top->rst_n = 1;
    top->eval();
    std::string line;
    uint64_t command_cycle = 0;
    while (std::getline(script, line)) {
        std::istringstream in(line);
        std::string op;
        if (!(in >> op) || op[0] == '#') continue;
        if (op == "reset") {
            top->rst_n = 0;
            for (int i = 0; i < 4; ++i) tick();
            top->rst_n = 1;
            tick();
        } else if (op == "w" || op == "s" || op == "b" || op == "d") {
            std::string addr, hex;
            in >> addr >> hex;
            uint32_t address = std::strtoul(addr.c_str(), nullptr, 16);
            if (op == "w") {
                set_wide(top->wrw_word, 128, hex);
                top->wrw_addr = address;
                top->wrw_en = 1;
            } else if (op == "s") {
                set_wide(top->wrs_word, 32, hex);
                top->wrs_addr = address;
                top->wrs_en = 1;
            } else if (op == "b") {
                set_wide(top->wrb_word, 64, hex);
                top->wrb_addr = address;
                top->wrb_en = 1;
            } else {
                top->wrc_word = std::strtoull(hex.c_str(), nullptr, 16);
                top->wrc_addr = address;
                top->wrc_en = 1;
            }
            tick();
            top->wrw_en = top->wrs_en = top->wrb_en = top->wrc_en = 0;
        } else if (op == "c") {
            std::string addr, value;
            in >> addr >> value;
            command_cycle = cycle;
            apb_write(std::strtoul(addr.c_str(), nullptr, 16),
                      std::strtoul(value.c_str(), nullptr, 16));
        } else if (op == "run") {
            int drain = 0;
            in >> drain;
            uint64_t run_cycles = 0, writes = 0, first = 0, last = 0, to_irq = 0;
            bool seen_irq = false;
            int after = 0;
            const uint64_t limit = cycle + (1ull << 32);
            while (after < drain && cycle < limit) {
                top->clk = 0;
                top->eval();
                if (top->out_write) {
                    if (!writes) first = cycle - command_cycle;
                    last = cycle - command_cycle;
                    ++writes;
                }
                if (top->run) ++run_cycles;
                if (top->irq && !seen_irq) {
                    seen_irq = true;
                    to_irq = cycle - command_cycle;
                }
                top->clk = 1;
                top->eval();
                ++cycle;
                if (seen_irq) ++after;
            }
            std::printf("job %llu %llu %llu %llu %llu\n", (unsigned long long)to_irq,
                        (unsigned long long)run_cycles, (unsigned long long)writes,
                        (unsigned long long)first, (unsigned long long)last);
        } else if (op == "q") {
            // A read-only view of the banks (kiln_mvu_top.sv says why not the read port).
            std::string addr, count_text;
            in >> addr >> count_text;
            uint32_t address = std::strtoul(addr.c_str(), nullptr, 16);
            uint32_t count = std::strtoul(count_text.c_str(), nullptr, 16);
            for (uint32_t i = 0; i < count; ++i) {
                top->peek_addr = address + i;
                top->eval();
                std::printf("q %x %016llx\n", address + i, (unsigned long long)top->peek_word);
            }
        } else {
            std::fprintf(stderr, "unknown command: %s\n", line.c_str());
            return 2;
        }
    }
    std::fflush(stdout);
    top->final();
    delete top;
    return 0;
}
