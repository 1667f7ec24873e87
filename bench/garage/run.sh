#!/usr/bin/env bash
# The long object-storage test on Garage, a real distributed S3 store: a 3-node cluster on
# loopback with replication factor 3, then backups and byte-for-byte restores with all nodes up,
# with one node stopped, with a node killed and restarted in the middle of a backup, and two
# backups beside a gc. See bench/garage/README.md. Not part of CI (Garage takes ~12 minutes to
# build on 2 cores).
#
#   bench/garage/run.sh                # everything, in a temporary directory
#   KEEP=1 bench/garage/run.sh         # keep the directory (logs, configs) afterwards
#   DATA_MB=400 bench/garage/run.sh    # size of the large backup (default 200)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA_MB=${DATA_MB:-200}
WORK=$(mktemp -d /tmp/backstop-garage.XXXXXX)
GARAGE=${GARAGE:-garage}
export NO_COLOR=1 BACKSTOP_PASSWORD=garage-long-test BACKSTOP_TEST_FAST_KDF=1

log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

if ! command -v "$GARAGE" >/dev/null 2>&1; then
    fail "garage is not installed: cargo install --locked garage (about 12 minutes on 2 cores)"
fi
log "building backstop with S3 support"
cargo build --release -p backstop-cli --features s3 --quiet
BACKSTOP=$PWD/target/release/backstop
[[ -n ${CARGO_TARGET_DIR:-} ]] && BACKSTOP=$CARGO_TARGET_DIR/release/backstop

