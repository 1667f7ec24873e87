#!/usr/bin/env bash
# Test and benchmark dependencies of the SQLite source: python3 with its sqlite3 module (the
# writer process of crates/backstop/tests/sqlite.rs) and the sqlite3 shell (bench/sqlite_compare.sh
# compares against `.backup` and `VACUUM INTO`). Idempotent; run as root after `apt-get update`.
set -euo pipefail

missing=()
python3 -c 'import sqlite3' >/dev/null 2>&1 || missing+=(python3)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)

if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

python3 -c 'import sqlite3' 
sqlite3 -version >/dev/null
