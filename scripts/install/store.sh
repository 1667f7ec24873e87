#!/usr/bin/env bash
# Installs the S3-protocol servers the object-storage tests start on loopback ports (and, at the
# end, the other services' servers: Azurite, rclone, OpenSSH, gcp-storage-emulator):
# - `moto_server` (PyPI: moto with its `server` extra): starts in about a second, keeps objects
#   in memory, accepts any credentials (crates/backstop-store/tests/s3.rs);
# - `s3s-fs` (crates.io, 0.14.1, its `binary` feature; about 3 minutes to build on 2 cores):
#   keeps objects as files, checks signatures and survives a restart, which the network-fault
#   tests need (crates/backstop-store/tests/s3.rs, crates/backstop-cli/tests/s3.rs).
# Idempotent and quick when already installed; runs as root; `apt-get update` is done by the caller.
set -euo pipefail

if ! command -v moto_server >/dev/null 2>&1; then
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
fi

if ! command -v s3s-fs >/dev/null 2>&1; then
    # 0.14.1 builds with the project's toolchain; later versions need a newer rustc.
    cargo install --locked --quiet s3s-fs --version 0.14.1 --features binary
    command -v s3s-fs >/dev/null 2>&1 || {
        echo "s3s-fs was installed but is not on PATH (add \$CARGO_HOME/bin, usually ~/.cargo/bin)" >&2
        exit 1
    }
fi

# The other object services with a test server (crates/backstop-store/tests/services.rs,
# crates/backstop-cli/tests/services.rs):
# - Azurite (npm `azurite`, Microsoft's Azure Storage emulator; `azurite-blob` serves blobs);
if ! command -v azurite-blob >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends nodejs npm
    fi
    npm install --global --silent 'azurite@3'
    command -v azurite-blob >/dev/null 2>&1 || {
        echo "azurite was installed but azurite-blob is not on PATH ($(npm prefix -g)/bin?)" >&2
        exit 1
    }
fi

# - rclone (Debian), whose `rclone serve webdav` is the WebDAV server.
if ! command -v rclone >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends rclone
fi

# - gcp-storage-emulator (PyPI), a Google Cloud Storage emulator serving Google's JSON API (what
#   the GCS store speaks); pinned, since the tests read its request log.
if ! command -v gcp-storage-emulator >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3 python3-pip
    fi
    # Plain pip first; Debian's system python refuses it (PEP 668), then the override is needed.
    python3 -m pip install --quiet 'gcp-storage-emulator==2026.7.19' \
        || python3 -m pip install --quiet --break-system-packages 'gcp-storage-emulator==2026.7.19'
    command -v gcp-storage-emulator >/dev/null 2>&1 || {
        echo "gcp-storage-emulator was installed but is not on PATH ($(python3 -m site --user-base)/bin?)" >&2
        exit 1
    }
fi

# - OpenSSH (Debian): `sshd` is the SFTP server the tests start on a loopback port (as the current
#   user, with temporary keys); `ssh` is the client the SFTP store itself runs. Installing
#   openssh-server must not start a system sshd on port 22: where no policy-rc.d forbids service
#   starts, one is put in place for the install and removed after.
if ! command -v ssh >/dev/null 2>&1 || ! { command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]]; }; then
    policy=/usr/sbin/policy-rc.d
    added_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends openssh-server openssh-client
    if [[ $added_policy == true ]]; then
        rm -f "$policy"
    fi
fi
