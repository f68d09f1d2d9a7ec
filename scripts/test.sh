#!/usr/bin/env bash
# The project's test command (README): installs what is missing, then runs unit, property and
# integration tests (real client processes against a FUSE-mode daemon) and the end-to-end gates
# that exist. Needs root (FUSE mounts, process_vm on other processes, /proc/<pid>/pagemap).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ci-install.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
