#!/usr/bin/env bash
# Benchmarks (SPEC §12) that need the real Docker Engine, measured side by side in one run:
#   (c) a berth deploy of a pre-pulled image vs `docker run` of the same image, until the port
#       answers;
#   (d) the idle RSS of a berth-agent process.
#
#   cargo build --release --bins && bash tests/bench/docker-deploy.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-10}
BIN=${BIN:-target/release}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  docker rm -f berth-bench-baseline >/dev/null 2>&1 || true
  for c in $(docker ps -aq --filter label=berth.app=benchapp); do docker rm -f "$c" >/dev/null; done
  sh tests/registry/stop.sh "$WORK/registry" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
wait_port() { until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.01; done; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

sh tests/images/build.sh >/dev/null
REG_PORT=$(free_port)
sh tests/registry/start.sh "$WORK/registry" "$REG_PORT" bench benchpw
export DOCKER_CONFIG="$WORK/docker"
mkdir -p "$DOCKER_CONFIG"
echo benchpw | docker login -u bench --password-stdin "127.0.0.1:$REG_PORT" >/dev/null 2>&1
for v in v1 v2; do
  docker tag "berth-test/web:$v" "127.0.0.1:$REG_PORT/web:$v"
  docker push -q "127.0.0.1:$REG_PORT/web:$v" >/dev/null
done

ADMIN_PORT=$(free_port)
AGENT_PORT=$(free_port)
"$BIN/berth" dev --data-dir "$WORK/node" --grpc-listen "127.0.0.1:$ADMIN_PORT" \
  --agent-listen "127.0.0.1:$AGENT_PORT" --webhook-listen "127.0.0.1:$(free_port)" >"$WORK/node.log" 2>&1 &
PIDS+=($!)
until [ -f "$WORK/node/admin.token" ] && (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null; do sleep 0.1; done
export BERTH_ADDR="https://127.0.0.1:$ADMIN_PORT" BERTH_CA_CERT="$WORK/node/pki/ca.crt" BERTH_TOKEN=$(cat "$WORK/node/admin.token")
until "$BIN/berth" agent list | grep -q connected; do sleep 0.2; done

echo benchpw | "$BIN/berth" repository add bench --url "127.0.0.1:$REG_PORT" --username bench >/dev/null
APP_PORT=$(free_port)
"$BIN/berth" app create benchapp --image web --repository bench --port "$APP_PORT:80" \
  --health-check tcp:80 >/dev/null

# Pre-pull both versions (the first deploys), then measure.
"$BIN/berth" deploy benchapp v1 --follow >/dev/null
"$BIN/berth" deploy benchapp v2 --follow >/dev/null
BASE_PORT=$(free_port)
berth_ms=() docker_ms=()
for i in $(seq 1 "$ROUNDS"); do
  v=$([ $((i % 2)) = 1 ] && echo v1 || echo v2)
  t0=$(now_ms); "$BIN/berth" deploy benchapp "$v" --follow >/dev/null; wait_port "$APP_PORT"; t1=$(now_ms)
  berth_ms+=($((t1 - t0)))
  docker rm -f berth-bench-baseline >/dev/null 2>&1 || true
  t0=$(now_ms)
  docker run -d --name berth-bench-baseline -p "$BASE_PORT:80" "127.0.0.1:$REG_PORT/web:$v" >/dev/null
  wait_port "$BASE_PORT"; t1=$(now_ms)
  docker_ms+=($((t1 - t0)))
done
B=$(printf '%s\n' "${berth_ms[@]}" | median)
D=$(printf '%s\n' "${docker_ms[@]}" | median)
echo "deploy of a pre-pulled image, median of $ROUNDS: berth deploy ${B} ms, docker run ${D} ms, ratio $(awk -v b="$B" -v d="$D" 'BEGIN{printf "%.2f", b/d}')x, added $(awk -v b="$B" -v d="$D" 'BEGIN{printf "%d", b-d}') ms"

# (d) an enrolled berth-agent process, idle.
TOKEN_OUT=$("$BIN/berth" -o json agent token create idle-agent)
TOKEN=$(echo "$TOKEN_OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
FP=$(echo "$TOKEN_OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_fingerprint"])')
BERTH_ENROLL_TOKEN="$TOKEN" "$BIN/berth-agent" --control-plane "$BERTH_ADDR" --ca-fingerprint "$FP" \
  --data-dir "$WORK/idle-agent" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=($AGENT_PID)
until "$BIN/berth" agent list | grep idle-agent | grep -q connected; do sleep 0.2; done
sleep 10
echo "agent idle RSS after 10 s connected: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$AGENT_PID/status)"
