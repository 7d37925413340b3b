"""``Design``: an emitted RTL folder (its layers, its sources) as the other RTL modules
read it; :func:`kiln.rtl.emit.emit` writes one, :meth:`Design.load` reads it back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.rtl.layers import Layer

SOURCES = Path(__file__).parent / "sv"
COMPONENTS = ("kiln_requant.sv", "kiln_dense.sv", "kiln_fifo.sv", "kiln_rows.sv",
              "kiln_im2col.sv", "kiln_maxpool.sv", "kiln_add.sv", "kiln_skip_fifo.sv",
              "kiln_window_max.sv", "kiln_mul.sv")


@dataclass
class Design:
    """An emitted design: where it is and what it holds."""

    directory: Path
    program_name: str
    rounding: str
    layers: list[Layer] = field(default_factory=list)

    input_vectors_per_input: int = 1

    @property
    def sources(self) -> list[Path]:
        return [self.directory / name for name in COMPONENTS] + [self.directory / "kiln_top.sv"]

    @property
    def simulation_sources(self) -> list[Path]:
        """The design plus ``kiln_tb.sv``, the simulation harness around ``kiln_top``."""
        return [*self.sources, self.directory / "kiln_tb.sv"]

    def as_dict(self) -> dict[str, Any]:
        return {"program": self.program_name, "rounding": self.rounding,
                "input_vectors_per_input": self.input_vectors_per_input,
                "layers": [{k: v for k, v in layer.__dict__.items() if k != "requant_fields"}
                           for layer in self.layers]}

    @classmethod
    def load(cls, directory: str | Path) -> Design:
        directory = Path(directory)
        path = directory / "design.json"
        if not path.is_file():
            raise KilnError(f"{directory}: not an emitted design (no design.json)",
                            hint="make one with 'kiln emit-rtl PROGRAM_DIR --out DIR'")
        data = json.loads(path.read_text())
        return cls(directory, data["program"], data["rounding"],
                   [Layer(**layer) for layer in data["layers"]],
                   data.get("input_vectors_per_input", 1))
