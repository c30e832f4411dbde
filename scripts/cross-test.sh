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
run=()
[[ -n ${CHORUS_CROSS_BUILD_ONLY:-} ]] && run=(--no-run)
for t in "${targets[@]}"; do
  echo "== golden timeline on $t (qemu-user: $(cross_runner "$t")) =="
  cross_cargo "$t" test -q -p chorus-kairos --test golden "${run[@]}"
done
