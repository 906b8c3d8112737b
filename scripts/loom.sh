#!/usr/bin/env bash
# Runs the draingate loom models (crates/draingate/tests/loom.rs).
#
# A separate target dir keeps the `--cfg loom` build from invalidating the normal build's artifacts.
# LOOM_MAX_PREEMPTIONS (default 3, set in the models) widens the search; LOOM_LOG=trace explains a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p draingate --test loom --release "$@"
