#!/usr/bin/env bash
# Fuzz smoke for developers: every target (or the ones named) for FUZZ_SECONDS (default 60)
# each, starting from the committed corpus. Exits non-zero when any target finds a crash; the
# input is left in daemon/fuzz/artifacts/<target>/. New inputs go to a temporary directory, so
# the committed corpora stay as they are.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."   # daemon/: cargo-fuzz finds fuzz/ from here

seconds=${FUZZ_SECONDS:-60}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(webhook admin_request tunnel_hello magicline_response when)
fi
# cargo-fuzz passes nightly-only sanitizer flags; the stable compiler accepts them this way.
export RUSTC_BOOTSTRAP=1

cargo fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    corpus=()
    [ -d "fuzz/corpus/$t" ] && corpus=("fuzz/corpus/$t")
    echo "== $t: ${seconds}s"
    if ! cargo fuzz run "$t" "$scratch/$t" "${corpus[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log"
        failed+=("$t")
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$scratch/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (a crash input is in daemon/fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crashes"
