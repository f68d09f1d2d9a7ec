#!/usr/bin/env bash
# The project's test command (README): unit, property and integration tests through the real FUSE node,
# then the end-to-end suites that exist. Needs root (FUSE mounts, process_vm on other processes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
