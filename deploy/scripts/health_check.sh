#!/bin/bash
# health_check.sh — the runbook's health check (exit 0 healthy, 1 degraded, 2 unreachable).
# Usage: health_check.sh [URL]   (default http://localhost:8080/api/health; env ARAGORA_HEALTH_URL)
# Needs curl and jq. `aragora health --url URL` does the same without jq.

URL="${1:-${ARAGORA_HEALTH_URL:-http://localhost:8080/api/health}}"

# -f is not used: an unhealthy server answers 503 with a JSON body worth reading.
HEALTH=$(curl -s --max-time 10 "$URL")
if [ $? -ne 0 ] || [ -z "$HEALTH" ]; then
  echo "CRITICAL: Health endpoint unreachable"
  exit 2
fi

STATUS=$(echo "$HEALTH" | jq -r '.status' 2>/dev/null)
if [ -z "$STATUS" ] || [ "$STATUS" = "null" ]; then
  echo "CRITICAL: Health endpoint answered without a status"
  exit 2
fi
if [ "$STATUS" = "unhealthy" ]; then
  echo "CRITICAL: Service unhealthy - $(echo "$HEALTH" | jq -c '.checks')"
  exit 2
fi
if [ "$STATUS" != "healthy" ]; then
  echo "WARNING: Service degraded - $STATUS"
  exit 1
fi

# Check component health
DB_STATUS=$(echo "$HEALTH" | jq -r '.checks.database.status')
if [ "$DB_STATUS" != "ok" ]; then
  echo "WARNING: Database check failed"
  exit 1
fi

echo "OK: All checks passed"
exit 0
