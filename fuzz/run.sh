#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) with cargo-fuzz, on the stable
# toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags; no sanitizer, so no
# nightly-only runtime is needed). Installs cargo-fuzz under fuzz/target/tools once.
# Prints each target's executions; exits non-zero on the first crash, leaving the
# input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
tools="$PWD/target/tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"
fi
export RUSTC_BOOTSTRAP=1
fuzz() { "$tools/bin/cargo-fuzz" "$@"; }
fuzz build -s none
for target in $(fuzz list); do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    log="target/fuzz-$target.log"
    if ! fuzz run -s none "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED (see fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    echo "fuzz: $target: $runs executions in ${seconds} s, no crash"
done
