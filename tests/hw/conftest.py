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
