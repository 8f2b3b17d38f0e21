#!/bin/bash
# emergency_recovery.sh — the runbook's "Complete Service Outage" procedure, adapted to how
# this server is deployed (systemd unit `aragora`, see docs/operations.md). Run as root.
#
#   emergency_recovery.sh [--yes] [--dry-run] [--env-file F]
#       stop the unit, clear Aragora's disposable state, check the dependencies Aragora is
#       configured to use, start with safe defaults, verify
#   emergency_recovery.sh --restore [--yes] [--dry-run]
#       drop the safe defaults again and restart normally
#
#   --yes        do not ask for confirmation
#   --dry-run    print what would be done, change nothing
#   --env-file   the unit's environment file (default /etc/aragora/aragora.env, or
#                ARAGORA_ENV_FILE)
#
# It acts only on what Aragora is configured to use (read from the environment file): its
# Redis database and key prefixes (never FLUSHALL: other tenants' keys stay), its own unit
# (`systemctl kill`, never a host-wide pkill), Redis and Postgres only when Aragora uses them.
# Exit status: 0 healthy at the end, 1 degraded or unhealthy, 2 bad usage or refused.
#
# Nothing here loses debate data: Redis holds only rate-limit state, shared breaker state and
# live fan-out; /tmp/aragora_*.lock are pid locks; debates interrupted by the kill are resumed
# from their event log on the next start (or by another instance once their lease expires).
set -u

UNIT=aragora
ENV_FILE="${ARAGORA_ENV_FILE:-/etc/aragora/aragora.env}"
RUN_DIR="${ARAGORA_RUN_DIR:-/run}"
DROPIN_DIR="$RUN_DIR/systemd/system/$UNIT.service.d"
DROPIN="$DROPIN_DIR/50-emergency-safe-defaults.conf"
SAFE_ENV="$RUN_DIR/aragora/emergency.env"
LOCK_DIR_DEFAULT=/tmp
YES=0
DRY=0
RESTORE=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --yes|-y) YES=1 ;;
    --dry-run|-n) DRY=1 ;;
    --restore) RESTORE=1 ;;
    --env-file) shift; [ $# -gt 0 ] || usage; ENV_FILE="$1" ;;
    --help|-h) usage ;;
    *) echo "emergency_recovery.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done

# Print, then run unless --dry-run.
run() {
  echo "+ $*"
  [ "$DRY" = 1 ] && return 0
  "$@"
}

# A value from the environment file (the last assignment wins, quotes removed); empty if unset.
setting() {
  [ -r "$ENV_FILE" ] || return 0
  sed -n "s/^[[:space:]]*\(export[[:space:]]\+\)\{0,1\}$1=//p" "$ENV_FILE" | tail -n 1 \
    | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
}

REDIS_URL="$(setting ARAGORA_REDIS_URL)"
RL_PREFIX="$(setting ARAGORA_RATE_LIMIT_PREFIX)"; RL_PREFIX="${RL_PREFIX:-aragora:rl:}"
BUS_CHANNEL="$(setting ARAGORA_EVENT_BUS_CHANNEL)"; BUS_CHANNEL="${BUS_CHANNEL:-aragora:events}"
DATABASE_URL="$(setting ARAGORA_DATABASE_URL)"; DATABASE_URL="${DATABASE_URL:-$(setting DATABASE_URL)}"
API_PORT="$(setting ARAGORA_API_PORT)"; API_PORT="${API_PORT:-8080}"
LOCK_DIR="$(setting ARAGORA_LOCK_DIR)"; LOCK_DIR="${LOCK_DIR:-$LOCK_DIR_DEFAULT}"
HEALTH_URL="${ARAGORA_HEALTH_URL:-http://localhost:$API_PORT/api/health}"

confirm() {
  [ "$YES" = 1 ] || [ "$DRY" = 1 ] && return 0
  if [ ! -t 0 ]; then
    echo "emergency_recovery.sh: refusing to act without confirmation; pass --yes" >&2
    exit 2
  fi
  printf '%s [y/N] ' "$1"
  read -r answer
  case "$answer" in y|Y|yes|YES) ;; *) echo "nothing done"; exit 2 ;; esac
}

