#!/usr/bin/env bash
# The project's test command (README). On a fresh machine, as root:
#   1. installs what is missing (scripts/ci-install.sh: libcap-dev, QEMU 10 from bookworm-backports);
#   2. cargo test for the workspace: unit and property tests, layout tests, and integration tests in
#      which separate client processes open()/ioctl() the nodes of a FUSE-mode daemon (iommufd core,
#      VFIO compat, replay corpus in-process and through the node, dmacopy device, QEMU 10 driving
#      the device);
#   3. the kernel's own iommufd selftest (Linux 7.2) against the daemon, gated by
#      tests/kselftest-expected.txt (scripts/kselftest.sh);
#   4. the QEMU end-to-end script (scripts/qemu-e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ci-install.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
bash scripts/kselftest.sh
bash scripts/qemu-e2e.sh
