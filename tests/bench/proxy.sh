#!/usr/bin/env bash
# Host-proxy benchmarks (issue 8, SPEC §12), each measured side by side with its anchor in
# the same run; prints Markdown tables, keeps the raw outputs in $RESULTS. Not part of CI.
#
#   bash tests/bench/proxy.sh [DEPLOY_ROUNDS] [WRK_SECONDS]
#
#   1. proxy overhead (wrk, loopback): direct to a keep-alive backend vs berth-proxy at L4 (a
#      published port) and L7 (a domain on the HTTP listener, Host header), beside HAProxy
#      (L4 and L7) and nginx (L7) configured equivalently; requests/s, p50/p99, CPU per request;
#   2. deploy of a pre-pulled image until the port answers the new version: `docker run`
#      (anchor) vs a berth deploy through berth-proxy vs the host-port cut-over (agent without
#      --proxy-socket), alternating v1/v2, interleaved;
#   3. 10 deploys under a load loop (a new connection per request): failed requests and the
#      longest gap between two answers, through the proxy and with the host-port cut-over;
#   4. berth-proxy RSS: idle, with 100 routes, and after one request through each.
#
# Needs Docker and root (apt-get, docker). Release binaries are built into $CARGO_TARGET_DIR.
# PARTS="1 4" runs only those measurements (default: all four).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-10}
WRK_SECONDS=${2:-10}
PARTS=${PARTS:-1 2 3 4}
part() { [[ " $PARTS " == *" $1 "* ]]; }
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release
WORK=$(mktemp -d)
RESULTS=${RESULTS:-$(mktemp -d /tmp/berth-proxy-bench.XXXXXX)}
mkdir -p "$RESULTS"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  docker rm -f berth-bench-baseline >/dev/null 2>&1 || true
  for app in bench-proxy bench-hostports; do
    for c in $(docker ps -aq --filter "label=berth.app=$app"); do docker rm -f "$c" >/dev/null; done
  done
  sh tests/registry/stop.sh "$WORK/registry" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
wait_port() { # port; gives up after 30 s
  local i=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 1500 ] || { echo "nothing listens on port $1 after 30 s" >&2; exit 1; }
    sleep 0.02
  done
}
# median and p90 (nearest rank) of numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
p90() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.9+0.999); if (i<1) i=1; print a[i]}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
# utime+stime clock ticks of the given pids and their threads
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

# --- tools and binaries ----------------------------------------------------------------
need=()
for pair in wrk:wrk haproxy:haproxy nginx:nginx-light busybox:busybox-static \
  docker-registry:docker-registry htpasswd:apache2-utils curl:curl perf:linux-perf; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get install -y "${need[@]}" >"$RESULTS/apt.log" 2>&1 || {
    apt-get update >>"$RESULTS/apt.log" 2>&1
    apt-get install -y "${need[@]}" >>"$RESULTS/apt.log" 2>&1
  }
fi
log "building release binaries into $BIN"
cargo build --release -p berth-agent -p berth-cli -p berth-tests --bins >"$RESULTS/build.log" 2>&1
sh tests/images/build.sh >/dev/null

{
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem/ {print $2}') GiB"
  echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nginx -v 2>&1 | cut -d/ -f2 | sed 's/^/nginx /')"
} | tee "$RESULTS/machine.txt"

# =========================================================================================
# 1. Proxy overhead
# =========================================================================================
# The backend of (1), and the one the routes of (4) point at.
BACKEND_PORT=$(free_port)
"$BIN/proxy-bench" backend --listen "127.0.0.1:$BACKEND_PORT" >"$WORK/backend.out" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")

if part 1; then
log "1. proxy overhead"

BERTH_HTTP=$(free_port)
BERTH_L4=$(free_port)
"$BIN/berth-proxy" --state-dir "$WORK/proxy/state" --socket "$WORK/proxy.sock" \
  --http-listen "127.0.0.1:$BERTH_HTTP" --https-listen none --bind-ip 127.0.0.1 \
  >"$RESULTS/berth-proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_port "$BACKEND_PORT"
