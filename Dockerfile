# meshlet's images, two targets of one build (as a mesh ships its proxy and its
# control plane):
#   sidecar        `meshlet sidecar` and `meshlet init`: what every injected pod pulls
#   control-plane  `meshlet control-plane` and `meshlet inject`, with the Kubernetes
#                  client and the webhook's certificate code (the `control-plane` extra)
# Both run as uid 1337; `meshlet init` runs as root only because its pod says so.
#
#   buildah bud --layers --target sidecar -t ghcr.io/meshlet/meshlet:0.1.0 .
#   docker build --target control-plane -t ghcr.io/meshlet/meshlet-control-plane:0.1.0 .
ARG BASE=docker.io/library/debian:bookworm-slim

# --- build: meshlet's wheel (nothing of these stages ships) ---
FROM ${BASE} AS wheel
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A CA bundle for pip where package traffic passes a TLS-inspecting proxy; pip reads
# PIP_CERT itself. No default: unset, pip trusts the image's own bundle.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml README.md /src/
COPY meshlet /src/meshlet
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q "setuptools>=77" wheel \
 && /opt/build/bin/pip wheel -q --no-deps --no-build-isolation -w /wheels /src

# A venv per target, at the path it runs from (a venv is not relocatable); pip and
# setuptools go (nothing imports them at run time). Every xds-protos release ships an old
# copy of opentelemetry/proto that pip installs over opentelemetry-proto's files:
# opentelemetry-proto is installed again, at its version, so its files are its own
# (meshlet would cope without, see meshlet/otlp_protos.py).
FROM wheel AS venv-sidecar
ARG PIP_CERT
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    python3 -m venv /opt/meshlet \
 && /opt/meshlet/bin/pip install -q /wheels/meshlet-*.whl \
 && otel_proto=$(/opt/meshlet/bin/python -c \
      'import importlib.metadata as m; print(m.version("opentelemetry-proto"))') \
 && /opt/meshlet/bin/pip install -q --force-reinstall --no-deps "opentelemetry-proto==$otel_proto" \
 && /opt/meshlet/bin/pip uninstall -q -y pip setuptools

FROM wheel AS venv-control-plane
ARG PIP_CERT
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    python3 -m venv /opt/meshlet \
 && /opt/meshlet/bin/pip install -q "$(ls /wheels/meshlet-*.whl)[control-plane]" \
 && otel_proto=$(/opt/meshlet/bin/python -c \
      'import importlib.metadata as m; print(m.version("opentelemetry-proto"))') \
 && /opt/meshlet/bin/pip install -q --force-reinstall --no-deps "opentelemetry-proto==$otel_proto" \
 && /opt/meshlet/bin/pip uninstall -q -y pip setuptools

# --- runtime: what both targets share (and nodes pull once) ---
FROM ${BASE} AS runtime
ARG BASE
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 nftables iproute2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 1337 meshlet \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin meshlet
ENV PATH=/opt/meshlet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ARG VERSION=dev
LABEL org.opencontainers.image.title="meshlet" \
      org.opencontainers.image.description="A DNS-plus-VIP service-mesh sidecar and its xDS control plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
USER 1337:1337
ENTRYPOINT ["meshlet"]

FROM runtime AS control-plane
COPY --from=venv-control-plane /opt/meshlet /opt/meshlet
LABEL org.opencontainers.image.title="meshlet-control-plane"
CMD ["control-plane", "--help"]

# --- Tilt's dev loop only: the code writable by the process's uid, and a loop that
# starts the process again when live update signals it (scripts/dev-loop.sh). ---
FROM control-plane AS control-plane-dev
USER root
RUN chown -R 1337:1337 /opt/meshlet/lib/python3.11/site-packages/meshlet
COPY scripts/dev-loop.sh /usr/local/bin/meshlet-dev-loop
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshlet-dev-loop", "meshlet"]

# The default target: the image injected pods pull.
FROM runtime AS sidecar
COPY --from=venv-sidecar /opt/meshlet /opt/meshlet
CMD ["sidecar", "--help"]
