#!/usr/bin/env bash
# The project's test command (README). On a fresh machine, as root:
#   1. installs what is missing (scripts/ci-install.sh: libcap-dev, QEMU 10 from bookworm-backports);
#   2. cargo test for the workspace: unit and property tests, layout tests, and integration tests in
#      which separate client processes open()/ioctl() the nodes of a FUSE-mode daemon (iommufd core,
#      VFIO compat, replay corpus in-process and through the node, dmacopy device, QEMU 10 driving
#      the device);
#   3. the kernel's own iommufd selftest (Linux 7.2) against the daemon, gated by
#      tests/kselftest-expected.txt (scripts/kselftest.sh);
#   4. the QEMU end-to-end script (scripts/qemu-e2e.sh);
#   5. CUSE for real: the replay corpus through CUSE nodes inside a QEMU guest whose Debian 6.12
#      kernel has CUSE (scripts/cuse-guest.sh; CI's own kernel has none);
#   6. real DMA: the same guest with an emulated VT-d and three `edu` devices bound to vfio-pci;
#      `serve --vfio` puts two of them behind kernel type1 containers and a client drives their DMA
#      engines through /dev/iommu and the device nodes (scripts/vfio-guest.sh);
#   7. the Debian package: built, installed into an empty root with dpkg, its files, unit and
#      binary checked, purged (scripts/package-deb.sh --check);
#   8. the real Linux 7.2 as the oracle: built once (cached outside the checkout), booted under
#      QEMU/TCG with and without IOMMUFD_TEST; the replay corpus and 1044 generated probes run
#      against the kernel's /dev/iommu and against uiommufd in the same guest; the kernel's selftest
#      (step 3's binary) on the test kernel, compared per instance with step 3's result (its
#      output.tap: keep step 3 first); gated on tests/refkernel-*expected*.txt (scripts/refkernel.sh).
# Any failure stops the run with a non-zero status. The last line adds up what passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ci-install.sh
cargo build --workspace --all-targets
mkdir -p target
cargo test --workspace -- --test-threads=2 2>&1 | tee target/cargo-test.log
cargo_passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' target/cargo-test.log)
cargo_failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' target/cargo-test.log)
# The gates' own judging, on built-in samples (seconds, no guest): a gate that cannot fail is none.
bash scripts/kselftest.sh --self-test
bash scripts/refkernel.sh --self-test
bash scripts/kselftest.sh
kselftest_passed=$(grep '^ok ' "${CARGO_TARGET_DIR:-target}/kselftest/output.tap" | grep -vc '# SKIP' || true)
bash scripts/qemu-e2e.sh
bash scripts/cuse-guest.sh
cuse_passed=$(grep -ao 'REPLAY: [0-9]* passed' target/cuse-guest/console.log | awk '{print $2}')
bash scripts/vfio-guest.sh
vfio_passed=$(grep -ao 'VFIO-GUEST: summary: [0-9]* passed' target/vfio-guest/console.log | awk '{print $3}')
bash scripts/package-deb.sh --check | tee target/package-deb.log
deb_passed=$(grep -c '^check: ok' target/package-deb.log || true)
bash scripts/refkernel.sh | tee target/refkernel.log
bash scripts/refkernel.sh --probe | tee target/refkernel-probe.log
ref_passed=$(cat target/refkernel.log target/refkernel-probe.log | grep -c '^\[[a-z]*\] PASS' || true)
echo "cargo test: $cargo_passed passed; kernel selftest: $kselftest_passed instances passed (gate green); QEMU e2e script: passed; CUSE guest: $cuse_passed replay scripts passed; real DMA guest: $vfio_passed checks passed; package: $deb_passed checks passed; real-kernel oracle: $ref_passed gates green"
echo "summary: $((cargo_passed + kselftest_passed + 1 + ${cuse_passed:-0} + ${vfio_passed:-0} + ${deb_passed:-0} + ${ref_passed:-0})) passed, $cargo_failed failed"
