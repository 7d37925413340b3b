#!/usr/bin/env bash
# Idempotent: install PostgreSQL (Debian package), start the local cluster and make sure
# the role `kiln` (password `kiln`, may create databases) exists. The distributed-search
# tests use it: postgresql://kiln:kiln@localhost:5432/<a fresh database per test run>.
set -euo pipefail

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! dpkg -s postgresql >/dev/null 2>&1; then
  echo "[setup] installing PostgreSQL"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# The package creates one cluster (e.g. "15 main"); containers have no init system to start it.
read -r version cluster port status _ < <(pg_lsclusters -h | head -n 1)
if [ "$status" != "online" ]; then
  echo "[setup] starting PostgreSQL $version/$cluster on port $port"
  $SUDO pg_ctlcluster "$version" "$cluster" start
fi
if ! as_postgres psql -p "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname='kiln'" | grep -q 1; then
  as_postgres psql -p "$port" -qc "CREATE ROLE kiln LOGIN PASSWORD 'kiln' CREATEDB"
fi
