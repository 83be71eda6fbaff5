#!/usr/bin/env bash
# Runs every test corral has: formatting, unit tests, and the integration tests in tests/
# (real coordinators and agents over QUIC with real certificates on loopback).
# Installs nothing system-wide for now: the Rust toolchain (rustup, stable) is all it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "corral needs a Rust toolchain: install rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi

# Under CI, keep build outputs outside the fresh clone so later runs on the same machine
# reuse them (cargo's fingerprints decide what to rebuild, so this is safe).
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
    export CARGO_TARGET_DIR="${CORRAL_CACHE_DIR:-$HOME/.cache/corral}/target"
    mkdir -p "$CARGO_TARGET_DIR"
    echo "build outputs: $CARGO_TARGET_DIR"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo test (unit, integration, doc)"
cargo test --workspace --locked "$@"
