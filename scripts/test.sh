#!/usr/bin/env bash
# Installs everything meshlet's tests need into .venv (and, as root, the system
# tools from apt), then runs the linters and the whole test suite.
# Usage: bash scripts/test.sh [--fast] [pytest args...]
#   --fast: no Go build, and only the layers that need neither root nor the test
#   cluster: pytest -m "unit or sockets" (docs/testing.md)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

fast=false
if [ "${1:-}" = --fast ]; then
  fast=true
  shift
fi

# dig and unbound: the real DNS client and upstream the DNS tests use; nftables and
# iproute2: the capture rules and the network namespaces of the proxy and mesh tests;
# buildah, podman and debootstrap: the image test's build, its store and its base;
# runc and the CNI plugins: the real node's containers and pod network.
meshlet_setup '.[dev]' python3-venv dnsutils unbound nftables iproute2 util-linux \
  buildah podman debootstrap runc containernetworking-plugins

# The test cluster: etcd, Kubernetes, CoreDNS, Helm and Tilt built from their Go
# modules (cached outside the clone; a second run builds nothing).
if $fast; then
  echo "== test cluster binaries: not built (--fast)"
else
  echo "== test cluster binaries"
  .venv/bin/python tests/k8s/build.py
fi

echo "== ruff"
.venv/bin/ruff check meshlet tests bench tools
.venv/bin/ruff format --check meshlet tests bench tools
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
if $fast; then
  .venv/bin/pytest -m "unit or sockets" "$@"
else
  .venv/bin/pytest "$@"
fi
