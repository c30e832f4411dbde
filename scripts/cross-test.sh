#!/usr/bin/env bash
# The golden-timeline test on ARM under qemu-user (issue 6): the same timeline must give the
# same state_hash and KAIROS bit patterns as on x86-64. Installs what it needs (Debian cross
# linkers, qemu-user, the Rust targets); any failing architecture fails the script.
#
# usage: scripts/cross-test.sh [TARGET...]
#   default targets: aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
# Linkers and qemu runners are configured in .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
((${#targets[@]})) || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

need=()
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
if ((${#need[@]})); then
  apt-get update -q && apt-get install -y -q "${need[@]}"
fi
for t in "${targets[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
for t in "${targets[@]}"; do
  echo "== golden timeline on $t (qemu-user) =="
  cargo test -q -p chorus-kairos --test golden --target "$t"
done
