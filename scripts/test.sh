#!/usr/bin/env bash
# Installs everything meshlet's tests need into .venv (and, as root, the system
# tools from apt), then runs the linters and the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# dig and unbound: the real DNS client and upstream the DNS tests use; nftables and
# iproute2: the capture rules and the network namespaces of the proxy and mesh tests.
APT_PACKAGES=(python3-venv dnsutils unbound nftables iproute2)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "== pip install -e .[dev]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# xds-protos carries an old copy of opentelemetry/proto that may overwrite
# opentelemetry-proto's files (the OTLP exporter then fails to import): put them back.
otel_proto=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
.venv/bin/python -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$otel_proto"

echo "== ruff"
.venv/bin/ruff check meshlet tests bench tools
.venv/bin/ruff format --check meshlet tests bench tools
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
