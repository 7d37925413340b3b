"""Build BARVINN's own MVU RTL under Verilator, with kiln's harness around it.

The RTL is the peer's, unmodified, in ``../shared/data/barvinn/mvu-rtl/`` (override with
``KILN_BARVINN_RTL``). kiln copies it into a build folder and applies the patches below
(:data:`PATCHES`), each a literal text replacement that must match exactly once, so a
changed upstream file stops the build instead of being patched wrongly. None of them
changes what the unit computes:

* ``mvu_pkg.sv``: ``NMVU`` 8 → 1. One MVU is what a job runs on; eight make Verilator emit
  ~360 MB of C++ (hours to compile on 2 cores).
* ``shiftreg.v``, ``shacc.v``, ``maxpool.v``, ``zigzagu.v``, ``controller.v``: blocking
  assignments (``=``) to registers inside ``always @(posedge clk)`` become non-blocking
  (``<=``), with the same next-state arithmetic (``zigzagu.v`` computes its next state in
  local variables, in the original order, and commits them at the edge). With blocking
  assignments, which module sees a register's old or new value at a clock edge is up to
  the simulator's scheduling: under Verilator the shift/accumulate control arrives one
  product early and the accumulator doubles at the wrong time. The design's own latency
  budget (``mvu_pkg``: ``VVPSTAGES + MEMRDLATENCY`` cycles of delay lines for the
  accumulator controls, one register per stage) only adds up with flip-flop semantics,
  i.e. non-blocking assignments — the behaviour the design intends and an FPGA builds.

The harness (``bench/kiln_mvu_top.sv`` + ``bench/harness.cpp``) drives the wrapper's APB
port for CSRs and the MVU's own write/read ports for memories; see
:mod:`kiln.mvu.rtl_run`.

>>> binary = build_bench()          # doctest: +SKIP  (minutes the first time, then cached)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.rtl.simulate import tool_path

BENCH_DIR = Path(__file__).with_name("bench")
TOP = "kiln_mvu_top"
SIMULATION_SEMANTICS = ("flip-flop (non-blocking) semantics for every clocked register; "
                        "see kiln.mvu.rtl_build.PATCHES")


def rtl_source_dir() -> Path:
    """Where BARVINN's MVU RTL is: ``KILN_BARVINN_RTL`` or ``../shared/data/barvinn/mvu-rtl``
    beside the repository."""
    configured = os.environ.get("KILN_BARVINN_RTL")
    folder = (Path(configured) if configured
              else Path(__file__).resolve().parents[3] / "shared" / "data" / "barvinn"
              / "mvu-rtl")
    if not (folder / "mvu" / "verilog" / "mvutop_wrapper.sv").is_file():
        raise KilnError(f"BARVINN's MVU RTL is not at {folder}",
                        hint="set KILN_BARVINN_RTL to the folder that holds mvu/, pulp-apb/ "
                             "and pulp-common_cells/")
    return folder


@dataclass(frozen=True)
class Patch:
    """One literal replacement in one upstream file, and why the unit needs it."""

    path: str
    old: str
    new: str
    why: str


def _zigzag_step_block() -> tuple[str, str]:
    """The zig-zag unit's clocked block, and the same arithmetic on local next-state
    variables committed with non-blocking assignments."""
    old = """always @(posedge clk) begin
    /* Zig-zag Stepping Active */
    if(step == 1) begin"""
    new = """reg [BPREC : 0] iw_n, id_n;  // kiln patch: next state, committed at the edge
