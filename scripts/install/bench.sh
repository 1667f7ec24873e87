#!/usr/bin/env bash
# Installs the peers the benchmark harness (bench/run.py) compares Backstop with, and what it
# measures with: restic and borg (Debian's packages), zstd (for `tar | zstd`), GNU time and the
# sqlite3 shell (`sqlite3 .backup`), all Debian packages; and matplotlib from PyPI for the PNG
# chart. They install in seconds, so CI runs the harness's smoke mode against real peers and
# draws its chart.
#
# Not installed here (optional, see bench/README.md): rustic, which scripts/optional/rustic.sh
# builds with `cargo install rustic-rs --locked` (10 to 20 minutes on two cores).
# Idempotent and quick when everything is there; runs as root; `apt-get update` is done by the
# caller.
set -euo pipefail

need_apt=()
command -v restic >/dev/null 2>&1 || need_apt+=(restic)
command -v borg >/dev/null 2>&1 || need_apt+=(borgbackup)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
[[ -x /usr/bin/time ]] || need_apt+=(time)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)

if ((${#need_apt[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends "${need_apt[@]}"
fi

if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore matplotlib
fi

restic version >/dev/null
borg --version >/dev/null
python3 -c 'import matplotlib' >/dev/null
