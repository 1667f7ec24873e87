#!/usr/bin/env bash
# Installs what the EventStore source's and the pause hooks' tests need: python3 (standard
# library only) runs the EventStore protocol writer (crates/backstop-source/tests/support/
# eventstore_writer.py); `sh` and `sleep` run the pause/hold commands (always on Debian).
# EventStore itself is not installed: it is not packaged for Debian.
# Idempotent; runs as root; `apt-get update` is done by the caller.
set -euo pipefail

if ! command -v python3 >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3
fi
