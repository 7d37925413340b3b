"""Generated hardware, simulated with cocotb on Verilator and Icarus, against the engine."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from kiln.data import load_dataset
from kiln.errors import KilnError
from kiln.integer import IntegerProgram, lower
from kiln.integer.arith import quantize_multipliers
from kiln.integer.program import IntOp, TensorQuant
from kiln.models import resolve_model
from kiln.quant import calibrate, quantize, uniform_config
from kiln.rtl import emit, simulate
from kiln.rtl.simulate import tool_path


@pytest.fixture(scope="module")
def jsc_program(tmp_path_factory):
    dataset = load_dataset("letter")
    graph, _ = resolve_model("jsc-three-linear", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset))
    program.metadata["dataset"] = "letter"
    return program


@pytest.mark.parametrize("simulator,vectors,jobs", [("verilator", 1000, 1), ("icarus", 200, 2)])
def test_mlp_bit_exact_on_both_simulators(jsc_program, tmp_path, simulator, vectors, jobs):
    design = emit(jsc_program, (4, 4), tmp_path / "design")
    result = simulate(design, simulator=simulator, vectors=vectors, jobs=jobs)
    assert result.passed and result.vectors == vectors and result.extra["jobs"] == jobs
    assert result.utilization >= 0.9  # 4x4 on 16-wide layers: the pipeline stays full


def test_an_affine_layer_is_per_channel_and_bit_exact(jsc_program, tmp_path):
    # jsc's input BatchNorm (16 channels): one product per channel, not a 16 x 16 matrix of
    # which 16 weights are not zero. P_in = P_out: a beat of P channels every `passes`
    # cycles (each lane's requantizer time-shares one DSP tile); P_in != P_out (a stream
    # widening at the affine) keeps the dense form.
    design = emit(jsc_program, (1, 1), tmp_path / "narrow")
    affine = design.layers[0]
    assert affine.diagonal and (affine.weight_lanes, affine.weight_words) == (1, 16)
    assert affine.requants == 1 and affine.cycles_per_input == 16 * affine.passes < 16 * 16
    assert len((design.directory / "mem" / f"{affine.name}.weights.mem").read_text().split()) \
        == 16
    assert simulate(design, simulator="verilator", vectors=100).passed
    mixed = emit(jsc_program, [(1, 2), (2, 2), (2, 2), (2, 2)], tmp_path / "widening")
    assert not mixed.layers[0].diagonal and mixed.layers[0].cycles_per_input == 16 * 8
    assert simulate(mixed, simulator="verilator", vectors=50).passed


def test_flipped_weight_bit_fails_with_a_clear_message(jsc_program, tmp_path):
    design = emit(jsc_program, (4, 4), tmp_path / "broken")
    mem = design.directory / "mem" / f"{design.layers[2].name}.weights.mem"
    words = mem.read_text().split()
    words[0] = f"{int(words[0], 16) ^ (1 << 3):0{len(words[0])}x}"
    mem.write_text("\n".join(words) + "\n")
    # the first failing layer, and where to look in a waveform: its output beat and cycle
    wrong = rf"layer {design.layers[2].name} .*expected -?\d+, got .*output beat \d+ at cycle \d+"
    with pytest.raises(KilnError, match=wrong):
        simulate(design, simulator="verilator", vectors=100)


def single_dense(rounding: str, seed: int, in_n: int = 32, out_n: int = 64) -> IntegerProgram:
    """One in_n -> out_n dense layer with random int8 weights, weight and input zero
    points."""
    rng = np.random.default_rng(seed)
    weight = rng.integers(-128, 128, (out_n, in_n))
    weight_zero = rng.integers(-8, 9, out_n)
    bias = rng.integers(-20000, 20000, out_n)
    multipliers = rng.uniform(2e-4, 2e-3, out_n)
    m0, shift = quantize_multipliers(multipliers)
    in_quant = TensorQuant(0.02, int(rng.integers(0, 256)), 8, False)
    out_quant = TensorQuant(0.05, int(rng.integers(-20, 20)), 8, True)
    op = IntOp("dense", "matrix", ["input"], "matrix",
               {"in_quant": in_quant.as_dict(), "out_quant": out_quant.as_dict(),
                "clamp": [-128, 127], "weight_scale": [0.01] * out_n, "weight_bits": 8},
               {"weight": weight, "weight_zero": weight_zero, "bias": bias, "m0": m0,
                "shift": shift, "multiplier_f32": multipliers.astype(np.float32)},
               {"weight": 8, "bias": 32, "m0": 32, "shift": 8})
    return IntegerProgram("matrix", (in_n,), in_quant, out_quant, rounding, [op],
                          output_name="matrix")


@pytest.mark.parametrize(("rounding", "simulator"), [
    ("floor", "verilator"), ("nearest", "verilator"), ("float32", "verilator"),
    ("float32", "icarus")])
def test_matrix_unit_64x32_by_32x64(tmp_path, rounding, simulator):
    program = single_dense(rounding, seed=7)
    design = emit(program, (8, 8), tmp_path / rounding)
    inputs = np.random.default_rng(3).integers(0, 256, (64, 32))  # u = 64 rows
    assert simulate(design, simulator=simulator, inputs=inputs).passed


def test_emitter_bad_inputs(jsc_program, tmp_path):
    with pytest.raises(KilnError, match="P_in 2 must equal the width of the stream it reads, "
                                        r"4 \(the P_out of layer #0\)"):
        emit(jsc_program, [(4, 4), (2, 2), (2, 2), (2, 2)], tmp_path / "a")
    jsc_program_odd = IntegerProgram(jsc_program.name, jsc_program.input_shape,
                                     jsc_program.input_quant, jsc_program.output_quant,
                                     "truncate", jsc_program.ops)
    with pytest.raises(KilnError, match="truncate rounding"):
        emit(jsc_program_odd, (4, 4), tmp_path / "b")
    # every blocker at once: each residual add in float32 rounding, a pool's unequal strides
    from kiln.models import build_graph

    resnet = build_graph("resnet18-cifar", (1, 8, 8), 10)
    digits = load_dataset("digits")
    residual = lower(calibrate(quantize(resnet, uniform_config(8, 8)), digits, batches=1),
                     rounding="float32")
    pool = next(op for op in residual.ops if op.kind == "avgpool")
    pool.attrs["stride"] = [1, 2]
    with pytest.raises(KilnError) as refused:
        emit(residual, (4, 4), tmp_path / "c")
    message = str(refused.value)
    assert message.count("(add): float32 rounding") == 8  # each of the residual adds, named
    assert f"{pool.name} (avgpool): strides [1, 2]" in message
    assert not (tmp_path / "c").exists()


def test_padding_when_parallelism_exceeds_a_dimension(jsc_program, tmp_path):
    # 32 output lanes on the last layer's 26 outputs: more lanes than outputs, padded.
    design = emit(jsc_program, [(4, 4), (4, 4), (4, 4), (4, 32)], tmp_path / "wide")
    assert design.layers[-1].out_beats == 1 and design.layers[-1].p_out == 32
    assert simulate(design, simulator="verilator", vectors=100).passed


def test_generated_rtl_is_lint_clean(jsc_program, tmp_path):
    design = emit(jsc_program, (4, 4), tmp_path / "lint")
    tool_path()
    lint = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", "kiln_top",
                           *[str(p) for p in design.sources]], capture_output=True, text=True,
                          cwd=design.directory)
    assert lint.returncode == 0, lint.stderr


def test_convnet_bit_exact_on_verilator(tmp_path):
    dataset = load_dataset("fashion-mnist")
    graph, _ = resolve_model("convnet", pretrained=True)
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), dataset, batches=2))
    program.metadata["dataset"] = "fashion-mnist"
    design = emit(program, (4, 4), tmp_path / "cnn")
    assert [layer.kind for layer in design.layers] == ["conv", "maxpool", "conv", "maxpool",
                                                       "dense", "dense"]
    result = simulate(design, simulator="verilator", vectors=2)
    assert result.passed and result.utilization >= 0.9


def test_synthesis_statistics(jsc_program, tmp_path):
    from kiln.rtl import synthesize

    design = emit(jsc_program, (2, 2), tmp_path / "synth")
    generic = synthesize(design, target="generic")
    # Products, and one shared requantizer per dense layer (8 input beats leave time to
    # requantize the 2 lanes in turn): 3 layers; the input BatchNorm: 2 products, one
    # requantizer per lane.
    assert [layer.requants for layer in design.layers] == [2, 1, 1, 1]
    assert generic.multipliers == 3 * (2 * 2 + 1) + 2 * 2
    xilinx = synthesize(design, target="xilinx")
    assert xilinx.luts > 100 and xilinx.flip_flops > 100 and xilinx.dsps > 0
    with pytest.raises(KilnError, match="unknown synthesis target"):
        synthesize(design, target="asic")


def test_line_buffer_im2col_with_stride_dilation_and_no_padding(tmp_path):
    import torch

    from kiln.graph import from_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(),            # 8x8 -> 3x3, no padding
        torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2), torch.nn.ReLU(),  # dilated, padded
        torch.nn.Flatten(), torch.nn.Linear(54, 10)).eval()
    digits = load_dataset("digits")
    graph = from_torch(model, torch.zeros(1, 1, 8, 8))
    program = lower(calibrate(quantize(graph, uniform_config(8, 8)), digits, batches=1))
    program.metadata["dataset"] = "digits"
    design = emit(program, (2, 2), tmp_path / "strided")
    assert [layer.kind for layer in design.layers] == ["conv", "conv", "dense"]
    assert simulate(design, simulator="verilator", vectors=20).passed


def _descendants(pid: int) -> list[int]:
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _command(pid: int) -> str:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigint_to_kiln_alone_stops_its_simulators_at_once(jsc_program, tmp_path, jobs):
    """SIGINT to kiln's own PID (not its process group, as `kill -INT` does) during a long
    simulation: kiln exits within seconds and no simulator runs on (it took 104 s)."""
    import signal
    import sys
    import time

    from tests.conftest import start_interruptible

    program_dir = tmp_path / "program"
    jsc_program.save(program_dir)
    design = emit(jsc_program, (1, 1), tmp_path / "design")
    process = start_interruptible(
        [sys.executable, "-m", "kiln", "simulate", str(design.directory), "--simulator",
         "icarus", "--vectors", "4000", "--jobs", str(jobs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    simulators: list[int] = []
    while time.time() < deadline and len(simulators) < jobs:
        simulators = [pid for pid in _descendants(process.pid)
                      if "vvp" in _command(pid)] if process.poll() is None else []
        time.sleep(0.2)
    assert len(simulators) == jobs, "the simulators never started"
    time.sleep(1.0)
    started = time.time()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.time() - started < 10
    time.sleep(0.5)
    assert not [pid for pid in simulators if _alive(pid)]
