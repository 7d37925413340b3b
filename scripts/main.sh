#!/usr/bin/env bash
# kiln's main job on a fresh machine: set up (idempotent), then run `kiln flow` on the
# built-in default: the shipped convnet on Fashion-MNIST, int8, through the integer
# program, ONNX Runtime, the edge NPU cost model, the multi-core schedule, BARVINN MVU
# jobs on its RTL, RTL simulated on Verilator, Yosys, and an ECP5 place and route (Fmax),
# into out/flow (report.md, report.html, summary.json). Extra arguments go to `kiln flow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kiln flow convnet --out out/flow "$@"
