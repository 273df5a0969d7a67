#!/usr/bin/env bash
# Data-lifecycle benchmarks (issue 10): key rotation under a deploy loop, and backup of a
# large database under a write loop beside the `sqlite3 .backup` anchor. Prints Markdown,
# keeps the raw latencies in $RESULTS. Not part of CI.
#
#   bash tests/bench/lifecycle.sh [ROWS] [DB_MIB]
#
#   1. rotation: ROWS secrets (default 100,000); a loop of `berth deploy` (an app whose
#      environment references 20 secrets: accepted, recorded, environment resolved and
#      decrypted, then failing at dispatch, as the node runs no agent) measured alone, then
#      while `berth key rotate` rewraps every row; rotation time and deploy p50/p99/max.
#   2. backup: the database grown to DB_MIB MiB (default 1024) of deployment step log, a loop
#      of `berth secret set` (one write each) measured alone, during `berth backup create`, and
#      during `sqlite3 berth.db ".backup FILE"` on the same live file; time and the longest
#      write.
#
# Uses release binaries from $CARGO_TARGET_DIR (cargo build --release -p berth-control-plane
# -p berth-cli). Latencies are of whole CLI runs (process start and TLS included), the same
# in every column.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-100000}
DB_MIB=${2:-1024}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release}
LOOP_SECONDS=${LOOP_SECONDS:-20}
WORK=$(mktemp -d)
RESULTS=${RESULTS:-$(mktemp -d /tmp/berth-lifecycle-bench.XXXXXX)}
CP_PID=
cleanup() {
  [ -n "$CP_PID" ] && kill "$CP_PID" 2>/dev/null && wait "$CP_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
DATA=$WORK/data
PORT=$(free_port)
start_cp() {
  "$BIN/berth-control-plane" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    --agent-listen "127.0.0.1:$(free_port)" >>"$RESULTS/control-plane.log" 2>&1 &
  CP_PID=$!
  for _ in $(seq 100); do
    [ -f "$DATA/admin.token" ] && "$BIN/berth" --token-file "$DATA/admin.token" group list >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "control plane did not start" >&2; exit 1
}
export BERTH_ADDR=https://127.0.0.1:$PORT BERTH_CA_CERT=$DATA/pki/ca.crt
berth() { "$BIN/berth" --token-file "$DATA/admin.token" "$@"; }

# Latency of each run of "$@" until the file $STOP exists, into $OUT (ms per line).
loop_until() {
  local out=$1 stop=$2; shift 2
  : >"$out"
  local i=0
  while [ ! -f "$stop" ]; do
    local t0; t0=$(now_ms)
    "$@" "$i" >/dev/null 2>&1 || true
    echo $(( $(now_ms) - t0 )) >>"$out"
    i=$((i + 1))
  done
}
stats() {
  sort -n "$1" | awk '{ a[NR] = $1 } END { p = int(NR * 0.99); if (p < 1) p = 1; printf "%d | %d | %d | %d", NR, a[int(NR * 0.5) + 1], a[p], a[NR] }'
}

start_cp

echo "## 1. Key rotation of $ROWS rows under a deploy loop"
berth group create g >/dev/null
python3 - "$ROWS" "$WORK" <<'PY'
import sys
rows, work = int(sys.argv[1]), sys.argv[2]
per = 20000  # import documents are capped at 1 MiB
for part, start in enumerate(range(0, rows, per)):
    with open(f"{work}/import-{part}.env", "w") as f:
        for i in range(start, min(rows, start + per)):
            f.write(f"S{i}=value-{i}-{'x' * 16}\n")
PY
for f in "$WORK"/import-*.env; do berth secret import g --file "$f" --format dotenv >/dev/null; done
berth app create web --image web >/dev/null
for i in $(seq 0 19); do berth env set "V$i" --app web --secret "g/S$i" >/dev/null; done
deploy_once() { berth deploy web "v$1"; }

STOP=$WORK/stop; rm -f "$STOP"
( sleep "$LOOP_SECONDS"; touch "$STOP" ) &
loop_until "$RESULTS/deploy-alone.ms" "$STOP" deploy_once
rm -f "$STOP"
loop_until "$RESULTS/deploy-rotating.ms" "$STOP" deploy_once &
LOOP=$!
T0=$(now_ms)
berth key rotate >"$RESULTS/rotate.out" 2>&1
ROTATE_MS=$(( $(now_ms) - T0 ))
touch "$STOP"; wait "$LOOP"
echo
echo "rotation (\`berth key rotate\`, waits for the rewrap): $ROTATE_MS ms for $ROWS secrets"
echo
echo "| deploy loop | runs | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
echo "| alone (${LOOP_SECONDS} s) | $(stats "$RESULTS/deploy-alone.ms") |"
echo "| during the rewrap | $(stats "$RESULTS/deploy-rotating.ms") |"

echo
echo "## 2. Backup of a ${DB_MIB} MiB database under a write loop"
kill "$CP_PID"; wait "$CP_PID" 2>/dev/null || true; CP_PID=
# Grow the database with deployment step log rows (what grows in a real one).
sqlite3 "$DATA/berth.db" <<SQL >/dev/null
INSERT INTO deployment_logs (application_id, version, deployment_id, trigger_type, status)
  VALUES ((SELECT id FROM applications WHERE name = 'web'), 'filler', 'filler', 'manual', 'failed');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $DB_MIB * 1024)
