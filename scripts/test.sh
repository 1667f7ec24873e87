#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole suite (unit, property,
# store conformance including a real S3-protocol server, real databases under load, the CLI
# end to end, the demo, and the benchmark harness's smoke mode).
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p backstop --test engine    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# Python tools installed by pip land here on some setups.
export PATH="$HOME/.local/bin:$PATH"
if [[ $# -gt 0 ]]; then
    exec cargo test "$@"
fi
cargo test --workspace --all-features --no-fail-fast
