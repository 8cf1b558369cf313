#!/usr/bin/env bash
# Prints cargo's target directory for this workspace, as cargo itself resolves it
# (CARGO_TARGET_DIR, a config's build.target-dir, or ./target): what every script writes to
# and runs binaries from.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
