#!/usr/bin/env bash
# Peak memory and time of `backstop backup` on a tree of many tiny files: a first backup into a
# fresh repository, then a second one with nothing changed (the incremental path: the parent's
# file list, the unchanged-file shortcut). Several builds alternate, round after round, so that
# each sees the same page cache and the same hour of the machine.
#
# Usage: bench/many_files.sh FILES ROUNDS BIN...
#   bench/many_files.sh 200000 3 /tmp/backstop-old target/release/backstop
# The tree (directories of 1,000 files of a few bytes) is made once under
# ${WORK:-/var/tmp/backstop-many-files}/tree-FILES and kept for the next run; repositories are
# made and removed beside it. Prints one line per backup: build, which, seconds, peak RSS (KB).
set -euo pipefail

files=${1:?FILES}
rounds=${2:?ROUNDS}
shift 2
[ $# -ge 1 ] || { echo "give at least one backstop binary" >&2; exit 2; }
work=${WORK:-/var/tmp/backstop-many-files}
tree=$work/tree-$files
export BACKSTOP_PASSWORD=bench-password

if [ ! -d "$tree" ]; then
    mkdir -p "$tree.partial"
    python3 - "$tree.partial" "$files" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
for n in range(files):
    d = os.path.join(root, f"d{n // 1000:05}")
    if n % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{n % 1000:04}"), "w") as f:
        f.write(f"{n}\n")
PY
    mv "$tree.partial" "$tree"
fi

for round in $(seq "$rounds"); do
    for bin in "$@"; do
        repo=$work/repo
        rm -rf "$repo"
        "$bin" --repo "$repo" init > /dev/null
        for which in first second; do
            /usr/bin/time -f "$bin $which %e s %M KB" \
                "$bin" --repo "$repo" backup "$tree" 2>&1 > /dev/null | tail -1
        done
    done
done
rm -rf "$work/repo"
