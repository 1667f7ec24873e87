#!/usr/bin/env bash
# Compares Backstop's Berkeley DB hot backup with Berkeley DB's own `db_hotbackup` on the same
# environment under the same write load: time and bytes of a first (full) backup, then of an
# update after more writes (`db_hotbackup -u` copies new logs; Backstop stores an incremental
# backup). Run from the repository root; needs scripts/install/bdb.sh.
#
#   bench/bdb_compare.sh [SECONDS_OF_WRITES_BETWEEN_BACKUPS]   (default 10)
#
# BACKSTOP_BIN overrides the binary (default: a debug build of backstop-cli).
set -euo pipefail

between="${1:-10}"
root="$(cd "$(dirname "$0")/.." && pwd)"
writer="$root/crates/backstop/tests/support/bdb_writer.py"
hotbackup="$(command -v db5.3_hotbackup || command -v db_hotbackup)"
if [ -z "${BACKSTOP_BIN:-}" ]; then
    cargo build -q -p backstop-cli --manifest-path "$root/Cargo.toml"
    BACKSTOP_BIN="$root/target/debug/backstop"
fi

work="$(mktemp -d)"
writer_pid=""
cleanup() {
    [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null && wait "$writer_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

bytes() { du -sb "$1" | cut -f1; }
# Runs a command, prints its wall time in milliseconds.
timed() {
    local start end
    start=$(date +%s%N)
    "$@" >/dev/null
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}

python3 "$writer" run --home "$work/env" --seq-file "$work/committed" --data-dir data \
    --accounts 100000 --history-bytes 1000 --lg-max 1048576 --max-seconds 600 &
writer_pid=$!
deadline=$((SECONDS + 60))
until [ -s "$work/committed" ] && [ "$(cat "$work/committed")" -gt 100 ]; do
    [ $SECONDS -lt $deadline ] || { echo "the writer did not start" >&2; exit 1; }
    sleep 0.1
done
sleep "$between"

repo="$work/repo"
"$BACKSTOP_BIN" --repo "$repo" init --no-encryption >/dev/null

env_size=$(bytes "$work/env")
hb_full_ms=$(timed "$hotbackup" -D -h "$work/env" -b "$work/hotbackup")
hb_full_bytes=$(bytes "$work/hotbackup")
bs_full_ms=$(timed "$BACKSTOP_BIN" --repo "$repo" backup --source bdb "$work/env")
bs_full_bytes=$(bytes "$repo")

sleep "$between"

# Backstop first: `db_hotbackup -u` removes the log files it no longer needs from the LIVE
# environment (measured with db5.3), which Backstop would then report as a log gap.
bs_before=$(bytes "$repo")
bs_upd_ms=$(timed "$BACKSTOP_BIN" --repo "$repo" backup --source bdb "$work/env")
bs_upd_bytes=$(( $(bytes "$repo") - bs_before ))
hb_before=$(bytes "$work/hotbackup")
hb_upd_ms=$(timed "$hotbackup" -u -D -h "$work/env" -b "$work/hotbackup")
hb_upd_bytes=$(( $(bytes "$work/hotbackup") - hb_before ))

printf 'environment: %s bytes after %ss of writes\n' "$env_size" "$between"
printf '%-28s %10s %14s\n' "" "time (ms)" "bytes"
printf '%-28s %10s %14s\n' "db_hotbackup (full)" "$hb_full_ms" "$hb_full_bytes"
printf '%-28s %10s %14s\n' "backstop backup (first)" "$bs_full_ms" "$bs_full_bytes"
printf '%-28s %10s %14s\n' "db_hotbackup -u (update)" "$hb_upd_ms" "$hb_upd_bytes"
printf '%-28s %10s %14s\n' "backstop backup (incr.)" "$bs_upd_ms" "$bs_upd_bytes"
echo "db_hotbackup's bytes are plain files in one snapshot directory (-u adds new logs and"
echo "removes unneeded logs from the live environment); backstop's are the repository's growth:"
echo "compressed, deduplicated, every backup kept and restorable on its own"
