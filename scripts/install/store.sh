#!/usr/bin/env bash
# Installs what the store crate's tests need: `moto_server`, an S3-protocol server from PyPI
# (moto with its `server` extra) that the S3 conformance test (crates/backstop-store/tests/s3.rs)
# starts on a loopback port. It starts in about a second and keeps objects in memory.
# Idempotent and quick when already installed; runs as root; `apt-get update` is done by the caller.
set -euo pipefail

if command -v moto_server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3 python3-pip
fi
# Plain pip first; Debian's system python refuses it (PEP 668), then the override is needed.
python3 -m pip install --quiet 'moto[server]>=5,<6' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]>=5,<6'
command -v moto_server >/dev/null 2>&1 || {
    echo "moto_server was installed but is not on PATH ($(python3 -m site --user-base)/bin?)" >&2
    exit 1
}
