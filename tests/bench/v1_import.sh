#!/usr/bin/env bash
# V1 import benchmark (issue 10): `berth import-v1` of a V1 database with 10,000 secrets,
# 500 applications and 20,000 variables (tests/bench/v1_gen.py) into a fresh `berth dev`
# node, beside two anchors measured in the same run on the same data:
#   - `sqlite3 v1.db .dump | sqlite3 copy.db`: SQLite copying the same rows, with no
#     validation, no encryption, no API;
#   - `berth secret import` of the same 10,000 secrets as one .env document: berth's existing
#     bulk path (one RPC, one transaction, every value encrypted), secrets only.
# Each round starts a new node; prints a Markdown table (median and every round). Not CI.
#
#   bash tests/bench/v1_import.sh [ROUNDS]
#
# Needs python3 and sqlite3. Release binaries are built into $CARGO_TARGET_DIR (or target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
NODE_PID=
cleanup() {
  if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
wait_port() {
  local i=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { echo "nothing listens on port $1" >&2; exit 1; }
    sleep 0.05
  done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

log "building release binaries"
cargo build --release -q -p berth-cli
BERTH=$TARGET/release/berth

log "generating the V1 database"
python3 tests/bench/v1_gen.py "$WORK/v1.db" >&2
V1_SUM=$(sha256sum "$WORK/v1.db" | cut -d' ' -f1)
# The same secrets as a .env document, for the bulk-import anchor.
sqlite3 "$WORK/v1.db" "SELECT name || '=' || reference FROM secrets ORDER BY id" > "$WORK/secrets.env"

declare -a DRY REAL SECOND DUMP BULK SERVER
for round in $(seq 1 "$ROUNDS"); do
  data=$WORK/node-$round
  port=$(free_port)
  "$BERTH" dev --no-agent --data-dir "$data" --grpc-listen "127.0.0.1:$port" \
    --agent-listen 127.0.0.1:0 --webhook-listen 127.0.0.1:0 \
    --proxy-http-listen none --proxy-https-listen none >"$WORK/node-$round.log" 2>&1 &
  NODE_PID=$!
  wait_port "$port"
  export BERTH_ADDR=https://127.0.0.1:$port BERTH_CA_CERT=$data/pki/ca.crt
  export BERTH_TOKEN_FILE=$data/admin.token

  t0=$(now_ms); "$BERTH" import-v1 "$WORK/v1.db" --dry-run -o json >"$WORK/dry.json"; t1=$(now_ms)
  DRY+=($((t1 - t0)))
  t0=$(now_ms)
  "$BERTH" import-v1 "$WORK/v1.db" --tokens-out "$WORK/tokens-$round.json" -o json >"$WORK/real.json"
  t1=$(now_ms)
  REAL+=($((t1 - t0)))
  t0=$(now_ms); "$BERTH" import-v1 "$WORK/v1.db" -o json >"$WORK/second.json"; t1=$(now_ms)
  SECOND+=($((t1 - t0)))
  python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
real = json.load(open(f"{work}/real.json"))
second = json.load(open(f"{work}/second.json"))
count = lambda r, o: sum(1 for i in r["items"] if i["outcome"] == o)
by_kind = {}
for i in real["items"]:
    if i["outcome"] == "created":
        by_kind[i["kind"]] = by_kind.get(i["kind"], 0) + 1
assert real["applied"] and count(real, "conflict") == 0, "the import did not apply"
assert by_kind.get("secret") == 10000 and by_kind.get("application") == 500 \
    and by_kind.get("variable") == 20000, by_kind
assert count(second, "created") == 0 and count(second, "conflict") == 0, "the second run created rows"
PY
  t0=$(now_ms)
  "$BERTH" group create bulk >/dev/null
  "$BERTH" secret import bulk --file "$WORK/secrets.env" >/dev/null
  t1=$(now_ms)
  BULK+=($((t1 - t0)))
  kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=
  # The control plane's own part of the real import (check + the transaction), from its log.
  SERVER+=($(python3 - "$WORK/node-$round.log" <<'PY'
import re, sys
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read())
runs = [int(ms) for ms in re.findall(r"v1 import.*?total_ms=(\d+)", text)]
print(runs[1])  # dry run, import, second run
PY
))

  rm -f "$WORK/copy.db"
  t0=$(now_ms); sqlite3 "$WORK/v1.db" .dump | sqlite3 "$WORK/copy.db"; t1=$(now_ms)
  DUMP+=($((t1 - t0)))
  log "round $round: dry ${DRY[-1]} ms, import ${REAL[-1]} ms (control plane ${SERVER[-1]} ms), second ${SECOND[-1]} ms, bulk secrets ${BULK[-1]} ms, dump|sqlite3 ${DUMP[-1]} ms"
done
[ "$(sha256sum "$WORK/v1.db" | cut -d' ' -f1)" = "$V1_SUM" ] || { echo "the V1 database changed" >&2; exit 1; }

row() { # label, values...
  local label=$1; shift
  local med; med=$(printf '%s\n' "$@" | median)
  echo "| $label | $med | $(IFS=,; echo "$*" | sed 's/,/, /g') |"
}
echo "| what (10,000 secrets, 500 apps, 20,000 variables) | median ms | rounds (ms) |"
echo "|---|---:|---|"
row "\`berth import-v1 --dry-run\` (read, map, one RPC, decide everything, roll back)" "${DRY[@]}"
row "\`berth import-v1\` (the same, committed; 500 webhook tokens to a file)" "${REAL[@]}"
row "… of which the control plane (check, decide, write, commit; its log)" "${SERVER[@]}"
row "\`berth import-v1\` again (everything already imported)" "${SECOND[@]}"
row "anchor: \`berth secret import\` of the 10,000 secrets alone (one .env)" "${BULK[@]}"
row "anchor: \`sqlite3 v1.db .dump \| sqlite3 copy.db\`" "${DUMP[@]}"
