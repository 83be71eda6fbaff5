#!/usr/bin/env bash
# Runs every test corral has: formatting, lints, unit tests, and the integration tests in tests/
# (real coordinators and agents over QUIC with real certificates on loopback).
# Needs the Rust toolchain (rustup, stable); creates a Python venv with a pinned Ray for
# the Ray tests (installing python3-venv with apt when it is missing and we are root),
# builds the wasm scheduler plugins, and the Slurm tests start a real single-node Slurm
# (installing slurm-wlm and munge with apt under CI).
# The Grid Engine tests (tests/sge.rs) likewise start a real single-host Grid Engine,
# installing gridengine-master, gridengine-exec and gridengine-client with apt under CI,
# and submit as test users (alice, bob) that they create with useradd when root.
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
    # A CI build is compiled once per change: incremental state only costs disk (it
    # doubled the target dir and filled the disk once), so it is off there.
    export CARGO_INCREMENTAL=0
    rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/clippy/debug/incremental"
fi

# Each section says when it started, in seconds since this script did.
started=$SECONDS
section() { echo "== $* (at $((SECONDS - started)) s)"; }

section "cargo fmt --check"
cargo fmt --all -- --check

# Lints: [workspace.lints] plus clippy's defaults, every crate and target, warnings fatal.
# Clippy runs beside everything below, at the lowest CPU priority and in its own target
# dir (its check builds share nothing with the test builds, and its own lock keeps it from
# blocking them): it takes about ten minutes on a cold cache and two cores, which it
# mostly spends while the integration tests wait on Slurm, Ray and timeouts. Its verdict
# is read at the end, and fails the run like any test.
section "cargo clippy --workspace --all-targets -- -D warnings (in the background)"
if ! cargo clippy --version >/dev/null 2>&1; then
    echo "cargo clippy is missing: install it with 'rustup component add clippy' and run this again" >&2
    exit 1
fi
clippy_log=$(mktemp)
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/clippy" \
    nice -n 19 cargo clippy --workspace --all-targets --locked -- -D warnings >"$clippy_log" 2>&1 &
clippy_pid=$!
# However the run ends, a clippy still running is stopped with it.
trap 'kill "$clippy_pid" 2>/dev/null || true' EXIT