reg             sh_n;
always @(posedge clk) begin
    iw_n = iw; id_n = id; sh_n = sh;
    /* Zig-zag Stepping Active */
    if(step == 1) begin"""
    return old, new


def _zigzag_body(text: str) -> str:
    """Rename iw/id/sh to their next-state variables inside the clocked block and commit."""
    start = text.index("always @(posedge clk) begin\n    iw_n = iw;")
    end = text.index("/* Module end */", start)
    block = text[start:end]
    head, body = block.split("sh_n = sh;\n", 1)
    body = re.sub(r"\b(iw|id|sh)\b", r"\1_n", body)
    tail = body.rstrip()
    assert tail.endswith("end")
    body = tail[:-3] + "    iw <= iw_n; id <= id_n; sh <= sh_n;\nend\n\n\n\n"
    return text[:start] + head + "sh_n = sh;\n" + body + text[end:]


PATCHES: tuple[Patch, ...] = (
    Patch("mvu/verification/lib/mvu/mvu_pkg.sv", "localparam NMVU    =  8;",
          "localparam NMVU    =  1;",
          "one MVU per bench: eight make Verilator emit ~360 MB of C++"),
    Patch("mvu/verilog/shiftreg.v", "        sr = 0;", "        sr <= 0;",
          "delay line: flip-flop semantics"),
    Patch("mvu/verilog/shiftreg.v", "            sr = sr << 1;\n            sr[0] = in;",
          "            sr <= {sr, in};",
          "delay line: shift in at the edge (the same as sr<<1 then sr[0]=in)"),
    Patch("mvu/verilog/shacc.v", "\t\tO = 0;", "\t\tO <= 0;", "accumulator clear"),
    Patch("mvu/verilog/shacc.v", "            O = I;", "            O <= I;",
          "accumulator load"),
    Patch("mvu/verilog/shacc.v", "if(sh) O = O+O+I;", "if(sh) O <= O+O+I;",
          "accumulator shift-accumulate"),
    Patch("mvu/verilog/shacc.v", "else   O = O+I;", "else   O <= O+I;",
          "accumulator accumulate"),
    Patch("mvu/verilog/maxpool.v", "    if(max_clr) begin\n        O = 0;\n    end \n"
          """    if(max_pool) begin
        /* O = max(O,I) */
        if(I>O) begin
            O = I;
        end else begin
            O = O;
        end
    end else begin
        O = I; /* Plain set */
    end""", """    // kiln patch: the same clear-then-max/copy, committed at the edge
    if(max_pool) begin
        if(I > (max_clr ? {N{1'b0}} : O)) O <= I;
        else O <= max_clr ? {N{1'b0}} : O;
    end else begin
        O <= I; /* Plain set */
    end""", "pooler register: flip-flop semantics"),
    Patch("mvu/verilog/controller.v", "        counter_q = 0;", "        counter_q <= 0;",
          "countdown clear (the other branches are already non-blocking)"),
    Patch("mvu/verilog/zigzagu.v", *_zigzag_step_block(),
          "zig-zag state: next state computed in order, committed at the edge"),
)

# Upstream files the bench compiles (vendor-RAM variants and test benches are left out).
SOURCES = (
    "pulp-common_cells/src/cf_math_pkg.sv",
    "pulp-apb/src/apb_pkg.sv",
    "pulp-apb/src/apb_intf.sv",
    "mvu/verification/lib/mvu/mvu_pkg.sv",
    "mvu/verification/lib/mvu/mvu_intf.sv",
    "mvu/verilog/ram_simple2port.v",
    "mvu/verilog/bank64k.v",
    "mvu/verilog/cdru.v",
    "mvu/verilog/cdwu.v",
    "mvu/verilog/vvp.v",
    "mvu/verilog/mvp.v",
    "mvu/verilog/shacc.v",
    "mvu/verilog/shiftreg.v",
    "mvu/verilog/fixedpointscaler.v",
    "mvu/verilog/maxpool.v",
    "mvu/verilog/quantser.v",
    "mvu/verilog/quantser_ctrl.v",
    "mvu/verilog/outagu.v",
    "mvu/verilog/controller.v",
    "mvu/verilog/zigzagu.v",
    "mvu/verilog/agu.sv",
    "mvu/verilog/inagu.sv",
    "mvu/verilog/interconn.v",
    "mvu/verilog/mvu.v",
    "mvu/verilog/mvutop.sv",
    "mvu/verilog/mvutop_wrapper.sv",
)

VERILATOR_FLAGS = ("--cc", "--exe", "--build", "-O2", "--x-assign", "0", "--x-initial", "0",
                   "-Wno-fatal", "-Wno-IEEEMAYDEPRECATE", "-Wno-lint", "-Wno-style",
                   "-Wno-MULTIDRIVEN",
                   "-Wno-LATCH", "-Wno-BLKANDNBLK", "-Wno-COMBDLY", "-Wno-SELRANGE",
                   "-Wno-UNOPTFLAT", "--top-module", TOP)


def patched_sources(source: Path, target: Path) -> list[Path]:
    """Copy the upstream files into ``target`` with :data:`PATCHES` applied; return the
    compile list (upstream files, then kiln's top)."""
    texts = {name: (source / name).read_text() for name in SOURCES}
    for patch in PATCHES:
        count = texts[patch.path].count(patch.old)
        if count != 1:
            raise KilnError(f"kiln's patch of {patch.path} ({patch.why}) matches {count} times "
                            f"in {source}", hint="the upstream RTL changed: review the patch")
        texts[patch.path] = texts[patch.path].replace(patch.old, patch.new)
    texts["mvu/verilog/zigzagu.v"] = _zigzag_body(texts["mvu/verilog/zigzagu.v"])
    files = []
    for name in SOURCES:
        path = target / "rtl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[name])
        files.append(path)
    top = target / "rtl" / f"{TOP}.sv"
    shutil.copyfile(BENCH_DIR / f"{TOP}.sv", top)
    files.append(top)
    return files


def _fingerprint(source: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((source / name).read_bytes())
    for asset in (f"{TOP}.sv", "harness.cpp"):
        digest.update((BENCH_DIR / asset).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where built benches are kept: ``KILN_CACHE`` or ``~/.cache/kiln``."""
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def build_bench(*, verbose: bool = False) -> Path:
    """The harness binary for the current RTL, patches and harness; built once (a few
    minutes on 2 cores), then reused from :func:`cache_root`. Safe to call from several
    processes at once (a file lock serializes the build)."""
    source = rtl_source_dir()
    folder = cache_root() / "barvinn-mvu" / _fingerprint(source)
    binary = folder / "obj_dir" / f"V{TOP}"
    if binary.is_file():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        tool_path()
        files = patched_sources(source, folder)
        include = source / "pulp-apb" / "include"
        command = ["verilator", *VERILATOR_FLAGS, f"+incdir+{include}",
                   "-j", str(max(1, os.cpu_count() or 1)),
                   "-CFLAGS", "-O1", *map(str, files), str(BENCH_DIR / "harness.cpp"),
                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        (folder / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0 or not binary.is_file():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise KilnError(f"building BARVINN's MVU RTL under Verilator failed "
                            f"(log: {folder / 'build.log'}):\n{tail}")
        (folder / "build_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        if verbose:
            print(f"built {binary} in {time.perf_counter() - started:.0f} s")
    return binary
