#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (run as root): the
# package lists once, then every script in scripts/install/ (each is idempotent and fast when
# its tools are already there). Not root: prints what would be needed and goes on, so a
# developer without root can still run the tests that need nothing extra. scripts/optional/ (the
# bench peer rustic, a 15-minute build) is not run here: no test needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps: not root; skipping installs (tests needing missing tools will skip, or fail under CI=true)" >&2
    exit 0
fi
stamp=/var/tmp/backstop-apt-updated
if [[ ! -f $stamp ]] || [[ -n $(find "$stamp" -mmin +720 2>/dev/null) ]]; then
    echo "install-test-deps: apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
    touch "$stamp"
fi
for script in scripts/install/*.sh; do
    echo "install-test-deps: $script" >&2
    bash "$script"
done
