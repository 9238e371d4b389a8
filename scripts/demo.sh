#!/usr/bin/env bash
# From a fresh clone to a running `meshlet demo`: installs what it needs (as root,
# nftables and iproute2 from apt; meshlet into .venv), then runs the demo.
# Usage: bash scripts/demo.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

meshlet_setup_demo
exec .venv/bin/meshlet demo "$@"
