#!/bin/sh
# Deploys an application through the berth webhook shim, the way a CI job does (the seed's
# scenario 4), and fails the job when the deployment fails.
#
#   BERTH_WEBHOOK_URL=https://deploy.example.com BERTH_WEBHOOK_TOKEN=whk_... \
#     tests/webhook/ci-deploy.sh APP VERSION
#
# POST /webhook/deploy waits for the deployment: 200 means it succeeded, 500 (success:false)
# that it failed, and `curl --fail-with-body` turns any status >= 400 into a failed step
# that still prints the reason. A deployment that outlives the shim's wait answers 202 with
# a status URL; the script then polls that URL (same token) until the deployment finishes,
# at most BERTH_DEPLOY_TIMEOUT seconds (default 600).
#
# Exit codes: 0 deployed, 1 refused or failed, 2 usage.
set -eu

if [ $# -ne 2 ]; then
  echo "usage: $0 APP VERSION (with BERTH_WEBHOOK_URL and BERTH_WEBHOOK_TOKEN set)" >&2
  exit 2
fi
APP=$1 VERSION=$2
: "${BERTH_WEBHOOK_URL:?set BERTH_WEBHOOK_URL to the shim base URL}"
: "${BERTH_WEBHOOK_TOKEN:?set BERTH_WEBHOOK_TOKEN to the application webhook token}"
TIMEOUT=${BERTH_DEPLOY_TIMEOUT:-600}
BASE=${BERTH_WEBHOOK_URL%/}

# Both end up inside a JSON string: allow only what names and Docker tags may contain.
for value in "$APP" "$VERSION"; do
  case $value in
    '' | *[!A-Za-z0-9._:-]*)
      echo "ci-deploy.sh: invalid application or version: $value" >&2
      exit 2
      ;;
  esac
done

# Prints the response body, then the HTTP status on its own last line.
response=$(curl --fail-with-body -sS -X POST "$BASE/webhook/deploy" \
  -H "Authorization: Bearer $BERTH_WEBHOOK_TOKEN" \
  -H "Content-Type: application/json" \
  -d "{\"applicationName\":\"$APP\",\"version\":\"$VERSION\"}" \
  -w '\n%{http_code}') || {
  echo "$response" | sed '$d' >&2
  echo "ci-deploy.sh: deployment of $APP $VERSION failed" >&2
  exit 1
}
code=$(echo "$response" | tail -n 1)
body=$(echo "$response" | sed '$d')
echo "$body"

if [ "$code" = 202 ]; then
  url=$(echo "$body" | sed -n 's/.*"statusUrl":"\([^"]*\)".*/\1/p')
  case $url in
    /*) url="$BASE$url" ;;
  esac
  elapsed=0
  while :; do
    sleep 2
    elapsed=$((elapsed + 2))
    response=$(curl --fail-with-body -sS "$url" \
      -H "Authorization: Bearer $BERTH_WEBHOOK_TOKEN" \
      -w '\n%{http_code}') || {
      echo "$response" | sed '$d' >&2
      echo "ci-deploy.sh: deployment of $APP $VERSION failed" >&2
      exit 1
    }
    code=$(echo "$response" | tail -n 1)
    [ "$code" = 202 ] || break
    if [ "$elapsed" -ge "$TIMEOUT" ]; then
      echo "ci-deploy.sh: deployment of $APP $VERSION still running after ${TIMEOUT}s: $url" >&2
      exit 1
    fi
  done
  echo "$response" | sed '$d'
fi
echo "ci-deploy.sh: deployed $APP $VERSION" >&2
