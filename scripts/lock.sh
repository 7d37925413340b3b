#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml's dependencies (with the dev extras)
# from nothing in a throw-away virtual environment, freeze every installed package at its
# exact version, and print what changed against the previous lock.
#
#   bash scripts/lock.sh            # re-resolve everything at today's newest versions
#   bash scripts/lock.sh --check    # exit 1 if pyproject.toml asks for something the lock lacks
#
# This is the only way the lock is changed: add or upgrade a dependency in pyproject.toml,
# run this, review the printed diff, commit both files. scripts/setup.sh installs exactly
# the lock (pip --no-deps), so every machine gets the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=requirements.lock
PYTHON="${PYTHON:-python3}"

if [ "${1:-}" = "--check" ]; then
  exec "$PYTHON" scripts/lock_check.py "$LOCK"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
pip="$work/venv/bin/pip"
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
echo "[lock] resolving in a fresh environment ($("$PYTHON" --version))"
quiet "$pip" install -q --upgrade pip setuptools wheel
# torch first and alone, pinned: an unpinned resolve would pull CUDA wheels.
quiet "$pip" install -q "torch==2.13.0"
quiet "$pip" install -q -e ".[dev]"

{
  echo "# kiln's locked Python environment: every package scripts/setup.sh installs, exact versions."
  echo "# Written by 'bash scripts/lock.sh' on $(date -u +%Y-%m-%d) with $("$PYTHON" --version)"
  echo "# on $(uname -m); do not edit by hand."
  "$pip" freeze --all --exclude-editable 2>/dev/null | grep -v '^#' | grep -v '^-e ' \
    | LC_ALL=C sort -f
} > "$work/lock"

if [ -f "$LOCK" ]; then
  echo "[lock] changes against the previous $LOCK:"
  diff <(grep -v '^#' "$LOCK") <(grep -v '^#' "$work/lock") | grep '^[<>]' \
    | sed -e 's/^</  removed/' -e 's/^>/  added  /' || echo "  (none)"
fi
mv "$work/lock" "$LOCK"
echo "[lock] wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
