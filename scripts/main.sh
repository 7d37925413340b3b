#!/usr/bin/env bash
# kiln's main job on a fresh machine: set up (idempotent), then run `kiln demo` on the
# default model (convnet) and dataset (Fashion-MNIST). Extra arguments go to `kiln demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kiln demo "$@"
