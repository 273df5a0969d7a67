#!/bin/sh
# Starts a private Docker registry (Debian's docker-registry, i.e. distribution) with basic
# auth, for tests that deploy by really pulling with credentials.
#
#   tests/registry/start.sh DIR PORT USER PASSWORD [NOTIFY_URL]
#
# Listens on 127.0.0.1:PORT over plain HTTP (the Docker Engine allows insecure registries on
# 127.0.0.0/8 by default), stores blobs in DIR/storage, writes DIR/config.yml, DIR/htpasswd,
# DIR/registry.log and the registry's pid to DIR/pid, and returns once /v2/ answers 401.
# Stop it with tests/registry/stop.sh DIR.
#
# With NOTIFY_URL, the registry sends its event notifications (pushes, pulls) there, with
# `Authorization: Bearer $BERTH_REGISTRY_NOTIFY_SECRET` when that variable is set (the secret
# stays off argv).
#
# With BERTH_REGISTRY_WATCH_PID=<pid> set, a watcher stops the registry and deletes DIR once
# that process has exited, so a test binary that dies without cleaning up leaves nothing
# running.
set -eu

if [ $# -ne 4 ] && [ $# -ne 5 ]; then
  echo "usage: $0 DIR PORT USER PASSWORD [NOTIFY_URL]" >&2
  exit 2
fi
DIR=$1 PORT=$2 USER=$3 PASSWORD=$4 NOTIFY_URL=${5:-}
REGISTRY=${REGISTRY:-/usr/bin/docker-registry}
HERE=$(cd "$(dirname "$0")" && pwd)

for tool in "$REGISTRY" htpasswd curl; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "start.sh: $tool not found (apt-get install -y docker-registry apache2-utils curl)" >&2
    exit 1
  }
done

mkdir -p "$DIR/storage"
DIR=$(cd "$DIR" && pwd)
if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
  echo "start.sh: a registry already runs from $DIR (pid $(cat "$DIR/pid"))" >&2
  exit 1
fi

# bcrypt is the only hash distribution accepts; the password goes through stdin, not argv.
printf '%s\n' "$PASSWORD" | htpasswd -iBc "$DIR/htpasswd" "$USER" 2>/dev/null

cat >"$DIR/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: berth-test-registry
auth:
  htpasswd:
    realm: berth-test
    path: $DIR/htpasswd
YAML

if [ -n "$NOTIFY_URL" ]; then
  cat >>"$DIR/config.yml" <<YAML
notifications:
  endpoints:
    - name: notify
      url: $NOTIFY_URL
      timeout: 5s
      threshold: 10
      backoff: 1s
YAML
  if [ -n "${BERTH_REGISTRY_NOTIFY_SECRET:-}" ]; then
    cat >>"$DIR/config.yml" <<YAML
      headers:
        Authorization: [Bearer $BERTH_REGISTRY_NOTIFY_SECRET]
YAML
  fi
  chmod 600 "$DIR/config.yml"
fi

setsid "$REGISTRY" serve "$DIR/config.yml" </dev/null >"$DIR/registry.log" 2>&1 &
echo $! >"$DIR/pid"

if [ -n "${BERTH_REGISTRY_WATCH_PID:-}" ]; then
  setsid sh -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    sh "$2/stop.sh" "$3"
    rm -rf "$3"
  ' watcher "$BERTH_REGISTRY_WATCH_PID" "$HERE" "$DIR" </dev/null >/dev/null 2>&1 &
fi

# Ready when the API asks for credentials.
i=0
while :; do
  code=$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v2/" 2>/dev/null || true)
  [ "$code" = 401 ] && exit 0
  if ! ps -o stat= -p "$(cat "$DIR/pid")" 2>/dev/null | grep -qv '^Z'; then
    echo "start.sh: the registry exited; its log:" >&2
    cat "$DIR/registry.log" >&2
    exit 1
  fi
  i=$((i + 1))
  if [ "$i" -ge 100 ]; then
    echo "start.sh: the registry did not answer on 127.0.0.1:$PORT within 10 s (last HTTP code $code)" >&2
    sh "$HERE/stop.sh" "$DIR"
    exit 1
  fi
  sleep 0.1
done
