"""Helpers for the cost-model tests: ZigZag's bundled inputs and a ZigZag run on a fixed mapping."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hardware"


def zigzag_inputs() -> Path:
    import zigzag

    return Path(os.path.dirname(zigzag.__file__)) / "inputs"


BUNDLED_ACCELERATORS = ["tpu_like", "edge_tpu_like", "ascend_like", "meta_prototype",
                        "tesla_npu_like"]


def random_conv_layer(seed: int):
    """A conv layer nobody picked (odd sizes, non-square kernels, stride 1–3, dilation,
    padding) and a random bundled accelerator: (layer, accelerator, its file)."""
    import random

    from kiln.hw import load_accelerator
    from kiln.hw.workload import _conv_layer, default_precision

    rng = random.Random(seed)
    hw_path = zigzag_inputs() / "hardware" / f"{rng.choice(BUNDLED_ACCELERATORS)}.yaml"
    hw = load_accelerator(hw_path, duplicate_keys="last")
    fy, fx = rng.randint(1, 7), rng.randint(1, 7)
    stride, dilation = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
    oy, ox = rng.randint(1, 23), rng.randint(1, 23)
    pad_y, pad_x = rng.randint(0, fy // 2), rng.randint(0, fx // 2)
    in_y = max(1, (oy - 1) * stride + dilation * (fy - 1) + 1 - 2 * pad_y)
    in_x = max(1, (ox - 1) * stride + dilation * (fx - 1) + 1 - 2 * pad_x)
    layer = _conv_layer(f"random{seed}", batch=1, groups=1, k=rng.randint(1, 70),
                        c=rng.randint(1, 70), oy=oy, ox=ox, fy=fy, fx=fx,
                        stride=(stride, stride), dilation=(dilation, dilation),
                        in_hw=(in_y, in_x), precision=default_precision())
    return layer, hw, hw_path


def zigzag_fixed_mapping(
    tmp_path: Path,
    layer,
    hardware: Path,
    spatial: dict[str, dict[str, int]],
    ordering: list[tuple[str, int]],
) -> tuple[float, float]:
    """Energy and latency ZigZag 3.9.1 gives ``layer`` under one complete mapping."""
    from zigzag.api import get_hardware_performance_zigzag

    from kiln.hw.workload import layer_to_zigzag

    workload = tmp_path / "workload.yaml"
    mapping = tmp_path / "mapping.yaml"
    workload.write_text(yaml.safe_dump([layer_to_zigzag(layer)], sort_keys=False))
    entry = {
        "name": layer.name,
        "spatial_mapping": {
            oa: [f"{d}, {int(f)}" for d, f in m.items()] for oa, m in spatial.items()
        },
        "temporal_ordering": [[d, int(s)] for d, s in ordering],
        "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
    }
    default = {k: v for k, v in entry.items() if k != "temporal_ordering"} | {"name": "default"}
    mapping.write_text(yaml.safe_dump([entry, default], sort_keys=False))
    logging.disable(logging.CRITICAL)
    try:
        energy, latency, _ = get_hardware_performance_zigzag(
            str(workload),
            str(hardware),
            str(mapping),
            dump_folder=str(tmp_path / "zz"),
            loma_show_progress_bar=False,
        )
    finally:
        logging.disable(logging.NOTSET)
    return energy, latency


def zigzag_search(tmp_path: Path, workload: Path, hardware: Path, mapping: Path,
                  objective: str = "latency") -> dict[str, tuple[float, float]]:
    """ZigZag 3.9.1's own search (LOMA, lpf limit 6): layer name → (energy, latency)."""
    from zigzag.api import get_hardware_performance_zigzag

    logging.disable(logging.CRITICAL)
    try:
        _, _, cmes = get_hardware_performance_zigzag(
            str(workload), str(hardware), str(mapping), opt=objective,
            dump_folder=str(tmp_path / "zz"), loma_show_progress_bar=False, lpf_limit=6)
    finally:
        logging.disable(logging.NOTSET)
    return {cme.layer.name: (cme.energy_total, cme.latency_total2) for cme, _ in cmes[0][1]}


@pytest.fixture(scope="session")
def resnet18_onnx() -> Path:
    return zigzag_inputs() / "workload" / "resnet18.onnx"
