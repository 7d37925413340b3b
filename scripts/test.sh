#!/usr/bin/env bash
# The test suite on a fresh machine: set up (idempotent), lint with ruff, run pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k onnx`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/postgres.sh   # the distributed-search tests run a study on a local server
echo "[test] ruff check"
.venv/bin/ruff check .
echo "[test] pytest"
.venv/bin/python -m pytest -n 2 --durations=15 "$@"
