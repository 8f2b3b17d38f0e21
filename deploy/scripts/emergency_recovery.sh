#!/bin/bash
# emergency_recovery.sh — the runbook's "Complete Service Outage" procedure, adapted to how
# this server is deployed (systemd unit `aragora`, see docs/operations.md). Run as root.
#
#   emergency_recovery.sh            stop, clear disposable state, check dependencies, start
#                                    with safe defaults, verify
#   emergency_recovery.sh --restore  drop the safe defaults again and restart normally
#
# Nothing here loses debate data (contract §8): Redis holds only rate-limit state and live
# fan-out, /tmp/aragora_*.lock are pid locks, and debates interrupted by the kill are resumed
# from their event log on the next start (or by another instance once their lease expires).
set -u

DROPIN_DIR=/run/systemd/system/aragora.service.d
DROPIN="$DROPIN_DIR/50-emergency-safe-defaults.conf"
HEALTH_URL="${ARAGORA_HEALTH_URL:-http://localhost:8080/api/health}"

if [ "${1:-}" = "--restore" ]; then
  rm -f "$DROPIN"
  systemctl daemon-reload
  systemctl restart aragora
  sleep 5
  curl -s "$HEALTH_URL"; echo
  exit 0
fi

# 1. Stop everything
systemctl stop aragora
# Match the process name exactly: `pkill -f aragora` would also match this script's own
# path (/opt/aragora/...) and any editor or tail with "aragora" in its arguments.
pkill -9 -x aragora

# 2. Clear potentially corrupted state
redis-cli FLUSHALL
rm -f /tmp/aragora_*.lock

# 3. Verify dependencies
redis-cli ping || systemctl restart redis-server || systemctl restart redis
pg_isready || systemctl restart postgresql

# 4. Start with safe defaults. `export` in this shell would not reach a systemd service, so
# the defaults go into a runtime drop-in (gone after a reboot, or with --restore).
mkdir -p "$DROPIN_DIR"
cat > "$DROPIN" <<'CONF'
[Service]
Environment=ARAGORA_MAX_CONCURRENT_DEBATES=3
Environment=ARAGORA_RATE_LIMIT_DISABLED=1
CONF
systemctl daemon-reload
systemctl start aragora

# 5. Verify
sleep 5
curl -s "$HEALTH_URL"; echo
echo "Safe defaults are active (max 3 concurrent debates, rate limiting off)."
echo "When the service is stable: $0 --restore"