# --- Ray (tests/ray.rs; added with the Ray supervision issue) ---------------------------
# tests/ray.rs starts real Ray clusters from the venv in CORRAL_RAY_VENV. Unless one is
# given, create (once) a venv with Ray pinned at the version the tests were written for,
# in a cache dir so CI reuses it; pip runs only when the venv lacks that exact version.
# As root (CI), the tests run Ray as an unprivileged test user (the agent refuses to run
# Ray as root), which must reach the venv and must not be able to change it (the agent
# refuses a venv others can write). $HOME/.cache is under /root (0700), so the venv then
# lives in /var/cache/corral-test (or CORRAL_RAY_VENV_DIR), root-owned and world-readable,
# made from the system Python (CORRAL_RAY_PYTHON to choose): a venv's interpreter is a
# link to the Python it was made from, and one under /root (pyenv) is out of reach too.
if [ -z "${CORRAL_RAY_VENV:-}" ]; then
    RAY_VERSION=2.60.0
    if [ "$(id -u)" = 0 ]; then
        ray_venv_dir="${CORRAL_RAY_VENV_DIR:-/var/cache/corral-test}"
        if [ -z "${CORRAL_RAY_PYTHON:-}" ] && ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 &&
            command -v apt-get >/dev/null 2>&1; then
            # A Python only root can reach (pyenv under /root) would not do: install the
            # system one.
            section "installing python3 and python3-venv (apt), for a venv other users can run"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        fi
        if [ -x /usr/bin/python3 ]; then
            ray_python="${CORRAL_RAY_PYTHON:-/usr/bin/python3}"
        else
            ray_python="${CORRAL_RAY_PYTHON:-python3}"
        fi
    else
        ray_venv_dir="${CORRAL_RAY_VENV_DIR:-${CORRAL_CACHE_DIR:-$HOME/.cache/corral}}"
        ray_python="${CORRAL_RAY_PYTHON:-python3}"
    fi
    CORRAL_RAY_VENV="$ray_venv_dir/ray-$RAY_VERSION"
    have=$("$CORRAL_RAY_VENV/bin/python" -c 'import ray, ray.dashboard.optional_deps; print(ray.__version__)' 2>/dev/null || true)
    if [ -n "$have" ] && [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1 &&
        ! runuser -u nobody -- sh -c 'cd / && exec "$0" -c ""' "$CORRAL_RAY_VENV/bin/python" 2>/dev/null; then
        section "$CORRAL_RAY_VENV cannot be used by other users (its Python is out of their reach): recreating it"
        have=
    fi
    if [ "$have" != "$RAY_VERSION" ]; then
        section "creating the Ray venv $CORRAL_RAY_VENV (ray[default]==$RAY_VERSION)"
        # Nothing group- or world-writable, whatever the caller's umask.
        saved_umask=$(umask)
        umask 022
        mkdir -p "$ray_venv_dir"
        rm -rf "$CORRAL_RAY_VENV"
        if ! "$ray_python" -m venv "$CORRAL_RAY_VENV" >/dev/null 2>&1; then
            # Debian's python3 ships venv separately; install it where we can.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                section "installing python3 and python3-venv (apt)"
                apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
                rm -rf "$CORRAL_RAY_VENV"
                "$ray_python" -m venv "$CORRAL_RAY_VENV"
            else
                echo "the Ray tests need a Python venv: install python3 and python3-venv (or set CORRAL_RAY_VENV)" >&2
                exit 1
            fi
        fi
        "$CORRAL_RAY_VENV/bin/pip" install --quiet "ray[default]==$RAY_VERSION"
        umask "$saved_umask"
    fi
    export CORRAL_RAY_VENV
fi
echo "Ray venv for tests: $CORRAL_RAY_VENV"

# --- Scheduler plugins (tests/plugin_host.rs, tests/slurm.rs, tests/jobs.rs, ...) ------
# `cargo xtask plugins` builds every plugin for wasm32 and turns it into a component,
# installing Debian's wasm-capable rustc when no rustup wasm target is there.
if [ -z "${CORRAL_PLUGINS_DIR:-}" ]; then
    CORRAL_PLUGINS_DIR="${CARGO_TARGET_DIR:-$PWD/target}/plugins"
fi
section "cargo xtask plugins --out $CORRAL_PLUGINS_DIR"
cargo xtask plugins --out "$CORRAL_PLUGINS_DIR"
export CORRAL_PLUGINS_DIR

section "cargo test (unit, integration, doc)"
cargo test --workspace --locked "$@"

# --- Fuzzing (fuzz/, tests/fuzz.sh) ----------------------------------------------------------
# A short smoke of every coverage-guided fuzz target (libFuzzer on the stable toolchain):
# 8 s each, replaying the inputs of crashes found and fixed (fuzz/regressions/). The long
# runs behind BENCHMARKS.md are `bash tests/fuzz.sh --runs 10000000 TARGET`.
section "tests/fuzz.sh --smoke"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz" bash tests/fuzz.sh --smoke

# --- Packages (issue: packaging and operations) ------------------------------------------
# Under CI (root, disposable machine) this builds the .deb and .rpm, installs the .deb,
# checks it, runs the daemons from it, and purges it; elsewhere it prints SKIPPED unless
# CORRAL_TEST_PACKAGES=1.
section "tests/packaging.sh"
bash tests/packaging.sh

section "cargo clippy (started at the beginning)"
if wait "$clippy_pid"; then
    cat "$clippy_log"
    echo "clippy: no warnings"
else
    cat "$clippy_log"
    echo "cargo clippy found problems (above): every warning is an error here" >&2
    exit 1
fi
echo "all passed in $((SECONDS - started)) s"