# The final check: 0 healthy, 1 otherwise (degraded, unhealthy, unreachable).
verify() {
  [ "$DRY" = 1 ] && { echo "+ check $HEALTH_URL"; return 0; }
  local body status=""
  for _ in $(seq 1 "${ARAGORA_RECOVERY_HEALTH_ATTEMPTS:-15}"); do
    body="$(curl -s --max-time 5 "$HEALTH_URL" || true)"
    # The top-level status is the body's first field.
    status="$(printf '%s' "$body" | grep -o '"status"[[:space:]]*:[[:space:]]*"[a-z_]*"' | head -n1 \
      | sed 's/.*"\([a-z_]*\)"$/\1/')"
    [ "$status" = healthy ] && break
    sleep 2
  done
  echo "$body"
  case "$status" in
    healthy) echo "OK: $UNIT is healthy"; return 0 ;;
    degraded) echo "WARNING: $UNIT is up but degraded"; return 1 ;;
    "") echo "CRITICAL: no answer from $HEALTH_URL"; return 1 ;;
    *) echo "CRITICAL: $UNIT is $status"; return 1 ;;
  esac
}

if [ "$RESTORE" = 1 ]; then
  confirm "Drop the emergency safe defaults and restart $UNIT?"
  run rm -f "$DROPIN" "$SAFE_ENV"
  run systemctl daemon-reload
  run systemctl restart "$UNIT"
  verify
  exit $?
fi

echo "Environment file: $ENV_FILE$([ -r "$ENV_FILE" ] || echo ' (not readable: using the defaults)')"
echo "Redis: ${REDIS_URL:-not used}; keys cleared: ${REDIS_URL:+${RL_PREFIX}* and ${BUS_CHANNEL}:breaker:*}"
echo "Database: $(case "$DATABASE_URL" in postgres*) echo postgres ;; *) echo 'embedded SQLite' ;; esac)"
confirm "Stop $UNIT, clear its disposable state and restart it with safe defaults?"

# 1. Stop the unit (and only it): a graceful stop first, then SIGKILL to whatever is left.
run systemctl stop "$UNIT"
run systemctl kill -s KILL "$UNIT" 2>/dev/null || true

# 2. Clear Aragora's disposable state: its rate-limit buckets and shared breaker state in
# its own Redis database (by prefix, never FLUSHALL), and its pid lock files.
if [ -n "$REDIS_URL" ]; then
  for pattern in "${RL_PREFIX}*" "${BUS_CHANNEL}:breaker:*"; do
    if [ "$DRY" = 1 ]; then
      echo "+ delete keys matching '$pattern' in $REDIS_URL"
    else
      redis-cli -u "$REDIS_URL" --scan --pattern "$pattern" \
        | xargs -r -n 100 redis-cli -u "$REDIS_URL" UNLINK >/dev/null
    fi
  done
fi
run rm -f "$LOCK_DIR"/aragora_*.lock

# 3. Dependencies: only those Aragora uses, and only when they do not answer.
if [ -n "$REDIS_URL" ] && ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  case "$REDIS_URL" in
    *://localhost*|*://127.0.0.1*|*@localhost*|*@127.0.0.1*|*://\[::1\]*)
      run systemctl restart redis-server || run systemctl restart redis ;;
    *) echo "Redis at $REDIS_URL does not answer and is not on this host: not restarted" ;;
  esac
fi
case "$DATABASE_URL" in
  postgres*)
    if ! pg_isready -d "$DATABASE_URL" >/dev/null 2>&1; then
      case "$DATABASE_URL" in
        *@localhost*|*@127.0.0.1*|*@/*|*@\[::1\]*) run systemctl restart postgresql ;;
        *) echo "Postgres does not answer and is not on this host: not restarted" ;;
      esac
    fi ;;
esac

# 4. Start with safe defaults. Environment= in a drop-in would lose against the unit's
# EnvironmentFile=, so the defaults are an EnvironmentFile of their own, listed after it (the
# later file wins). Both live under /run: a reboot drops them too.
if [ "$DRY" = 1 ]; then
  echo "+ write $SAFE_ENV and $DROPIN (ARAGORA_MAX_CONCURRENT_DEBATES=3, ARAGORA_RATE_LIMIT_DISABLED=1)"
else
  mkdir -p "$DROPIN_DIR" "$(dirname "$SAFE_ENV")"
  printf 'ARAGORA_MAX_CONCURRENT_DEBATES=3\nARAGORA_RATE_LIMIT_DISABLED=1\n' > "$SAFE_ENV"
  printf '[Service]\nEnvironmentFile=%s\n' "$SAFE_ENV" > "$DROPIN"
fi
run systemctl daemon-reload
run systemctl start "$UNIT"

# 5. Verify: the exit status says whether it worked.
verify
status=$?
echo "Safe defaults are active (max 3 concurrent debates, rate limiting off)."
echo "When the service is stable: $0 --restore"
exit $status
