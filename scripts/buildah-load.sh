#!/bin/sh
# Builds one target of the Dockerfile with buildah and loads it into a containerd's
# image store, for a node without Docker or a registry (the Tiltfile's cluster mode on
# the context meshlet-containerd):
#
#   scripts/buildah-load.sh TARGET REF
#
#   MESHLET_BUILDAH_FLAGS        buildah's global flags, e.g. --root DIR --runroot DIR
#   MESHLET_BUILDAH_BUILD_FLAGS  flags for `buildah bud`, e.g. --isolation chroot --pull=never
#   MESHLET_CONTAINERD_ADDRESS   containerd's socket (default /run/containerd/containerd.sock)
#   MESHLET_CTR                  the ctr binary (default: ctr on PATH)
#
# The image goes to containerd's k8s.io namespace (the one the kubelet's CRI reads) as
# a docker-archive, which carries REF, so the pod's image is found by that name.
set -eu
if [ "$#" -ne 2 ]; then
  echo "usage: $0 TARGET REF" >&2
  exit 2
fi
target=$1
ref=$2
ctr=${MESHLET_CTR:-ctr}
address=${MESHLET_CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
# Word splitting of the flag variables is wanted (several flags in one variable).
# shellcheck disable=SC2086
buildah ${MESHLET_BUILDAH_FLAGS:-} bud --layers --target "$target" -t "$ref" \
  ${MESHLET_BUILDAH_BUILD_FLAGS:-} .
archive=$(mktemp "${TMPDIR:-/tmp}/meshlet-image.XXXXXX")
trap 'rm -f "$archive"' EXIT
rm -f "$archive"  # buildah writes the archive itself
# shellcheck disable=SC2086
buildah ${MESHLET_BUILDAH_FLAGS:-} push -q "$ref" "docker-archive:$archive:$ref"
"$ctr" --address "$address" -n k8s.io images import "$archive"
