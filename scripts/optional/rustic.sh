#!/usr/bin/env bash
# Installs rustic, the optional peer of the benchmark harness (bench/run.py), at the version the
# committed results used, from crates.io with `cargo install --locked`. Not part of the tests or
# of CI: the build takes 10 to 20 minutes on two cores. Its build directory is a temporary one,
# removed afterwards (it takes a few GiB). Idempotent: does nothing when that version is on PATH.
set -euo pipefail

version="${RUSTIC_VERSION:-0.11.4}"

if command -v rustic >/dev/null 2>&1 && rustic --version | grep -qF "$version"; then
    exit 0
fi
command -v cargo >/dev/null 2>&1 || {
    echo "rustic.sh: cargo is not on PATH (install Rust from https://rustup.rs)" >&2
    exit 1
}

target="$(mktemp -d "${TMPDIR:-/var/tmp}/rustic-build.XXXXXX")"
trap 'rm -rf "$target"' EXIT
CARGO_TARGET_DIR="$target" cargo install rustic-rs --locked --version "$version"
rustic --version
