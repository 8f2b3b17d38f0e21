#!/bin/bash
# Concurrent debates against a running release binary, from outside (the way an operator's
# load arrives): N debates of three `demo:1000` agents x 2 rounds, submitted by one curl
# process over 16 keep-alive connections; waits until none is queued or running and until
# every receipt is issued (on SQLite read with the `sqlite3` shell). Prints wall times, the
# server's CPU per debate and the CPU of the Postgres backends per debate; with `callgrind`,
# runs the server under valgrind and dumps the instructions of exactly that window
# (docs/benchmarks.md).
#
# usage: [AGENTS=…] benches/debate_load.sh BIN N [pg|sqlite] [plain|callgrind]
#   BIN: e.g. target/release/aragora. pg: a fresh schema in postgres://postgres@127.0.0.1/test.
set -u
BIN=$1; N=$2; DB=${3:-pg}; MODE=${4:-plain}
D=$(mktemp -d /tmp/aragora-load.XXXX)
export ARAGORA_DATA_DIR=$D/data ARAGORA_LOCK_DIR=$D ARAGORA_API_PORT=18080 ARAGORA_WS_PORT=18766
export ARAGORA_MAX_CONCURRENT_DEBATES=10000 ARAGORA_DEBATE_QUEUE_SIZE=20000 ARAGORA_RATE_LIMIT_DISABLED=1
export ARAGORA_LOG_DIR=$D/logs
if [ "$DB" = pg ]; then
  S=prof_$(date +%s%N)
  psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "create schema $S"
  export ARAGORA_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$S"
fi
if [ "$MODE" = callgrind ]; then
  valgrind --tool=callgrind --callgrind-out-file=$D/cg.out --collect-atstart=yes $BIN serve > $D/out 2>&1 &
else
  $BIN serve > $D/out 2>&1 &
fi
PID=$!
for i in $(seq 1 600); do curl -sf localhost:18080/api/health/live >/dev/null && break; sleep 0.5; done
[ "$MODE" = callgrind ] && callgrind_control -z $PID >/dev/null
pgcpu() { local t=0; for p in $(pgrep -x postgres); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
pg0=$(pgcpu)
commits() { psql -tA -h 127.0.0.1 -U postgres -d test -c "select xact_commit from pg_stat_database where datname = 'test'"; }
[ "$DB" = pg ] && c0=$(commits)
read u0 s0 < <(awk '{print $14, $15}' /proc/$PID/stat)
T0=$(date +%s.%N)
# AGENTS: the seats, as JSON strings (default three demo:1000; e.g. '"demo:1000","demo:1500","demo:2000"'
# for seats that stream at different times).
AGENTS=${AGENTS:-'"demo:1000","demo:1000","demo:1000"'}
body='{"task":"Benchmark debate: should the team adopt a monorepo?","agents":['"$AGENTS"'],"rounds":2,"min_rounds":2}'
python3 -c '
import sys, json
n=int(sys.argv[1]); body=sys.argv[2]
q=json.dumps(body)
with open(sys.argv[3],"w") as f:
    for i in range(n):
        if i: f.write("next\n")
        f.write("url = \"http://localhost:18080/api/debates\"\nheader = \"content-type: application/json\"\ndata = %s\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code} %%{time_total} %%{errormsg}\\n\"\n" % q)
' $N "$body" $D/curl.cfg
curl -s -Z --parallel-max 16 --config $D/curl.cfg > $D/codes
T1=$(date +%s.%N)
while true; do
  q=$(curl -s "localhost:18080/api/debates?status=queued&limit=1" | grep -c '"id"')
  r=$(curl -s "localhost:18080/api/debates?status=running&limit=1" | grep -c '"id"')
  [ "$q$r" = "00" ] && break; sleep 0.3
done
T2=$(date +%s.%N)
# Every accepted debate ends completed here, so each is owed a receipt: wait for them all.
receipts() {
  if [ "$DB" = pg ]; then psql -tA -h 127.0.0.1 -U postgres -d test -c "select count(*) from $S.receipts"
  else sqlite3 -readonly "$D/data/aragora.db" "select count(*) from receipts"; fi
}
for i in $(seq 1 2000); do
  r=$(receipts)
  [ "${r:-0}" -ge "$(grep -c ^202 $D/codes)" ] && break; sleep 0.3
done
echo "receipts: $r"
T3=$(date +%s.%N)
read u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat)
pg1=$(pgcpu)
[ "$DB" = pg ] && c1=$(commits) && echo "postgres commits $((c1-c0)) -> $(echo "scale=1; ($c1-$c0)/$N" | bc) per debate"
echo "peak rss $(awk '/VmHWM/ {print $2, $3}' /proc/$PID/status)"
# The busiest threads by CPU ticks (the SQLite writer is one thread of its own).
echo "threads: $(for t in /proc/$PID/task/*; do awk '{printf "%s=%d\n", $2, $14+$15}' $t/stat; done | sort -t= -k2 -rn | head -6 | tr '\n' ' ')"
echo "postgres cpu $(( pg1-pg0 )) ticks -> $(echo "scale=3; (($pg1-$pg0)*10)/$N" | bc) ms/debate (existing backends only)"
[ "$MODE" = callgrind ] && callgrind_control -d $PID >/dev/null
echo "codes: $(awk '{print $1, $3}' $D/codes | sort | uniq -c | tr '\n' ' ')"
# Each submission's time from the client's side (curl's time_total: connect reuse, request, answer).
echo "submission latency: $(awk '{print $2 * 1000}' $D/codes | sort -n | awk '{a[NR]=$1} END {printf "p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", a[int(NR*0.5)], a[int(NR*0.9)], a[int(NR*0.99)], a[NR]}')"
echo "submit $(echo "$T1-$T0"|bc) s, drained $(echo "$T2-$T0"|bc) s, receipts $(echo "$T3-$T0"|bc) s, cpu $(( (u1-u0)+(s1-s0) )) ticks -> $(echo "scale=3; ((($u1-$u0)+($s1-$s0))*10)/$N" | bc) ms/debate"
curl -s "localhost:18080/api/debates?status=completed&limit=1" | head -c 300; echo
kill -INT $PID; wait $PID
echo "dir $D"
[ "$DB" = pg ] && psql -h 127.0.0.1 -U postgres -d test -c "select relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, pg_size_pretty(pg_total_relation_size(relid)) from pg_stat_user_tables where schemaname = '$S' and n_tup_ins + n_tup_upd > 0"; [ "$DB" = pg ] && [ -z "${KEEP_SCHEMA:-}" ] && psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "drop schema $S cascade" 2>/dev/null; [ "$DB" = pg ] && echo "schema $S"