wait_port "$BERTH_HTTP"
until [ -S "$WORK/proxy.sock" ]; do sleep 0.02; done
RUST_LOG=warn "$BIN/proxy-bench" routes --socket "$WORK/proxy.sock" --count 1 \
  --first-port "$BERTH_L4" --backend-port "$BACKEND_PORT" --domain bench.test

HA_L4=$(free_port)
HA_L7=$(free_port)
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 4000
defaults
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen l4
  mode tcp
  bind 127.0.0.1:$HA_L4
  server backend 127.0.0.1:$BACKEND_PORT
frontend l7
  mode http
  bind 127.0.0.1:$HA_L7
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  use_backend web if { hdr(host) -i bench.test }
backend web
  mode http
  http-reuse always
  server backend 127.0.0.1:$BACKEND_PORT
EOF
haproxy -f "$WORK/haproxy.cfg" -db >"$RESULTS/haproxy.log" 2>&1 &
HA_PID=$!
PIDS+=("$HA_PID")

NG_L7=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $RESULTS/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream web { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NG_L7;
    server_name bench.test;
    location / {
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >"$RESULTS/nginx.log" 2>&1 &
NG_PID=$!
PIDS+=("$NG_PID")
wait_port "$HA_L4"
wait_port "$HA_L7"
wait_port "$NG_L7"
wait_port "$BERTH_L4"
for p in "$BACKEND_PORT" "$BERTH_L4" "$BERTH_HTTP" "$HA_L4" "$HA_L7" "$NG_L7"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://127.0.0.1:$p/")
  [ "$code" = 200 ] || { echo "port $p answered $code, not 200" >&2; exit 1; }
done

# The processes whose CPU a run costs: the proxy under test (nginx: its workers) and the backend.
proxy_pids() {
  case $1 in
  direct) ;;
  berth-*) echo "$PROXY_PID" ;;
  haproxy-*) echo "$HA_PID" ;;
  nginx-*) pgrep -P "$NG_PID" | tr '\n' ' ' ;;
  esac
}
# wrk output -> "req/s p50_us p99_us errors"
parse_wrk() {
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
    /^ +50%/ {p50=us($2)} /^ +99%/ {p99=us($2)} /^Requests\/sec/ {rps=$2}
    /Socket errors/ {gsub(",", ""); err+=$4+$6+$8+$10} /Non-2xx/ {err+=$NF}
    END {printf "%.0f %.0f %.0f %d\n", rps, p50, p99, err}'
}

TARGETS="direct:$BACKEND_PORT berth-L4:$BERTH_L4 haproxy-L4:$HA_L4 berth-L7:$BERTH_HTTP haproxy-L7:$HA_L7 nginx-L7:$NG_L7"
: >"$WORK/wrk.rows"
for conns in 1 16 64; do
  threads=$([ "$conns" = 1 ] && echo 1 || echo 2)
  for target in $TARGETS; do
    name=${target%%:*} port=${target#*:}
    pids=$(proxy_pids "$name")
    # shellcheck disable=SC2086
    before_proxy=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0)
    wrk -t "$threads" -c "$conns" -d "${WRK_SECONDS}s" --latency -H 'Host: bench.test' \
      "http://127.0.0.1:$port/" >"$RESULTS/wrk-$name-c$conns.txt" 2>&1
    # shellcheck disable=SC2086
    after_proxy=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0)
    read -r rps p50 p99 errors < <(parse_wrk <"$RESULTS/wrk-$name-c$conns.txt")
    # CPU of the proxy per request, in µs (clock ticks of 1/100 s)
    cpu_us=$(awk -v t=$((after_proxy - before_proxy)) -v r="$rps" -v s="$WRK_SECONDS" \
      'BEGIN {if (r > 0) printf "%.1f", t*10000/(r*s); else print "-"}')
    echo "$conns $name $rps $p50 $p99 $errors $cpu_us" >>"$WORK/wrk.rows"
    log "  c=$conns $name: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, errors $errors, proxy CPU ${cpu_us} µs/req"
  done
