#!/usr/bin/env bash
# Miri and ThreadSanitizer over the runtime's Rust tests (docs/reliability.md).
#
#   stress/sanitizers.sh miri    # Miri (tree borrows) over the unit tests and
#                                # the integration tests Miri can run
#   stress/sanitizers.sh tsan    # the runtime's tests built with -Zsanitizer=thread
#   stress/sanitizers.sh         # both
#
# Needs the nightly toolchain with the miri and rust-src components
# (`rustup +nightly component add miri rust-src`). Each part writes its log to
# target/sanitizers/<part>.log and fails on the first failing test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
logs="$root/target/sanitizers"
mkdir -p "$logs"
part=${1:-all}

miri() {
    # Tree borrows; isolation off so Instant::now and thread parking see real
    # time (the tests bound their waits with it). Leaks ignored: the
    # process-wide deadline timer thread is never joined by design (it lives
    # as long as the process), so every test binary exits with it running.
    # No backtraces: capturing one for each caught panic takes Miri seconds.
    RUST_BACKTRACE=0 MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-disable-isolation -Zmiri-ignore-leaks" \
        CARGO_TARGET_DIR="$root/target/miri" \
        cargo +nightly miri test -p raptors-runtime --lib --test admission --test basics --test lifecycle \
        2>&1 | tee "$logs/miri.log"
}

tsan() {
    # The standard library is rebuilt with the sanitizer so its own atomics
    # and locks are instrumented too.
    RUST_BACKTRACE=0 RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" \
        TSAN_OPTIONS="halt_on_error=1" \
        CARGO_TARGET_DIR="$root/target/tsan" \
        cargo +nightly test -Zbuild-std --target x86_64-unknown-linux-gnu \
        -p raptors-runtime --lib --tests 2>&1 | tee "$logs/tsan.log"
}

case "$part" in
miri) miri ;;
tsan) tsan ;;
all) miri && tsan ;;
*)
    echo "usage: $0 [miri|tsan]" >&2
    exit 2
    ;;
esac
