#!/usr/bin/env bash
# Footprint of the ARMv6 (Pi Zero class) build, measured under qemu-user on this x86-64 host
# and stated as such (issue 6): stripped binary size, peak RSS of a light node holding EVENTS
# events, KAIROS tokens/s under emulation against native x86-64 in the same run.
#
# usage: scripts/arm-footprint.sh [EVENTS]     (default 10000)
# The ARM binaries are static (arm-unknown-linux-musleabihf, zig's musl for the ARM1176) and
# run on qemu's arm1176 CPU model. The RSS of an emulated process includes qemu itself.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000}
t=arm-unknown-linux-musleabihf
source scripts/cross-env.sh
cross_setup "$t"
cross_cargo "$t" build --release -p chorus-cli -p chorus-bench
cargo build --release -p chorus-cli -p chorus-bench
mkdir -p "dist/$t"
arm-linux-gnueabihf-strip -o "dist/$t/chorus" "$(cross_target_dir "$t")/$t/release/chorus"
qemu=(qemu-arm -cpu arm1176)

echo "== binary =="
printf 'ROW|stripped chorus binary, %s|%.1f|MB|≤ 20|%s bytes\n' "$t" \
  "$(echo "$(stat -c %s "dist/$t/chorus") / 1048576" | bc -l)" "$(stat -c %s "dist/$t/chorus")"

echo "== KAIROS tokens/s: native x86-64, then ARMv6 under qemu =="
target/release/chorus-bench kairos-tokens | grep '^ROW' | sed 's/^ROW|/ROW|x86-64 native: /'
"${qemu[@]}" "$(cross_target_dir "$t")/$t/release/chorus-bench" kairos-tokens | grep '^ROW' | sed 's/^ROW|/ROW|ARMv6 under qemu arm1176: /'

echo "== light node holding $events events: native, then ARMv6 under qemu =="
target/release/mesh-bench light "$events"
target/release/mesh-bench light "$events" "${qemu[@]}" "dist/$t/chorus"
