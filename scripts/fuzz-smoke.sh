#!/usr/bin/env bash
# Fuzz smoke run (CI): each cargo-fuzz target for N seconds (default 20), starting from seeds
# made of real inputs. A crash fails the run and leaves the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
# The stable toolchain takes cargo-fuzz's -Z flags (sanitizer) with this; no nightly here.
export RUSTC_BOOTSTRAP=1
cargo run -q -p chorus-core --features fuzzing --example fuzz_seeds -- fuzz/corpus
cd fuzz
for t in event_decode wire_request sync_receiver; do
  echo "== fuzz $t for ${secs}s =="
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 |
    grep -E "^(#|Done|stat::number_of_executed_units|==|SUMMARY|INFO: seed)|panicked|ERROR" | tail -8
  test "${PIPESTATUS[0]}" -eq 0
done
