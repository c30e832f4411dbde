#!/usr/bin/env bash
# The golden-timeline test on ARM under qemu-user (issue 6): the same timeline must give the
# same state_hash and KAIROS bit patterns as on x86-64. Installs what it needs (Debian cross
# linkers, qemu-user, the Rust targets); any failing architecture fails the script.
#
# usage: scripts/cross-test.sh [TARGET...]
#        CHORUS_CROSS_BUILD_ONLY=1 scripts/cross-test.sh   # build only (CI, in the background)
#   default targets: aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
#                    arm-unknown-linux-musleabihf (ARMv6, run on qemu's arm1176 CPU model)
# Linkers and qemu runners are configured in .cargo/config.toml; scripts/cross-env.sh holds
# the shared setup (also used by scripts/cross-build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
((${#targets[@]})) || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf arm-unknown-linux-musleabihf)
source scripts/cross-env.sh
cross_setup "${targets[@]}"
# CHORUS_CROSS_BUILD_ONLY=1: build the tests and stop (CI builds them early, in the background,
# and runs them at the end).
if [[ -n ${CHORUS_CROSS_BUILD_ONLY:-} ]]; then
  for t in "${targets[@]}"; do
    echo "== golden timeline on $t: build =="
    cross_cargo "$t" test -q -p chorus-kairos --test golden --no-run
  done
  exit 0
fi
# Build (nothing to do after CI's background build) and find each target's test binary, then
# run the binaries side by side under qemu-user, CHORUS_CROSS_JOBS at a time (default: every
# core). Each golden replay is one thread (~80 s under qemu here), so two cores run two
# architectures in the time of one; cargo itself would run them one after the other (it holds
# the build directory's lock while its tests run).
declare -A exe
for t in "${targets[@]}"; do
  exe[$t]=$(cross_cargo "$t" test -q -p chorus-kairos --test golden --no-run --message-format=json |
    python3 -c '
import json, sys
found = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m.get("executable")
         and m["target"]["name"] == "golden"]
print(found[-1])')
done
jobs=${CHORUS_CROSS_JOBS:-$(nproc)}
logs=$(mktemp -d)
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  (
    runner=$(cross_runner "$t")
    echo "== golden timeline on $t (qemu-user: $runner) =="
    cd crates/chorus-kairos
    rc=0
    # shellcheck disable=SC2086 # the runner is a command line
    $runner "${exe[$t]}" -q 2>&1 || rc=$?
    echo "$rc" >"$logs/$t.rc"
  ) >"$logs/$t.log" 2>&1 &
done
wait
failed=()
for t in "${targets[@]}"; do
  cat "$logs/$t.log"
  [[ $(cat "$logs/$t.rc" 2>/dev/null) == 0 ]] || failed+=("$t")
done
rm -rf "$logs"
if ((${#failed[@]})); then
  echo "golden timeline failed on: ${failed[*]}"
  exit 1
fi
