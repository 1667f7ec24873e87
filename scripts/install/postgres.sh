#!/usr/bin/env bash
# Installs what the PostgreSQL source's tests need: the PostgreSQL 15 server, its contrib
# modules (amcheck for pg_amcheck) and pgbench, and a non-root system user the test harness runs
# the server as (initdb refuses to run as root, and CI runs as root).
# Idempotent and quick when everything is already there. Runs as root; the caller has already
# run `apt-get update`.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
TEST_USER=backstop-test

need_apt=0
for tool in initdb pg_ctl postgres pgbench pg_amcheck psql; do
    if [[ ! -x "$PG_BIN/$tool" ]]; then
        need_apt=1
    fi
done
if [[ ! -f /usr/share/postgresql/15/extension/amcheck.control ]]; then
    need_apt=1
fi

if [[ $need_apt -eq 1 ]]; then
    # The Debian package would otherwise create and start a default cluster we do not use.
    mkdir -p /etc/postgresql-common/createcluster.d
    if [[ ! -f /etc/postgresql-common/createcluster.d/backstop-no-cluster.conf ]]; then
        echo "create_main_cluster = false" \
            > /etc/postgresql-common/createcluster.d/backstop-no-cluster.conf
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 postgresql-contrib postgresql-client-15
fi

if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$TEST_USER"
fi

# runuser (util-linux) is how the harness drops privileges.
if ! command -v runuser >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends util-linux
fi
