"""Hardware generation: SystemVerilog from an IntegerProgram, simulation, synthesis stats.

>>> from kiln.rtl import emit, simulate                       # doctest: +SKIP
>>> design = emit(program, parallelism=(4, 4), out_dir="out/rtl")
>>> simulate(design, simulator="verilator", vectors=1000)
"""

from kiln.rtl.emit import Design, emit
from kiln.rtl.simulate import simulate
from kiln.rtl.synth import synthesize

__all__ = ["Design", "emit", "simulate", "synthesize"]