done
PROXY_HWM=$(awk '/^VmHWM/ {print $2}' "/proc/$PROXY_PID/status")
cp "$WORK/wrk.rows" "$RESULTS/wrk.rows"

{
  echo
  echo "### 1. Proxy overhead (wrk -d ${WRK_SECONDS}s --latency, loopback; -t1 at c=1, -t2 otherwise)"
  echo
  echo "| conns | path | req/s | % of direct | p50 µs | added p50 µs | p99 µs | errors | proxy CPU µs/req |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk '
    $2 == "direct" {d_rps[$1]=$3; d_p50[$1]=$4}
    {rows[NR]=$0}
    END {
      for (i = 1; i <= NR; i++) {
        split(rows[i], f, " ")
        pct = d_rps[f[1]] > 0 ? sprintf("%.0f %%", 100*f[3]/d_rps[f[1]]) : "-"
        added = f[2] == "direct" ? "-" : sprintf("%+d", f[4]-d_p50[f[1]])
        if (f[2] == "direct") pct = "100 %"
        printf "| %s | %s | %d | %s | %d | %s | %d | %d | %s |\n", f[1], f[2], f[3], pct, f[4], added, f[5], f[6], f[7]
      }
    }' "$WORK/wrk.rows"
  echo
  echo "berth-proxy peak RSS (VmHWM) over these runs: $(mib "$PROXY_HWM") MiB"
} | tee "$RESULTS/overhead.md"
kill "$HA_PID" "$NG_PID" "$PROXY_PID" 2>/dev/null || true
fi

# =========================================================================================
# 4. Proxy RSS (before the deploys: nothing else runs)
# =========================================================================================
if part 4; then
log "4. berth-proxy RSS"
RSS_HTTP=$(free_port)
RSS_HTTPS=$(free_port)
"$BIN/berth-proxy" --state-dir "$WORK/rss/state" --socket "$WORK/rss.sock" \
  --http-listen "127.0.0.1:$RSS_HTTP" --https-listen "127.0.0.1:$RSS_HTTPS" --bind-ip 127.0.0.1 \
  >"$RESULTS/berth-proxy-rss.log" 2>&1 &