INSERT INTO deployment_events (deployment_id, phase, message)
  SELECT 'filler', 'log', hex(randomblob(480)) FROM n;
SQL
ls -l "$DATA/berth.db" | awk '{printf "database: %.0f MiB\n", $5/1048576}'
start_cp
write_once() { echo "v$1" | berth secret set g W; }
rm -f "$STOP"; ( sleep "$LOOP_SECONDS"; touch "$STOP" ) &
loop_until "$RESULTS/write-alone.ms" "$STOP" write_once

rm -f "$STOP"; loop_until "$RESULTS/write-berth-backup.ms" "$STOP" write_once & LOOP=$!
T0=$(now_ms); berth backup create "$WORK/b.berthbak" >/dev/null; BERTH_MS=$(( $(now_ms) - T0 ))
touch "$STOP"; wait "$LOOP"
ARCHIVE_MIB=$(( $(stat -c %s "$WORK/b.berthbak") / 1048576 )); rm -f "$WORK/b.berthbak"

# SQLite's backup API restarts its copy whenever another connection writes the source, so
# under a write loop that never pauses `.backup` never finishes: the loop here stops after
# LOOP_SECONDS, and the report says whether the copy finished only once the writes stopped.
rm -f "$STOP"; loop_until "$RESULTS/write-sqlite-backup.ms" "$STOP" write_once & LOOP=$!
( sleep "$LOOP_SECONDS"; touch "$STOP" ) & TIMER=$!
T0=$(now_ms); sqlite3 "$DATA/berth.db" ".backup '$WORK/anchor.db'"; ANCHOR_MS=$(( $(now_ms) - T0 ))
ANCHOR_NOTE=""; [ -f "$STOP" ] && ANCHOR_NOTE=" (finished only after the write loop stopped at ${LOOP_SECONDS} s)"
touch "$STOP"; kill "$TIMER" 2>/dev/null || true; wait "$LOOP"; rm -f "$WORK/anchor.db"

echo
echo "| | time ms | writes | p50 ms | p99 ms | longest write ms |"
echo "|---|---|---|---|---|---|"
echo "| no backup (${LOOP_SECONDS} s) | - | $(stats "$RESULTS/write-alone.ms") |"
echo "| \`berth backup create\` (archive ${ARCHIVE_MIB} MiB) | $BERTH_MS | $(stats "$RESULTS/write-berth-backup.ms") |"
echo "| \`sqlite3 .backup\` (anchor)$ANCHOR_NOTE | $ANCHOR_MS | $(stats "$RESULTS/write-sqlite-backup.ms") |"
echo
echo "raw: $RESULTS"
