#!/bin/sh
# The Tilt dev image's entrypoint: runs "$@" and, on SIGHUP (Tilt's live update sends
# it after syncing changed code), ends it and runs it again, so new code runs without a
# new image or a new container. SIGTERM ends both.
child=""
trap 'restart=1; kill -TERM "$child" 2>/dev/null' HUP
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM INT
while :; do
  restart=0
  "$@" &
  child=$!
  wait "$child"
  status=$?
  # wait returns early when a trap ran: wait again until the process has really gone.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
  [ "$restart" = 1 ] || exit "$status"
  echo "dev-loop: code changed, starting $1 again" >&2
done
