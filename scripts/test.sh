#!/usr/bin/env bash
# The whole test suite: every crate's unit, integration and end-to-end tests (real sandboxes: run as
# root), then the loom models of the admission gate.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the sandbox tests need root (namespaces, cgroups); they will fail without it" >&2
fi

cargo test --workspace --locked
scripts/loom.sh
