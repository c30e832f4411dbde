#!/usr/bin/env bash
# Release builds of the `chorus` binary for the ARM boards users run (issue 6), stripped, into
# dist/TARGET/chorus, with their sizes. Installs what it needs (see scripts/cross-env.sh).
#
# usage: scripts/cross-build.sh [TARGET...]
#   default: arm-unknown-linux-gnueabihf   Pi Zero / Pi 1 on Raspberry Pi OS (ARMv6 + VFPv2)
#            arm-unknown-linux-musleabihf  the same cores, static (no C library needed)
#            armv7-unknown-linux-gnueabihf Pi 2 / 32-bit Pi OS on Pi 3, 4
#            aarch64-unknown-linux-musl    Pi 3, 4, 5 on a 64-bit OS, any arm64 server; static
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
((${#targets[@]})) || targets=(arm-unknown-linux-gnueabihf arm-unknown-linux-musleabihf
  armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)
source scripts/cross-env.sh
cross_setup "${targets[@]}"

for t in "${targets[@]}"; do
  echo "== chorus for $t =="
  cross_cargo "$t" build --release -p chorus-cli --bin chorus --no-default-features
  mkdir -p "dist/$t"
  strip=arm-linux-gnueabihf-strip
  [[ $t == aarch64-* ]] && strip=aarch64-linux-gnu-strip
  "$strip" -o "dist/$t/chorus" "$(cross_target_dir "$t")/$t/release/chorus"
  printf '%s: %s bytes stripped (%s unstripped)\n' "$t" \
    "$(stat -c %s "dist/$t/chorus")" "$(stat -c %s "$(cross_target_dir "$t")/$t/release/chorus")"
done
