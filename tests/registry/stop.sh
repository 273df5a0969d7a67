#!/bin/sh
# Stops a registry started by tests/registry/start.sh DIR. Keeps DIR (its storage and log).
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
PIDFILE=$1/pid
[ -f "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")

# Alive and not a zombie waiting for whoever adopted it to reap it.
alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }

if kill "$pid" 2>/dev/null; then
  i=0
  while alive "$pid" && [ "$i" -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  kill -9 "$pid" 2>/dev/null || true
fi
rm -f "$PIDFILE"
