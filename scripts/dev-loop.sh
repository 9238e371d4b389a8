#!/bin/sh
# The Tilt dev image's entrypoint: runs "$@" and, on SIGHUP (Tilt's live update sends
# it after syncing changed code), ends it and runs it again, so new code runs without a
# new image or a new container. SIGTERM ends both.
#
# A signal can come before the child can be ended: before its PID is known (between
# `... &` and `child=$!`, or before the first child), or before it has left this
# shell's code (a forked child runs these traps until it clears them, so a SIGTERM sent
# then is lost). So the traps only note what was asked, and the child is ended once its
# PID is known and it has said, with SIGUSR1 from a plain `sh` that then runs the
# command, that it is past that point. A child that started while a SIGHUP came is
# ended too: it may have read the old code.
child=""
started=0
restart=0
stop=0
end_child() {
  if [ -n "$child" ] && [ "$started" = 1 ] && [ "$restart$stop" != 00 ]; then
    kill -TERM "$child" 2>/dev/null
  fi
}
trap 'restart=1; end_child' HUP
trap 'stop=1; end_child' TERM INT
trap 'started=1; end_child' USR1
while [ "$stop" = 0 ]; do
  started=0
  sh -c 'kill -USR1 "$PPID"; exec "$@"' dev-loop "$@" &
  child=$!
  end_child
  wait "$child"
  status=$?
  # wait returns early when a trap ran: wait again until the process has really gone.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
  child=""
  [ "$stop" = 0 ] || break
  [ "$restart" = 1 ] || exit "$status"
  restart=0
  echo "dev-loop: code changed, starting $1 again" >&2
done
exit 143
