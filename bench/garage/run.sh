#!/usr/bin/env bash
# The long object-storage test on Garage, a real distributed S3 store: a 3-node cluster on
# loopback with replication factor 3, then backups and byte-for-byte restores with all nodes up,
# with one node stopped, with a node killed and restarted in the middle of a backup, and two
# backups beside a gc. See bench/garage/README.md. Not part of CI (Garage takes ~12 minutes to
# build on 2 cores).
#
#   bench/garage/run.sh                # everything, in a temporary directory
#   KEEP=1 bench/garage/run.sh         # keep the directory (logs, configs) afterwards
#   DATA_MB=400 bench/garage/run.sh    # size of the large backups (default 200)
#   BACKSTOP_BIN=path/to/backstop bench/garage/run.sh   # use this binary, build nothing
#   GARAGE=path/to/garage bench/garage/run.sh           # default: `garage` on PATH
#   ROUNDS=10 bench/garage/run.sh      # rounds of two backups beside a gc (default 5)
#
# Every step runs even when an earlier one failed (as far as it can), and the end prints one
# line per step with its outcome and time; the exit status is 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/../.."

DATA_MB=${DATA_MB:-200}
ROUNDS=${ROUNDS:-5}
GARAGE=${GARAGE:-garage}
WORK=$(mktemp -d /tmp/backstop-garage.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
export NO_COLOR=1 BACKSTOP_PASSWORD=garage-long-test BACKSTOP_TEST_FAST_KDF=1
# The metadata cache is only an accelerator; keep it here rather than in the user's cache.
export BACKSTOP_CACHE_DIR=$WORK/cache

log() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if ! command -v "$GARAGE" >/dev/null 2>&1; then
    fail "garage is not installed: cargo install --locked garage (about 12 minutes on 2 cores)"
fi
command -v jq >/dev/null 2>&1 || fail "jq is needed to read backstop's --json output"
for port in 3910 3911 3913 3920 3921 3923 3930 3931 3933; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port on 127.0.0.1 is in use (another run of this test?)"
    fi
done

if [[ -n ${BACKSTOP_BIN:-} ]]; then
    BACKSTOP=$(realpath "$BACKSTOP_BIN")
else
    log "building backstop with S3 support (target dir ${CARGO_TARGET_DIR:-target})"
    cargo build --release -p backstop-cli --features s3 --quiet || fail "cargo build failed"
    BACKSTOP=$(realpath "${CARGO_TARGET_DIR:-target}")/release/backstop
fi
[[ -x $BACKSTOP ]] || fail "no backstop binary at $BACKSTOP"
log "using $BACKSTOP and $("$GARAGE" --version 2>/dev/null | head -1)"

declare -A PID
BG_PIDS=()
stop_node() { # stop_node N: SIGKILL, as a crash would
    local n=$1
    if [[ -n ${PID[$n]:-} ]] && kill -0 "${PID[$n]}" 2>/dev/null; then
        kill -9 "${PID[$n]}"
        wait "${PID[$n]}" 2>/dev/null
    fi
    PID[$n]=""
}
cleanup() {
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for n in 1 2 3; do stop_node "$n"; done
    if [[ -n ${KEEP:-} ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

RPC_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

write_config() { # write_config N [bootstrap peers as a TOML list]
    local n=$1 peers=${2:-}
    mkdir -p "$WORK/n$n/meta" "$WORK/n$n/data"
    cat >"$WORK/n$n.toml" <<EOF
metadata_dir = "$WORK/n$n/meta"
data_dir = "$WORK/n$n/data"
db_engine = "sqlite"
replication_factor = 3
# Read and write quorums of 2 that overlap: read-after-write and consistent listings, which
# the repository's concurrency argument needs (docs/object-storage.md).
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:39${n}1"
rpc_public_addr = "127.0.0.1:39${n}1"
rpc_secret = "$RPC_SECRET"
bootstrap_peers = [${peers}]

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39${n}0"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:39${n}3"
admin_token = "$ADMIN_TOKEN"
EOF
}

start_node() { # start_node N
    local n=$1
    "$GARAGE" -c "$WORK/n$n.toml" server >>"$WORK/n$n.log" 2>&1 &
    PID[$n]=$!
}

g() { "$GARAGE" -c "$WORK/n1.toml" "$@"; }

# Healthy: every node's `garage status` lists all three under HEALTHY NODES (with their RPC
# addresses) and has no FAILED NODES section. A surviving node retries a lost peer only every
# 30 s (garage_net's CONN_RETRY_INTERVAL), so a rejoin can take that long; allow 120 s.
cluster_healthy() {
    local n status
    for n in 1 2 3; do
        status=$("$GARAGE" -c "$WORK/n$n.toml" status 2>/dev/null) || return 1
        [[ $(grep -cE '127\.0\.0\.1:39[123]1' <<<"$status") -ge 3 ]] || return 1
        ! grep -q 'FAILED NODES' <<<"$status" || return 1
    done
}
wait_healthy() {
    local start deadline
    start=$(now)
    deadline=$((SECONDS + 120))
    until cluster_healthy; do
        if ((SECONDS > deadline)); then
            for n in 1 2 3; do
                echo "node $n's view:" >&2
                "$GARAGE" -c "$WORK/n$n.toml" status >&2 || true
            done
            return 1
        fi
        sleep 0.5
    done
    note "cluster healthy after $(since "$start") s"
}

# bs LABEL ARGS...: run backstop, keep its stdout and stderr in $LOGS/LABEL.{out,err}; on
# failure show the command, its exit code and the end of its stderr.
bs() {
    local label=$1 start code=0
    shift
    start=$(now)
    "$BACKSTOP" "$@" >"$LOGS/$label.out" 2>"$LOGS/$label.err" || code=$?
    if ((code != 0)); then
        note "backstop $* -> exit $code after $(since "$start") s; stderr:"
        tail -n 20 "$LOGS/$label.err" | sed 's/^/     | /' >&2
        return "$code"
    fi
    note "backstop $*: ok in $(since "$start") s"
}

backup_id_of() { # backup_id_of FILE: the backup id in a `backstop --json backup` output
    jq -er '.result.id // .result.backup.id // empty' "$1" 2>/dev/null
}

make_data() { # make_data DIR SEED: DATA_MB of incompressible data plus 2,000 small files
    local dir=$1 seed=$2
    rm -rf "$dir"
    mkdir -p "$dir/small"
    head -c $((DATA_MB * 1024 * 1024)) </dev/urandom >"$dir/big.bin"
    for i in $(seq 2000); do echo "$seed $i" >"$dir/small/$i.txt"; done
}

restore_and_compare() { # restore_and_compare ID DIR
    local id=$1 dir=$2 target="$WORK/restore-$1"
    rm -rf "$target"
    local label
    label="restore-$id-$(date +%s%N)"
    bs "$label" --json restore "$id" "$target" || return 1
    note "  requests: $(jq -c '.requests // empty' "$LOGS/$label.out")"
    if ! diff -r "$dir" "$target" >"$LOGS/diff-$id" 2>&1; then
        note "backup $id does not restore to $dir byte for byte:"
        head -n 10 "$LOGS/diff-$id" | sed 's/^/     | /' >&2
        return 1
    fi
    rm -rf "$target"
    note "backup $id restores byte for byte"
}

RESULTS=()
FAILED=0
run_step() { # run_step NAME FUNCTION
    local name=$1 fn=$2 start status
    log "$name"
    start=$(now)
    if "$fn"; then status=passed; else status=FAILED; FAILED=1; fi
    RESULTS+=("$(printf '%-7s %7s s  %s' "$status" "$(since "$start")" "$name")")
    log "$status: $name"
}

# ---------------------------------------------------------------------------------------------
setup_cluster() {
    local n
    for n in 1 2 3; do write_config "$n"; start_node "$n"; done
    declare -gA NODE_ID
    for n in 1 2 3; do
        NODE_ID[$n]=""
        for _ in $(seq 300); do
            NODE_ID[$n]=$("$GARAGE" -c "$WORK/n$n.toml" node id -q 2>/dev/null) && break
            sleep 0.1
        done
        [[ -n ${NODE_ID[$n]} ]] || { note "node $n has no id: $(tail -5 "$WORK/n$n.log")"; return 1; }
    done
    # `node id` reads the key file, which exists before the node listens: retry the connect
    # until the peer's RPC port answers (a run failed here once with "Connection refused").
    for n in 2 3; do
        local connected=false
        for _ in $(seq 100); do
            if g node connect "${NODE_ID[$n]}" >/dev/null 2>&1; then connected=true; break; fi
            sleep 0.1
        done
        [[ $connected == true ]] || { g node connect "${NODE_ID[$n]}"; return 1; }
    done
    # Restarted nodes do not find each other again without bootstrap peers in their config;
    # the running nodes keep the configs they started with, the restarts read these.
    local peers="\"${NODE_ID[1]}\", \"${NODE_ID[2]}\", \"${NODE_ID[3]}\""
    for n in 1 2 3; do write_config "$n" "$peers"; done

    for n in 1 2 3; do
        g layout assign -z dc1 -c 1G "${NODE_ID[$n]%%@*}" >/dev/null || return 1
    done
    g layout apply --version 1 >"$LOGS/layout-apply" || return 1
    wait_healthy || return 1

    # `garage key create` prints "Key ID: GK…" and "Secret key: <64 hex>".
    g key create backstop >"$WORK/key.txt" || return 1
    AWS_ACCESS_KEY_ID=$(sed -n 's/^Key ID: *\(GK[0-9a-f]*\).*/\1/p' "$WORK/key.txt" | head -1)
    AWS_SECRET_ACCESS_KEY=$(sed -n 's/^Secret key: *\([0-9a-f]\{64\}\).*/\1/p' "$WORK/key.txt" | head -1)
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    if [[ -z $AWS_ACCESS_KEY_ID || -z $AWS_SECRET_ACCESS_KEY ]]; then
        note "cannot read the key from: $(cat "$WORK/key.txt")"
        return 1
    fi
    g bucket create backstop >/dev/null || return 1
    g bucket allow --read --write --owner backstop --key backstop >/dev/null || return 1
    note "3 nodes, layout version 1, key $AWS_ACCESS_KEY_ID, bucket backstop"
}

# Node 1's S3 endpoint; the others would do as well (every node serves the whole cluster).
export BACKSTOP_REPO="s3://backstop/repo?endpoint=http://127.0.0.1:3910&region=garage&path_style=true"
ID1="" ID2="" ID3=""

step_all_up() {
    bs init init || return 1
    make_data "$WORK/data1" 1
    bs backup1 --json backup "$WORK/data1" || return 1
    ID1=$(backup_id_of "$LOGS/backup1.out") || { note "no id in: $(head -c 400 "$LOGS/backup1.out")"; return 1; }
    note "backup $ID1: $(jq -c '.requests // empty' "$LOGS/backup1.out")"
    bs verify1 verify --full || return 1
    restore_and_compare "$ID1" "$WORK/data1"
}

step_node3_down() {
    stop_node 3
    local ok=0
    make_data "$WORK/data2" 2
    if bs backup2 --json backup "$WORK/data2" && ID2=$(backup_id_of "$LOGS/backup2.out"); then
        note "backup $ID2: $(jq -c '.requests // empty' "$LOGS/backup2.out")"
    else
        ok=1
    fi
    bs verify2 verify --full || ok=1
    [[ -z $ID2 ]] || restore_and_compare "$ID2" "$WORK/data2" || ok=1
    [[ -z $ID1 ]] || restore_and_compare "$ID1" "$WORK/data1" || ok=1
    return $ok
}

step_node3_back() {
    start_node 3
    wait_healthy
}

step_node2_restart() {
    local ok=0 base grew=0 killed_mid=0 code=0 start
    base=$(du -sm "$WORK/n2/data" | cut -f1)
    make_data "$WORK/data3" 3
    start=$(now)
    "$BACKSTOP" --json backup "$WORK/data3" >"$LOGS/backup3.out" 2>"$LOGS/backup3.err" &
    local backup_pid=$!
    BG_PIDS+=("$backup_pid")
    # Kill node 2 once a third of the new data has reached it, while the backup still runs.
    for _ in $(seq 1200); do
        kill -0 "$backup_pid" 2>/dev/null || break
        grew=$(($(du -sm "$WORK/n2/data" | cut -f1) - base))
        ((grew > DATA_MB / 3)) && break
        sleep 0.1
    done
    if kill -0 "$backup_pid" 2>/dev/null; then killed_mid=1; fi
    stop_node 2
    note "node 2 killed $(since "$start") s into the backup, after $grew MiB reached it" \
        "(backup still running: $([[ $killed_mid == 1 ]] && echo yes || echo NO))"
    sleep 5 # the node's downtime, not a wait for anything
    start_node 2
    note "node 2 started again"
    wait "$backup_pid" || code=$?
    if ((code == 0)); then
        ID3=$(backup_id_of "$LOGS/backup3.out")
        note "the backup rode out the restart: backup $ID3 in $(since "$start") s"
    else
        note "the backup failed during the restart (allowed) with exit $code after $(since "$start") s; stderr:"
        tail -n 20 "$LOGS/backup3.err" | sed 's/^/     | /' >&2
    fi
    ((killed_mid == 1)) || { note "the backup ended before node 2 was killed: nothing tested"; ok=1; }
    wait_healthy || ok=1
    [[ -z $ID3 ]] || restore_and_compare "$ID3" "$WORK/data3" || ok=1
    bs verify3 verify --full || ok=1
    [[ -z $ID1 ]] || restore_and_compare "$ID1" "$WORK/data1" || ok=1
    [[ -z $ID2 ]] || restore_and_compare "$ID2" "$WORK/data2" || ok=1
    return $ok
}

# attempt LABEL ARGS...: run backstop until it is not refused by a lock (exit 4), at most 60
# times, as a user or a cron job would re-run it; the exit code of the last try. Counts the
# refusals in $LOGS/LABEL.locked.
attempt() {
    local label=$1 code try
    shift
    : >"$LOGS/$label.locked"
    for try in $(seq 60); do
        code=0
        "$BACKSTOP" "$@" >"$LOGS/$label.out" 2>"$LOGS/$label.err" || code=$?
        ((code == 4)) || return "$code"
        head -n 1 "$LOGS/$label.err" >>"$LOGS/$label.locked"
        # A random pause so the three processes' next tries land at different moments.
        sleep "0.$((RANDOM % 9 + 1))"
    done
    return 4
}

# Expected contents of every backup the concurrent rounds made: "ID DIR".
CONCURRENT=()
step_concurrent() {
    local ok=0 round s p code id label
    local -A pids
    for round in $(seq "$ROUNDS"); do
        # Each side gets a file of its own and a file both sides have (so both backups upload
        # the same chunks at the same time), and keeps the earlier rounds' files.
        head -c $((2 << 20)) </dev/urandom >"$WORK/shared-$round.bin"
        for s in a b; do
            mkdir -p "$WORK/c$s"
            head -c $((4 << 20)) </dev/urandom >"$WORK/c$s/round-$round.bin"
            cp "$WORK/shared-$round.bin" "$WORK/c$s/shared-$round.bin"
            rm -rf "$WORK/expect-$s-$round"
            cp -a "$WORK/c$s" "$WORK/expect-$s-$round"
        done
        # Separate caches: as if on three hosts.
        BACKSTOP_CACHE_DIR=$WORK/cache-a attempt "ca-$round" --json backup "$WORK/ca" &
        pids[a]=$!
        BACKSTOP_CACHE_DIR=$WORK/cache-b attempt "cb-$round" --json backup "$WORK/cb" &
        pids[b]=$!
        BACKSTOP_CACHE_DIR=$WORK/cache-gc attempt "cgc-$round" --json gc &
        pids[gc]=$!
        BG_PIDS+=("${pids[a]}" "${pids[b]}" "${pids[gc]}")
        local summary="round $round:"
        for p in a b gc; do
            code=0
            wait "${pids[$p]}" || code=$?
            label="c$p-$round"
            summary+=" $p exit $code after $(wc -l <"$LOGS/$label.locked") lock refusals"
            if ((code != 0)); then
                ok=1
                note "round $round: $p exited with $code; stderr:"
                tail -n 20 "$LOGS/$label.err" | sed 's/^/     | /' >&2
            elif [[ $p != gc ]]; then
                id=$(backup_id_of "$LOGS/$label.out")
                CONCURRENT+=("$id $WORK/expect-$p-$round")
                summary+=" (backup $id)"
            fi
            summary+=";"
        done
        note "$summary"
        # Lock refusals name their holder; keep one of each kind for the record.
        cat "$LOGS"/c*-"$round".locked | sed 's/.*locked by \([a-z ]*\) on.*/\1/' | sort | uniq -c \
            | sed 's/^ */     refused because of: /' >&2
        for s in a b; do
            id=$(backup_id_of "$LOGS/c$s-$round.out") || continue
            restore_and_compare "$id" "$WORK/expect-$s-$round" || ok=1
        done
    done
    return $ok
}

# A backup of every fourth small file of backup 1 (the same blobs, so it uploads no data), then
# backup 1 deleted: the pack holding the frames of small files is then mostly unused, and gc
# rewrites it (the used files' blobs framed anew) and, with no grace period, deletes the old
# packs at once.
ID4=""
step_rewrite() {
    local ok=0 i
    [[ -n $ID1 ]] || { note "no first backup to delete"; return 1; }
    rm -rf "$WORK/data4"
    mkdir -p "$WORK/data4/small"
    for ((i = 4; i <= 2000; i += 4)); do cp -p "$WORK/data1/small/$i.txt" "$WORK/data4/small/"; done
    if bs backup4 --json backup "$WORK/data4" && ID4=$(backup_id_of "$LOGS/backup4.out"); then
        note "backup $ID4 added $(jq '.result.bytes_added' "$LOGS/backup4.out") bytes"
    else
        ok=1
    fi
    bs delete-1 delete "$ID1" || ok=1
    ID1=""
    bs gc-rewrite --json gc --grace 0s || ok=1
    note "gc: $(jq -c '.result | {packs_repacked, bytes_repacked, packs_deleted, bytes_freed}' "$LOGS/gc-rewrite.out" 2>/dev/null)"
    note "gc requests: $(jq -c '.requests' "$LOGS/gc-rewrite.out" 2>/dev/null)"
    if [[ $(jq '.result.packs_repacked' "$LOGS/gc-rewrite.out" 2>/dev/null) == 0 ]]; then
        note "gc rewrote no pack"
        ok=1
    fi
    [[ -z $ID4 ]] || restore_and_compare "$ID4" "$WORK/data4" || ok=1
    return $ok
}

step_final() {
    local ok=0 entry
    bs gc-final gc || ok=1
    bs verify-final verify --full || ok=1
    bs list --json list || ok=1
    note "$(jq '.result | length' "$LOGS/list.out" 2>/dev/null) backups in the repository"
    # After every gc: all backups ever reported as made still restore.
    [[ -z $ID1 ]] || restore_and_compare "$ID1" "$WORK/data1" || ok=1
    [[ -z $ID2 ]] || restore_and_compare "$ID2" "$WORK/data2" || ok=1
    [[ -z $ID3 ]] || restore_and_compare "$ID3" "$WORK/data3" || ok=1
    [[ -z $ID4 ]] || restore_and_compare "$ID4" "$WORK/data4" || ok=1
    for entry in "${CONCURRENT[@]}"; do
        restore_and_compare "${entry%% *}" "${entry#* }" || ok=1
    done
    return $ok
}

TOTAL_START=$(now)
log "starting 3 Garage nodes in $WORK"
setup_start=$(now)
setup_cluster || fail "the cluster did not come up (logs in $WORK/n*.log; KEEP=1 keeps them)"
RESULTS+=("$(printf '%-7s %7s s  %s' passed "$(since "$setup_start")" "cluster setup")")

run_step "1. all nodes up: init, backup of $DATA_MB MiB + 2,000 files, verify --full, restore" step_all_up
run_step "2. node 3 stopped: backup, verify --full, both backups restore" step_node3_down
run_step "3. node 3 started again, rejoins through bootstrap_peers" step_node3_back
run_step "4. node 2 killed in the middle of a backup, restarted 5 s later" step_node2_restart
run_step "5. two backups and a gc at once, $ROUNDS rounds" step_concurrent
run_step "6. backup 1 deleted, gc rewrites the pack whose small files a later backup keeps" step_rewrite
run_step "7. final gc, verify --full, every remaining backup restores" step_final

printf '\nGarage %s, 3 nodes, replication factor 3, DATA_MB=%s, total %s s\n' \
    "$("$GARAGE" --version 2>/dev/null | awk '{print $2}')" "$DATA_MB" "$(since "$TOTAL_START")" >&2
printf '  %s\n' "${RESULTS[@]}" >&2
if ((FAILED)); then
    printf 'FAILED: see the steps above (KEEP=1 keeps logs in %s)\n' "$WORK" >&2
    exit 1
fi
printf 'PASSED: Garage, 3 nodes, replication factor 3\n' >&2
