#!/usr/bin/env bash
# Builds corral (release) and runs `corral dev`: a coordinator and an agent on this
# machine, with a fresh CA, certificates and database. Extra arguments go to `corral dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "corral needs a Rust toolchain: install rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi
exec cargo run --release --locked --bin corral -- dev "$@"
