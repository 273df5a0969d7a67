#!/usr/bin/env bash
# The kill -9 campaign in full (issue 9, SPEC §11): the e2e test
# crash_campaign::kill_9_campaign_… with 50 rounds instead of CI's 10, then the full-disk
# check, and the figures they print: rounds, kills per process, acknowledged writes and
# deploys, deployments by outcome, lost, stuck, doubles, down, integrity failures.
#
#   bash tests/campaign.sh [ROUNDS]            # 50 by default
#   BERTH_CAMPAIGN_SEED=<seed> bash tests/campaign.sh   # the same choices as that run
#
# Needs what the e2e suite needs (tests/run.sh installs it): Docker, the registry, the test
# images; and root for the full-disk check's tmpfs. The whole output is kept in $LOG.
# Exits non-zero when the campaign found anything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-50}
LOG=${LOG:-$(mktemp /tmp/berth-campaign.XXXXXX.log)}

cargo build --workspace --bins
status=0
BERTH_CAMPAIGN_ROUNDS=$ROUNDS cargo nextest run -p berth-tests --profile long --no-fail-fast --no-capture \
  -E 'test(/crash_campaign::/)' >"$LOG" 2>&1 || status=$?

echo "kill -9 campaign, $ROUNDS rounds (full output: $LOG)"
grep -E '^campaign: ' "$LOG" | sed 's/^campaign: /  /' || true
grep -E '(PASS|FAIL) \[.*crash_campaign::' "$LOG" | sort -u || true
exit "$status"
