#!/usr/bin/env bash
# The builds CI starts at once and runs beside the foreground steps, at the lowest priority
# (.ci/run starts this under `setsid nice -n 19`): llama-server, the ARM golden tests, the fuzz
# targets; then the golden timeline on ARM under qemu-user itself (single-threaded replays
# that need nothing from the foreground, so they run on the CPU the test step leaves idle; a
# failing architecture fails this script, and CI with it). Each has its own build directory
# ($CHORUS_CROSS_TARGET_DIR, $CHORUS_FUZZ_TARGET_DIR, llama-server's cache), so no cargo lock
# is shared with the foreground.
#
#   scripts/ci-background-builds.sh FILE    # FILE gets llama-server's path
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
echo "== bg: llama-server"
scripts/build-llama-server.sh | tail -n 1 >"$1"
echo "== bg: ARM golden tests, build only (at +$((SECONDS - t0))s)"
CARGO_TARGET_DIR=${CHORUS_CROSS_TARGET_DIR:-target/cross} CHORUS_CROSS_BUILD_ONLY=1 scripts/cross-test.sh
echo "== bg: fuzz targets, build only (at +$((SECONDS - t0))s)"
scripts/fuzz-smoke.sh build
echo "== bg: golden timeline on ARM under qemu-user (at +$((SECONDS - t0))s)"
CARGO_TARGET_DIR=${CHORUS_CROSS_TARGET_DIR:-target/cross} scripts/cross-test.sh
echo "== bg: done (after $((SECONDS - t0))s)"
