#!/usr/bin/env bash
# Installs what the RocksDB source's tests need: Debian's `ldb` (rocksdb-tools, RocksDB 7.8) for
# `checkconsistency` and the `ldb backup` comparison, and the `rocksdict` Python binding (a newer
# RocksDB inside its wheel) for the writer process and for opening restored databases.
# Idempotent; runs as root; `apt-get update` is done by the caller.
set -euo pipefail

if ! command -v ldb >/dev/null 2>&1 && ! command -v rocksdb_ldb >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rocksdb-tools
fi

if ! python3 -c 'import rocksdict' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip
    fi
    # Debian's own python3 refuses plain `pip install` (PEP 668); pyenv's does not.
    python3 -m pip install --quiet 'rocksdict==0.3.29' \
        || python3 -m pip install --quiet --break-system-packages 'rocksdict==0.3.29'
fi

# The `rocksdb-embedded` feature (rust-rocksdb 0.20 with default features off) links Debian's
# librocksdb and runs bindgen, which needs libclang.
if ! dpkg -s librocksdb-dev libclang-dev >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librocksdb-dev libclang-dev
fi
