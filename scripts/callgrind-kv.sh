#!/usr/bin/env bash
# Instructions per KV-cache-manager event on the seeded chat trace, counted by callgrind (stable
# on a noisy machine, unlike times). Only `replay_events` is counted, not the trace generation.
# Needs valgrind (Debian package `valgrind`).
#   scripts/callgrind-kv.sh [block_size] [pool_tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
bs=${1:-16}
pool=${2:-65536}
cargo build --release -q -p ascend-benches --example kv_replay
target=$(scripts/target-dir.sh)
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    --toggle-collect='*replay_events*' "$target/release/examples/kv_replay" "$bs" "$pool" \
    >"$out/stdout" 2>"$out/stderr"
cat "$out/stdout"
collected=$(grep -o 'Collected : [0-9]*' "$out/stderr" | grep -o '[0-9]*$')
events=$(grep -o 'events [0-9]*' "$out/stdout" | grep -o '[0-9]*$')
echo "block size $bs, pool $pool tokens: $collected instructions for $events events = $((collected / events)) instructions per event"
rm -rf "$out"
