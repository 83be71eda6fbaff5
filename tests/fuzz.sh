#!/usr/bin/env bash
# Coverage-guided fuzzing of corral's decoders and parsers (fuzz/, see fuzz/README.md).
#
#   bash tests/fuzz.sh [--time SECONDS] [--runs N] [--smoke] [--build-only] [--seeds] [TARGET...]
#
# Builds the targets with libFuzzer on the STABLE toolchain (sanitizer-coverage through
# -Cpasses=sancov-module, no nightly, no cargo-fuzz), then runs each named target (all
# when none is named) for SECONDS (default 60) or N executions, whichever ends first,
# and prints per target: executions, exec/s, final cov and ft, corpus size, crashes.
# --smoke (CI): 8 s per target; also replays fuzz/regressions/. Exits non-zero when any
# target crashed (the input is in fuzz/artifacts/NAME/) or did not build. --seeds
# rewrites the seed corpora fuzz/corpus/ (fuzz/examples/seeds.rs) and runs nothing.
#
# Environment: CARGO_TARGET_DIR (default fuzz/target), FUZZ_JOBS (parallel libFuzzer
# jobs per target, default 1), FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$here/fuzz"
time_s=60
runs=""
smoke=false
build_only=false
seeds=false
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time_s="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --smoke) smoke=true; time_s=8; shift ;;
        --build-only) build_only=true; shift ;;
        --seeds) seeds=true; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz/Cargo.toml" | grep -v '^corral-fuzz$')
if [ ${#targets[@]} -eq 0 ]; then
    # shellcheck disable=SC2206
    targets=($all_targets)
fi
for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$all_targets"; then
        echo "fuzz.sh: no target $t (targets: $(echo $all_targets))" >&2
        exit 2
    fi
done

# libFuzzer is C++, built from source by the libfuzzer-sys crate.
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "fuzz.sh: installing g++ (libFuzzer is C++)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "fuzz.sh: needs a C++ compiler (g++) to build libFuzzer; install g++" >&2
        exit 1
    fi
fi
command -v cargo >/dev/null || { echo "fuzz.sh: needs cargo (rustup stable)" >&2; exit 1; }

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$fuzz/target}"
# The stable equivalent of cargo-fuzz's instrumentation, without -Zsanitizer=address
# (nightly only). With --target, RUSTFLAGS reach only the target's code, not build
# scripts and proc macros, which then need no libFuzzer to link.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing ${RUSTFLAGS_EXTRA:-}"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
if $seeds; then
    raw="$CARGO_TARGET_DIR/seeds"
    rm -rf "$raw"
    SEEDS_DIR="$raw" cargo run --release --locked --manifest-path "$fuzz/Cargo.toml" \
        --target "$host" --example seeds
    cargo build --release --locked --manifest-path "$fuzz/Cargo.toml" --target "$host" "${bin_args[@]}"
    for t in "${targets[@]}"; do
        rm -rf "$fuzz/corpus/$t" && mkdir -p "$fuzz/corpus/$t"
        "$CARGO_TARGET_DIR/$host/release/$t" -merge=1 "$fuzz/corpus/$t" "$raw/$t" \
            >"$CARGO_TARGET_DIR/merge-$t.log" 2>&1 \
            || { echo "fuzz.sh: merging the seeds of $t failed:" >&2; tail "$CARGO_TARGET_DIR/merge-$t.log" >&2; exit 1; }
        echo "fuzz.sh: $t: $(ls "$raw/$t" | wc -l) seeds, $(ls "$fuzz/corpus/$t" | wc -l) kept" >&2
    done
    exit 0
fi
start=$(date +%s)
echo "fuzz.sh: building ${targets[*]} ($(rustc --version))" >&2
if ! cargo build --release --locked --manifest-path "$fuzz/Cargo.toml" --target "$host" "${bin_args[@]}"; then
    echo "fuzz.sh: the fuzz targets do not build" >&2
    exit 1
fi
echo "fuzz.sh: built in $(( $(date +%s) - start )) s" >&2
$build_only && exit 0

bin_dir="$CARGO_TARGET_DIR/$host/release"
failed=()
rows=()
for t in "${targets[@]}"; do
    work="$CARGO_TARGET_DIR/corpus/$t"      # what the fuzzer adds (not committed)
    art="$fuzz/artifacts/$t"
    mkdir -p "$work" "$art" "$fuzz/corpus/$t"
    dirs=("$work" "$fuzz/corpus/$t")
    [ -d "$fuzz/regressions/$t" ] && dirs+=("$fuzz/regressions/$t")
    before=$(find "$art" -type f | wc -l)
    log="$CARGO_TARGET_DIR/fuzz-$t.log"
    args=(-max_total_time="$time_s" -print_final_stats=1 -artifact_prefix="$art/"
          -rss_limit_mb=2048 -timeout=10)
    [ -n "$runs" ] && args+=(-runs="$runs")
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        args+=(-fork="$FUZZ_JOBS")
    fi
    # shellcheck disable=SC2086
    echo "fuzz.sh: $t: $bin_dir/$t ${args[*]} ${FUZZ_ARGS:-} ${dirs[*]}" >&2
    set +e
    # shellcheck disable=SC2086
    "$bin_dir/$t" "${args[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "$art" -type f | wc -l)
    crashes=$(( after - before ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed+=("$t")
        echo "fuzz.sh: $t FAILED (exit $rc); its log: $log; last lines:" >&2
        grep -v '^#' "$log" | tail -30 >&2
    fi
    rows+=("$(printf '%-20s %12s %9s %7s %7s %12s %8s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
    printf '%s\n' "${rows[-1]}" >&2
done

printf '\n%-20s %12s %9s %7s %7s %12s %8s\n' target executions exec/s cov ft corpus crashes
printf '%s\n' "${rows[@]}"
echo "total time $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