declare -A PID
stop_node() { # stop_node N: SIGKILL, as a crash would
    local n=$1
    if [[ -n ${PID[$n]:-} ]] && kill -0 "${PID[$n]}" 2>/dev/null; then
        kill -9 "${PID[$n]}"
        wait "${PID[$n]}" 2>/dev/null || true
    fi
    PID[$n]=""
}
cleanup() {
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

wait_healthy() { # all three nodes connected, within 60 s
    for _ in $(seq 600); do
        local status
        status=$(g status 2>/dev/null || true)
        if [[ $(grep -cE '127\.0\.0\.1:39[123]1' <<<"$status") -ge 3 ]] \
            && ! grep -qiE 'failed|unavailable|disconnected' <<<"$status"; then
            return 0
        fi
        sleep 0.1
    done
    g status >&2 || true
    fail "the cluster did not become healthy within 60 s"
}

log "starting 3 Garage nodes in $WORK"
for n in 1 2 3; do write_config "$n"; start_node "$n"; done
for _ in $(seq 300); do g node id -q >/dev/null 2>&1 && break; sleep 0.1; done
declare -A NODE_ID
for n in 1 2 3; do
    for _ in $(seq 300); do
        NODE_ID[$n]=$("$GARAGE" -c "$WORK/n$n.toml" node id -q 2>/dev/null || true)
        [[ -n ${NODE_ID[$n]} ]] && break
        sleep 0.1
    done
    [[ -n ${NODE_ID[$n]} ]] || fail "node $n has no id: $(tail -5 "$WORK/n$n.log")"
done
g node connect "${NODE_ID[2]}"
g node connect "${NODE_ID[3]}"
# Restarted nodes do not find each other again without bootstrap peers in their config.
PEERS="\"${NODE_ID[1]}\", \"${NODE_ID[2]}\", \"${NODE_ID[3]}\""
for n in 1 2 3; do write_config "$n" "$PEERS"; done

for n in 1 2 3; do
    g layout assign -z dc1 -c 1G "${NODE_ID[$n]%%@*}" >/dev/null
done
g layout apply --version 1 >/dev/null
wait_healthy

g key create backstop >"$WORK/key.txt"
g key info --show-secret backstop >>"$WORK/key.txt" 2>/dev/null || true
AWS_ACCESS_KEY_ID=$(grep -m1 -oE 'GK[0-9a-f]+' "$WORK/key.txt")
AWS_SECRET_ACCESS_KEY=$(grep -m1 -iE 'secret key' "$WORK/key.txt" | grep -oE '[0-9a-f]{64}')
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
[[ -n $AWS_ACCESS_KEY_ID && -n $AWS_SECRET_ACCESS_KEY ]] || fail "cannot read the key: $(cat "$WORK/key.txt")"
g bucket create backstop >/dev/null
g bucket allow --read --write --owner backstop --key backstop >/dev/null

# Node 1's S3 endpoint; the others would do as well (every node serves the whole cluster).
export BACKSTOP_REPO="s3://backstop/repo?endpoint=http://127.0.0.1:3910&region=garage&path_style=true"
b() { "$BACKSTOP" "$@"; }

make_data() { # make_data DIR SEED: DATA_MB of incompressible data plus 2,000 small files
    local dir=$1 seed=$2
    rm -rf "$dir"; mkdir -p "$dir/small"
    head -c $((DATA_MB * 1024 * 1024)) </dev/urandom >"$dir/big.bin"
    for i in $(seq 2000); do echo "$seed $i" >"$dir/small/$i.txt"; done
}

restore_and_compare() { # restore_and_compare ID DIR
    local id=$1 dir=$2 target="$WORK/restore-$1"
    rm -rf "$target"
    b restore "$id" "$target" >/dev/null
    diff -r "$dir" "$target" >/dev/null || fail "backup $id does not restore to $dir byte for byte"
    rm -rf "$target"
    echo "backup $id restores byte for byte" >&2
}

backup_id() { b --json backup "$1" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p' | head -1; }

log "all nodes up: init, backup, verify --full, restore"
b init >/dev/null
make_data "$WORK/data1" 1
ID1=$(backup_id "$WORK/data1")
b verify --full >/dev/null
restore_and_compare "$ID1" "$WORK/data1"

log "node 3 stopped: backup, verify --full, restore"
stop_node 3
make_data "$WORK/data2" 2
ID2=$(backup_id "$WORK/data2")
b verify --full >/dev/null
restore_and_compare "$ID2" "$WORK/data2"
restore_and_compare "$ID1" "$WORK/data1"

log "node 3 back (found through bootstrap_peers)"
start_node 3
wait_healthy

log "node 2 killed and restarted in the middle of a backup"
make_data "$WORK/data3" 3
"$BACKSTOP" --json backup "$WORK/data3" >"$WORK/backup3.json" 2>"$WORK/backup3.err" &
BACKUP_PID=$!
# Kill once the backup has uploaded something: the bucket's size grows.
for _ in $(seq 600); do
    [[ $(du -sm "$WORK/n2/data" | cut -f1) -gt $((2 * DATA_MB + 20)) ]] && break
    sleep 0.1
done
stop_node 2
sleep 5
start_node 2
if wait "$BACKUP_PID"; then
    ID3=$(sed -n 's/.*"id": *\([0-9]*\).*/\1/p' "$WORK/backup3.json" | head -1)
    echo "the backup rode out the restart: backup $ID3" >&2
    wait_healthy
    restore_and_compare "$ID3" "$WORK/data3"
else
    echo "the backup failed during the restart (allowed); its error:" >&2
    cat "$WORK/backup3.err" >&2
    wait_healthy
fi
b verify --full >/dev/null
restore_and_compare "$ID1" "$WORK/data1"
restore_and_compare "$ID2" "$WORK/data2"

log "two backups and a gc at once, 5 rounds"
for round in 1 2 3 4 5; do
    for s in a b; do mkdir -p "$WORK/c$s"; head -c $((4 << 20)) </dev/urandom >"$WORK/c$s/round-$round.bin"; done
    "$BACKSTOP" --json backup "$WORK/ca" >"$WORK/ca-$round.json" 2>/dev/null & PA=$!
    "$BACKSTOP" --json backup "$WORK/cb" >"$WORK/cb-$round.json" 2>/dev/null & PB=$!
    "$BACKSTOP" gc >/dev/null 2>&1 & PG=$!
    for p in $PA $PB $PG; do
        code=0; wait "$p" || code=$?
        [[ $code -eq 0 || $code -eq 4 ]] || fail "round $round: a process exited with $code"
    done
    for s in a b; do
        id=$(sed -n 's/.*"id": *\([0-9]*\).*/\1/p' "$WORK/c$s-$round.json" | head -1)
        [[ -n $id ]] && restore_and_compare "$id" "$WORK/c$s"
    done
done
b gc >/dev/null
b verify --full >/dev/null
restore_and_compare "$ID1" "$WORK/data1"

log "PASSED: Garage, 3 nodes, replication factor 3"