RSS_PID=$!
PIDS+=("$RSS_PID")
until [ -S "$WORK/rss.sock" ]; do sleep 0.02; done
sleep 5
RSS_IDLE=$(rss_kib "$RSS_PID")
# 100 consecutive bindable ports below the ephemeral range (outgoing connections and their
# TIME_WAIT take ports there)
FIRST=$(python3 -c '
import random, socket
def free(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try: s.bind(("127.0.0.1", p)); return True
    except OSError: return False
    finally: s.close()
while True:
    first = random.randrange(20000, 30000)
    if all(free(first + i) for i in range(100)): print(first); break
')
t0=$(now_ms)
RUST_LOG=warn "$BIN/proxy-bench" routes --socket "$WORK/rss.sock" --count 100 \
  --first-port "$FIRST" --backend-port "$BACKEND_PORT"
t1=$(now_ms)
sleep 2
RSS_ROUTES=$(rss_kib "$RSS_PID")
for i in $(seq 0 99); do curl -s -o /dev/null "http://127.0.0.1:$((FIRST + i))/"; done
sleep 2
RSS_SERVED=$(rss_kib "$RSS_PID")
ROUTES_BYTES=$(stat -c %s "$WORK/rss/state/routes.json")
{
  echo
  echo "### 4. berth-proxy RSS (VmRSS; HTTP and HTTPS listeners open)"
  echo
  echo "| state | RSS |"
  echo "|---|---|"
  echo "| idle, 5 s after start, no route | $(mib "$RSS_IDLE") MiB |"
  echo "| 100 routes set (100 apps, a published port each, one backend), 100 SetRoute calls in $((t1 - t0)) ms | $(mib "$RSS_ROUTES") MiB |"
  echo "| after one request through each of the 100 ports | $(mib "$RSS_SERVED") MiB |"
  echo
  echo "routes.json with 100 routes: $ROUTES_BYTES bytes"
} | tee "$RESULTS/rss.md"
kill "$RSS_PID" 2>/dev/null || true
fi

# =========================================================================================
# 2 and 3. Deploys: a node, a berth-proxy, an agent routing through it and an agent without
# it (host-port cut-over), images in a local registry.
# =========================================================================================
if part 2 || part 3; then
log "2. deploys"
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
"$BIN/berth" dev --no-agent --data-dir "$WORK/node" --grpc-listen "127.0.0.1:$ADMIN_PORT" \
  --agent-listen "127.0.0.1:$(free_port)" --webhook-listen "127.0.0.1:$(free_port)" \
  >"$RESULTS/node.log" 2>&1 &
PIDS+=($!)
until [ -f "$WORK/node/admin.token" ] && (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null; do sleep 0.1; done
export BERTH_ADDR="https://127.0.0.1:$ADMIN_PORT" BERTH_CA_CERT="$WORK/node/pki/ca.crt"
BERTH_TOKEN=$(cat "$WORK/node/admin.token")
export BERTH_TOKEN

"$BIN/berth-proxy" --state-dir "$WORK/dproxy/state" --socket "$WORK/dproxy.sock" \
  --http-listen none --https-listen none --bind-ip 127.0.0.1 >"$RESULTS/berth-proxy-deploys.log" 2>&1 &
PIDS+=($!)
until [ -S "$WORK/dproxy.sock" ]; do sleep 0.02; done

start_agent() { # name, mode, extra args...
  local name=$1 mode=$2 out
  shift 2
  out=$("$BIN/berth" -o json agent token create "$name" --label "mode=$mode")
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out" >"$WORK/$name.token"
  BERTH_ENROLL_TOKEN_FILE="$WORK/$name.token" "$BIN/berth-agent" --control-plane "$BERTH_ADDR" \
    --ca-fingerprint "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_fingerprint"])' <<<"$out")" \
    --data-dir "$WORK/agent-$name" "$@" >"$RESULTS/agent-$name.log" 2>&1 &
  PIDS+=($!)
}
start_agent bench-proxy proxy --proxy-socket "$WORK/dproxy.sock"
start_agent bench-hostports hostports
until [ "$("$BIN/berth" agent list | grep -c connected)" = 2 ]; do sleep 0.2; done

echo benchpw | "$BIN/berth" repository add bench --url "127.0.0.1:$REG_PORT" --username bench >/dev/null
PROXY_APP_PORT=$(free_port)
HP_APP_PORT=$(free_port)
BASE_PORT=$(free_port)
"$BIN/berth" app create bench-proxy --image web --repository bench --port "$PROXY_APP_PORT:80" \
  --health-check tcp:80 --target label:mode=proxy >/dev/null
"$BIN/berth" app create bench-hostports --image web --repository bench --port "$HP_APP_PORT:80" \
  --health-check tcp:80 --target label:mode=hostports >/dev/null
# First deploys pull both versions on the engine (shared by both agents).
for app in bench-proxy bench-hostports; do
  for v in v1 v2; do "$BIN/berth" deploy "$app" "$v" --follow >/dev/null; done
done

# A deploy until its port answers the new version; the deployment's end is waited for too.
# Prints "answered_ms finished_ms".
timed_deploy() { # app port version
  local t0 t1 t2 follow
  t0=$(now_ms)
  "$BIN/berth" deploy "$1" "$3" --follow >"$WORK/follow.out" 2>&1 &
  follow=$!
  "$BIN/proxy-bench" wait-page --port "$2" --version "$3"
  t1=$(now_ms)
  wait "$follow" || { cat "$WORK/follow.out" >&2; return 1; }
  t2=$(now_ms)
  echo "$((t1 - t0)) $((t2 - t0))"
}
if part 2; then
: >"$WORK/deploys.rows"
for i in $(seq 1 "$ROUNDS"); do
  v=$([ $((i % 2)) = 1 ] && echo v1 || echo v2)
  docker rm -f berth-bench-baseline >/dev/null 2>&1 || true
  t0=$(now_ms)
  docker run -d --name berth-bench-baseline -p "127.0.0.1:$BASE_PORT:80" "127.0.0.1:$REG_PORT/web:$v" >/dev/null
  "$BIN/proxy-bench" wait-page --port "$BASE_PORT" --version "$v"
  t1=$(now_ms)
  docker rm -f berth-bench-baseline >/dev/null
  timed_deploy bench-proxy "$PROXY_APP_PORT" "$v" >"$WORK/t"
  read -r p_ans p_fin <"$WORK/t"
  timed_deploy bench-hostports "$HP_APP_PORT" "$v" >"$WORK/t"
  read -r h_ans h_fin <"$WORK/t"
  echo "$((t1 - t0)) $p_ans $p_fin $h_ans $h_fin" >>"$WORK/deploys.rows"
  log "  round $i ($v): docker run $((t1 - t0)) ms; proxy answered $p_ans ms (finished $p_fin); host ports answered $h_ans ms (finished $h_fin)"
done
cp "$WORK/deploys.rows" "$RESULTS/deploys.rows"
col() { awk -v c="$1" '{print $c}' "$WORK/deploys.rows"; }
D_MED=$(col 1 | median)
{
  echo
  echo "### 2. Deploy of a pre-pulled image until the port answers the new version ($ROUNDS rounds, v1/v2 alternating, interleaved)"
  echo
  echo "| what | median ms | p90 ms | ratio to docker run (median) |"
  echo "|---|---|---|---|"
  echo "| docker run -d -p (anchor) | $D_MED | $(col 1 | p90) | 1.00x |"
  for spec in "2:berth deploy through berth-proxy, port answers" "3:berth deploy through berth-proxy, deployment finished" \
    "4:berth deploy, host-port cut-over, port answers" "5:berth deploy, host-port cut-over, deployment finished"; do
    c=${spec%%:*}
    m=$(col "$c" | median)
    echo "| ${spec#*:} | $m | $(col "$c" | p90) | $(awk -v a="$m" -v b="$D_MED" 'BEGIN {printf "%.2fx", a/b}') |"
  done
} | tee "$RESULTS/deploys.md"
fi

# =========================================================================================
# 3. Deploys under load
# =========================================================================================
if part 3; then
log "3. deploys under load"
under_load() { # app port
  local load
  "$BIN/proxy-bench" load --port "$2" --workers 4 >"$WORK/load.out" 2>&1 &
  load=$!
  sleep 1
  for i in $(seq 1 10); do
    v=$([ $((i % 2)) = 1 ] && echo v1 || echo v2)
    "$BIN/berth" deploy "$1" "$v" --follow >/dev/null
  done
  sleep 1
  kill -TERM "$load"
  wait "$load" || true
  cat "$WORK/load.out"
}
LOAD_PROXY=$(under_load bench-proxy "$PROXY_APP_PORT")
LOAD_HP=$(under_load bench-hostports "$HP_APP_PORT")
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
{
  echo
  echo "### 3. 10 deploys under load (4 workers, a new connection per request, no retry)"
  echo
  echo "| path | answered | failed | longest gap between two answers | answers per version |"
  echo "|---|---|---|---|---|"
  echo "| berth-proxy (published port) | $(field answers "$LOAD_PROXY") | $(field failed "$LOAD_PROXY") | $(field longest_gap_ms "$LOAD_PROXY") ms | $(field versions "$LOAD_PROXY") |"
  echo "| host-port cut-over (reference) | $(field answers "$LOAD_HP") | $(field failed "$LOAD_HP") | $(field longest_gap_ms "$LOAD_HP") ms | $(field versions "$LOAD_HP") |"
  echo
  echo "raw: proxy: $LOAD_PROXY"
  echo "raw: host ports: $LOAD_HP"
  echo
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$RESULTS/load.md"
fi
fi
log "raw outputs in $RESULTS"
