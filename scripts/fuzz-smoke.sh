#!/usr/bin/env bash
# Fuzz smoke run (CI): each cargo-fuzz target for N seconds (default 20), starting from seeds
# made of real inputs. A crash fails the run and leaves the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
# `scripts/fuzz-smoke.sh build` only installs cargo-fuzz and builds the targets (in fuzz/target,
# apart from the workspace's build directory): CI does that early, in the background.
secs=${1:-20}
targets=(event_decode wire_request sync_receiver archive_read)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
# The stable toolchain takes cargo-fuzz's -Z flags (sanitizer) with this; no nightly here.
export RUSTC_BOOTSTRAP=1
# CHORUS_FUZZ_TARGET_DIR: where the fuzz builds go (CI keeps them across runs); default fuzz/target.
dir=()
[[ -n ${CHORUS_FUZZ_TARGET_DIR:-} ]] && dir=(--target-dir "$CHORUS_FUZZ_TARGET_DIR")
# The seed maker (chorus-core with the `fuzzing` feature) builds in a directory of its own: in
# the workspace's it would rebuild chorus-core with other features, and hold the workspace's
# build lock while CI's foreground builds.
seeds_dir=${CHORUS_FUZZ_TARGET_DIR:-fuzz/target}/seeds
seeds=(cargo run -q --target-dir "$seeds_dir" -p chorus-core --features fuzzing --example fuzz_seeds)
if [[ $secs == build ]]; then
  cargo build -q --target-dir "$seeds_dir" -p chorus-core --features fuzzing --example fuzz_seeds
  cd fuzz
  for t in "${targets[@]}"; do cargo fuzz build "${dir[@]}" "$t"; done
  exit 0
fi
"${seeds[@]}" -- fuzz/corpus
cd fuzz
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s =="
  cargo fuzz run "${dir[@]}" "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 |
    grep -E "^(#|Done|stat::number_of_executed_units|==|SUMMARY|INFO: seed)|panicked|ERROR" | tail -8
  test "${PIPESTATUS[0]}" -eq 0
done
