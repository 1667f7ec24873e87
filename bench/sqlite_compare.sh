#!/usr/bin/env bash
# Compares Backstop's SQLite hot backup with `sqlite3 .backup` and `VACUUM INTO` on the same
# database while a writer process (crates/backstop/tests/support/sqlite_writer.py) commits
# transfers as fast as it can, in WAL mode and in rollback-journal (`delete`) mode.
#
# For each method it reports:
#   seconds   wall time of the backup
#   written   bytes the method wrote (Backstop: bytes added to a fresh repository, compressed;
#             the others: size of the copy)
#   blocked   the writer's longest transaction during the backup, BEGIN to COMMIT with busy
#             waits: how long the backup kept writers from committing (compare with `baseline`,
#             the writer alone)
#   txns      transfers the writer committed while it ran (a 1 s warm-up, then the backup)
#   note      Backstop: the method it chose (sqlite.method) and how long it held its lock
#
# Usage: bench/sqlite_compare.sh            (defaults: 200000 accounts of 400 bytes, ~100 MB)
#   ACCOUNTS=50000 PAD=200 bench/sqlite_compare.sh      smaller database
#   BACKSTOP_BIN=target/release/backstop bench/...      a release build (default: target/debug,
#                                                       built if missing; dependencies are
#                                                       optimised even there)
#   TIMEOUT=120                                         seconds before a method is given up
#   REPO_PARENT=/dev/shm                                where Backstop's repository goes
#                                                       (default: the work directory, same disk
#                                                       as the database)
# Needs python3 (with sqlite3) and the sqlite3 shell: scripts/install/sqlite.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BACKSTOP_BIN:-$ROOT/target/debug/backstop}
ACCOUNTS=${ACCOUNTS:-200000}
PAD=${PAD:-400}
TIMEOUT=${TIMEOUT:-120}
WRITER=$ROOT/crates/backstop/tests/support/sqlite_writer.py
WORK=$(mktemp -d)
REPO=$(mktemp -d -p "${REPO_PARENT:-$WORK}")
trap 'rm -rf "$WORK" "$REPO"' EXIT

if [[ ! -x $BIN ]]; then
    (cd "$ROOT" && cargo build -p backstop-cli)
fi

# The bank schema of backstop_source::sqlite::bank, filled once and copied per run.
python3 - "$WORK/template.db" "$ACCOUNTS" "$PAD" <<'EOF'
import sqlite3, sys
path, accounts, pad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(path)
c.executescript("""
CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB NOT NULL);
CREATE TABLE transfers(seq INTEGER PRIMARY KEY, from_id INTEGER NOT NULL,
                       to_id INTEGER NOT NULL, amount INTEGER NOT NULL);
""")
c.executemany("INSERT INTO accounts VALUES (?, 1000, randomblob(?))",
              ((i, pad) for i in range(1, accounts + 1)))
c.commit()
c.close()
EOF

fresh_db() { # mode -> $WORK/bank.db in that journal mode
    rm -f "$WORK"/bank.db*
    cp "$WORK/template.db" "$WORK/bank.db"
    python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=$1')" \
        "$WORK/bank.db"
}

start_writer() {
    coproc WRITER_PROC { exec python3 "$WRITER" "$WORK/bank.db"; }
    local ready
    read -r ready <&"${WRITER_PROC[0]}"
    # Let the writer reach its steady rate before measuring.
    sleep 1
}

stop_writer() { # sets STATS to the writer's JSON statistics line
    # Runs in this shell, not in $(...): a subshell closing the writer's stdin would leave this
    # shell's copy open and the writer would never see end of file.
    local out=${WRITER_PROC[0]} in=${WRITER_PROC[1]} pid=$WRITER_PROC_PID
    exec {in}>&-
    read -r STATS <&"$out"
    wait "$pid" || true
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "$1"; }

now() { date +%s.%N; }

row() { printf '%-7s %-16s %8s %12s %10s %7s  %s\n' "$@"; }

row mode method seconds written blocked_ms txns note
for mode in wal delete; do
    fresh_db "$mode"
    size=$(stat -c %s "$WORK/bank.db")

    start_writer
    sleep 3
    stop_writer
    stats=$STATS
    row "$mode" baseline 3 - "$(field "$stats" '["max_txn_ms"]' | cut -d. -f1)" \
        "$(field "$stats" '["transactions"]')" "database ${size} bytes, writer alone"

    for method in backstop sqlite3-.backup vacuum-into; do
        fresh_db "$mode"
        rm -rf "$REPO/repo" "$WORK/copy.db"
        [[ $method == backstop ]] && "$BIN" --repo "$REPO/repo" init --no-encryption >/dev/null
        start_writer
        note=""
        status=0
        start=$(now)
        case $method in
        backstop)
            json=$(timeout "$TIMEOUT" "$BIN" --repo "$REPO/repo" --json backup --source sqlite \
                "$WORK/bank.db") || status=$?
            ;;
        sqlite3-.backup)
            timeout "$TIMEOUT" sqlite3 -cmd ".timeout 60000" "$WORK/bank.db" ".backup '$WORK/copy.db'" || status=$?
            ;;
        vacuum-into)
            timeout "$TIMEOUT" sqlite3 -cmd ".timeout 60000" "$WORK/bank.db" "VACUUM INTO '$WORK/copy.db'" || status=$?
            ;;
        esac
        end=$(now)
        stop_writer
        stats=$STATS
        seconds=$(python3 -c "print(f'{$end - $start:.2f}')")
        if ((status != 0)); then
            written="-"
            note="failed or timed out (exit $status)"
        elif [[ $method == backstop ]]; then
            written=$(field "$json" '["result"]["bytes_added"]')
            note="method $(field "$json" '["result"]["source_meta"]["sqlite.method"]'), lock held $(field "$json" '["result"]["source_meta"]["sqlite.hold_ms"]') ms"
        else
            written=$(stat -c %s "$WORK/copy.db")
        fi
        row "$mode" "$method" "$seconds" "$written" \
            "$(field "$stats" '["max_txn_ms"]' | cut -d. -f1)" \
            "$(field "$stats" '["transactions"]')" "$note"
    done
done
