#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 / Python 3.11 machine (run as root or with sudo).
# Installs the Debian packages kiln's offline datasets come from, then a virtual
# environment in .venv with torch==2.13.0 (CPU wheel) and kiln itself in editable mode.
# A stamp file skips the pip step when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(dataset-fashion-mnist r-cran-mlbench iverilog)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.kiln-setup-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing Python packages into .venv"
  # torch first and alone, pinned: an unpinned resolve would pull CUDA wheels.
  # (grep drops pip's notes about local index folders this machine kind lists but lacks)
  .venv/bin/pip install -q "torch==2.13.0" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/pip install -q -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/python -c "import torch, kiln" # fail here, not in the tests, if the install broke
  echo "$want" > "$stamp"
fi
