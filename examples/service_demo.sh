#!/usr/bin/env bash
# Submit a manifest to a running task-affinity server, poll the job, download its groups.
# Usage: TASK_AFFINITY_KEY=ta_... examples/service_demo.sh [URL] [MANIFEST] [OUT]
set -euo pipefail
URL=${1:-http://127.0.0.1:8000}
MANIFEST=${2:-examples/planted.json}
OUT=${3:-groups.json}
AUTH="Authorization: Bearer ${TASK_AFFINITY_KEY:?set TASK_AFFINITY_KEY to the key serve printed}"
field() { python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"; }

JOB=$(curl -sS --fail-with-body -H "$AUTH" -H 'Content-Type: application/json' --data @"$MANIFEST" \
      "$URL/v1/jobs" | field 'j["id"]')
echo "submitted $JOB"
while :; do
    STATE=$(curl -sS --fail-with-body -H "$AUTH" "$URL/v1/jobs/$JOB" \
            | field 'j["status"], j["stage"], str(round(100 * j["progress"])) + "%", j["error"] or ""')
    echo "$STATE"
    case $STATE in
        succeeded*) break ;;
        failed*|cancelled*) exit 1 ;;
    esac
    sleep 2
done
curl -sS --fail-with-body -H "$AUTH" "$URL/v1/jobs/$JOB/groups" -o "$OUT"
echo "groups written to $OUT"
