#!/usr/bin/env bash
# Installs what the Berkeley DB source's tests need: the db5.3 utilities (db5.3_recover,
# db5.3_archive, db5.3_verify, db5.3_stat, db5.3_hotbackup), libdb's headers, and the
# `berkeleydb` Python binding built against them (the test writer process).
# Idempotent; runs as root; `apt-get update` is done by the caller.
set -euo pipefail

need_apt=()
command -v db5.3_recover >/dev/null 2>&1 || need_apt+=(db5.3-util)
[ -e /usr/include/db.h ] || need_apt+=(libdb-dev)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
if ! command -v python3 >/dev/null 2>&1; then
    need_apt+=(python3 python3-dev python3-pip)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${need_apt[@]}"
fi

if python3 -c 'import berkeleydb' >/dev/null 2>&1; then
    exit 0
fi
# A system python needs its headers to build the extension.
if ! python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3-dev
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3-pip
fi
export BERKELEYDB_DIR=/usr
# berkeleydb 18.1 builds against Berkeley DB 4.8 to 18.1; pinned so a later release cannot drop 5.3.
# Plain pip first; Debian's system python refuses it (PEP 668), then the override is needed.
python3 -m pip install --quiet "berkeleydb>=18.1,<18.2" \
    || python3 -m pip install --quiet --break-system-packages "berkeleydb>=18.1,<18.2"
python3 -c 'import berkeleydb; print("berkeleydb", berkeleydb.__version__, "on Berkeley DB", berkeleydb.db.version())'
