#!/usr/bin/env bash
# Compares Backstop's PostgreSQL base backup with `pg_basebackup` on the same PostgreSQL 15
# cluster (pgbench data), for a full backup, a second backup after some pgbench load, and a
# restore (Backstop's restore against copying pg_basebackup's plain output with `cp -a`).
#
# For each step it reports:
#   seconds   wall time
#   bytes     what the step wrote: Backstop, the growth of its repository (deduplicated,
#             compressed); pg_basebackup, the size of its output (plain and tar+gzip). PostgreSQL 15
#             has no incremental pg_basebackup, so its "second" backup is another full one.
#
# Usage: bench/postgres_compare.sh            (default: pgbench scale 20, about 300 MB)
#   SCALE=100 bench/postgres_compare.sh        larger cluster
#   LOAD_TX=5000                               pgbench transactions per client between backups
#   BACKSTOP_BIN=target/release/backstop ...   a release build (default: target/debug, built if
#                                              missing; dependencies are optimised even there)
# Needs the PostgreSQL 15 server and tools: scripts/install/postgres.sh. When run as root, the
# server runs as the `backstop-test` user that script creates.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BACKSTOP_BIN:-$ROOT/target/debug/backstop}
SCALE=${SCALE:-20}
LOAD_TX=${LOAD_TX:-2000}
PG_BIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/backstop-pg-bench.XXXXXX)
chmod 711 "$WORK"

if [[ ! -x $BIN ]]; then
    (cd "$ROOT" && cargo build -p backstop-cli)
fi

as_server() {
    if [[ $(id -u) == 0 ]]; then runuser -u backstop-test -- "$@"; else "$@"; fi
}

CLUSTER=$WORK/cluster
mkdir -p "$CLUSTER/sock"
chmod 700 "$CLUSTER"
if [[ $(id -u) == 0 ]]; then chown -R backstop-test: "$CLUSTER"; fi
cleanup() {
    as_server "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$CLUSTER" && as_server "$PG_BIN/initdb" -D "$CLUSTER/data" -U postgres --auth=trust \
    --no-locale -E UTF8 --data-checksums >/dev/null)
cat >>"$CLUSTER/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$CLUSTER/sock'
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
max_wal_size = 1GB
# Both tools ask for a spread checkpoint by default; make it finish at once so the comparison
# measures copying, not checkpoint pacing.
checkpoint_completion_target = 0
EOF
(cd "$CLUSTER" && as_server "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -l "$CLUSTER/log" -w start \
    >/dev/null)

PGARGS=(-h "$CLUSTER/sock" -p 5432 -U postgres)
CONNINFO="host=$CLUSTER/sock port=5432 user=postgres dbname=postgres"
echo "pgbench -i -s $SCALE ..."
"$PG_BIN/pgbench" -i -q -s "$SCALE" "${PGARGS[@]}" postgres >/dev/null 2>&1
"$PG_BIN/psql" -X -q "${PGARGS[@]}" -c CHECKPOINT postgres
DATA_BYTES=$(du -sb "$CLUSTER/data" | cut -f1)

now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { print a - b }'; }
bytes() { du -sb "$1" | cut -f1; }
RESULTS=()
record() { RESULTS+=("$(printf '%-34s %8.2f %14s' "$1" "$2" "$3")"); }

REPO=$WORK/repo
"$BIN" --repo "$REPO" init --no-encryption >/dev/null

run_pg_basebackup() { # label
    local out=$WORK/pgbb-$1 t
    t=$(now)
    "$PG_BIN/pg_basebackup" "${PGARGS[@]}" -D "$out" -Fp -X stream -c fast
    record "pg_basebackup $1 (plain)" "$(elapsed "$t")" "$(bytes "$out")"
    t=$(now)
    "$PG_BIN/pg_basebackup" "${PGARGS[@]}" -D "$out.tgz" -Ft -z -X fetch -c fast
    record "pg_basebackup $1 (tar+gzip)" "$(elapsed "$t")" "$(bytes "$out.tgz")"
}

run_backstop() { # label
    local before t
    before=$(bytes "$REPO")
    t=$(now)
    "$BIN" --repo "$REPO" -q backup --source postgres "$CONNINFO" >/dev/null
    record "backstop $1" "$(elapsed "$t")" "$(($(bytes "$REPO") - before))"
}

echo "full backups ..."
run_pg_basebackup full
run_backstop full
echo "pgbench -t $LOAD_TX -c 2 ..."
"$PG_BIN/pgbench" -n -c 2 -t "$LOAD_TX" "${PGARGS[@]}" postgres >/dev/null 2>&1
echo "second backups ..."
run_pg_basebackup second
run_backstop second

echo "restores ..."
t=$(now)
cp -a "$WORK/pgbb-second" "$WORK/restore-cp"
record "restore: cp -a of pg_basebackup" "$(elapsed "$t")" "$(bytes "$WORK/restore-cp")"
t=$(now)
"$BIN" --repo "$REPO" -q restore latest "$WORK/restore-backstop" >/dev/null
record "restore: backstop" "$(elapsed "$t")" "$(bytes "$WORK/restore-backstop")"

echo
echo "PostgreSQL 15, pgbench scale $SCALE, data directory $DATA_BYTES bytes, $(nproc) cores"
printf '%-34s %8s %14s\n' step seconds bytes
printf '%s\n' "${RESULTS[@]}"
