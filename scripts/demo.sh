#!/usr/bin/env bash
# The main job, for now: a scripted session on two local replicas of one timeline — init,
# membership, stimuli and intents from two writers appending concurrently, a merge, the log, the
# KAIROS state, a full verification and a CAR export. (The libp2p mesh replaces the
# export/import merge in the next milestone.)
#
# usage: scripts/demo.sh [WORKDIR]   (default: ./chorus-demo, wiped first)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-./chorus-demo}
cargo build --release -q -p chorus-cli
chorus=$PWD/target/release/chorus
rm -rf "$work" && mkdir -p "$work"
a="$work/anchor" b="$work/writer"
run() { printf '\n$ chorus %s\n' "$*" >&2; "$chorus" "$@"; }

run --data-dir "$a" init --name demo --checkpoint-interval 8
kb=$(run --data-dir "$b" key)
run --data-dir "$a" member add "$kb" --role writer
run --data-dir "$a" export --car "$work/genesis.car"
run --data-dir "$b" import "$work/genesis.car"

# Both writers register an emissary, then answer a stimulus concurrently (no sync between).
run --data-dir "$a" append --kind emissary --json '{"name":"gpu-server","role":"guard"}'
run --data-dir "$b" append --kind emissary --json '{"name":"pi-zero","role":"sage"}'
run --data-dir "$a" export --car "$work/a.car"
run --data-dir "$b" import "$work/a.car"
stimulus=$(run --data-dir "$b" append "A traveller approaches the northern gate and asks for shelter")
run --data-dir "$b" export --car "$work/b.car"
run --data-dir "$a" import "$work/b.car"
run --data-dir "$a" append --kind intent --emissary gpu-server --re "$stimulus" '["say Halt! Who goes there?", "look traveller"]'
run --data-dir "$b" append --kind intent --emissary pi-zero --re "$stimulus" '["say Welcome, the fire is warm", "open gate"]'
run --data-dir "$a" append --count 20 --batch 5 "heartbeat of the anchor, beat {i} of the long night"
run --data-dir "$b" append --count 10 "the writer keeps watch, hour {i}"

# Merge both ways: the two replicas now hold the same events.
run --data-dir "$a" export --car "$work/a.car"
run --data-dir "$b" export --car "$work/b.car"
run --data-dir "$a" import "$work/b.car"
run --data-dir "$b" import "$work/a.car"

run --data-dir "$a" log --limit 12
run --data-dir "$a" state
run --data-dir "$a" verify
run --data-dir "$a" export --car "$work/timeline.car"

ha=$("$chorus" --data-dir "$a" state --json | grep '"state_hash"')
hb=$("$chorus" --data-dir "$b" state --json | grep '"state_hash"')
echo >&2
if [ "$ha" = "$hb" ]; then
  echo "both replicas converged: $ha" >&2
else
  echo "replicas differ: $ha vs $hb" >&2
  exit 1
fi
