# Sourced by test.sh, demo.sh and the Tiltfile: installs the system packages meshlet
# needs (as root, with apt-get) and meshlet itself into .venv.
# Usage: meshlet_setup PIP_TARGET APT_PACKAGE...   (PIP_TARGET: ".[control-plane]" or ".[dev]")
#        meshlet_setup_demo                        (what `meshlet demo` and `tilt up -- --local` need)

meshlet_setup() {
  local target=$1
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    local missing=()
    for pkg in "$@"; do
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      echo "== apt-get install ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi

  local python=${PYTHON:-python3}
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "meshlet needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2
    echo "(set PYTHON=/path/to/python3.11)" >&2
    return 1
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$python" -m venv .venv
  fi
  # Installed already, from this very pyproject.toml, with this target: nothing to do
  # (no network needed to run the demo again).
  local stamp=".venv/.meshlet-installed"
  local want
  want="$target $(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
    return 0
  fi
  echo "== pip install -e $target"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$target"
  # xds-protos carries an old copy of opentelemetry/proto that may overwrite
  # opentelemetry-proto's files (the OTLP exporter then fails to import): put them back.
  local otel_proto
  otel_proto=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$otel_proto"
  echo "$want" > "$stamp"
  if [ "$target" = ".[dev]" ]; then
    # The dev install holds everything the demo's does.
    echo ".[control-plane] ${want#* }" >> "$stamp"
  fi
}

meshlet_setup_demo() {
  meshlet_setup '.[control-plane]' python3-venv nftables iproute2 util-linux
}
