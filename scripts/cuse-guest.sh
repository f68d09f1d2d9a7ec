#!/usr/bin/env bash
# CUSE for real: boot Debian's 6.12 kernel (CONFIG_CUSE=m) under QEMU/TCG with a busybox initramfs
# that runs `uiommufd serve --transport cuse` (which creates /dev/iommu and /dev/vfio/vfio through
# /dev/cuse) and the replay corpus (tests/replay/*.jsonl) against those character devices.
#
# Packages (linux-image-6.12 from bookworm-backports, busybox-static from bookworm) are fetched with a
# private apt configuration (mirror taken from the host's debian.sources), unpacked with dpkg-deb -x
# under target/guest-pkg/ (scripts/lib-guest.sh, shared with vfio-guest.sh) and never installed on
# the host. The serial console goes to target/cuse-guest/console.log.
#
# Env: UIOMMUFD (binary; default: cargo build --release, target/release/uiommufd), QEMU (default
# qemu-system-x86_64), KERNEL_PKG (default: newest linux-image-6.12.*+deb12-amd64), GUEST_PKG_DIR
# (unpacked packages, default target/guest-pkg), REPLAY (space separated scripts or dirs; default
# tests/replay), BOOT_TIMEOUT (seconds, default 300), RUST_LOG (daemon log level in the guest,
# default info).
# Exit 0 only if the guest printed the replay summary with 0 failed; 1 fail; 77 skip (no QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/cuse-guest
QEMU=${QEMU:-qemu-system-x86_64}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
start=$(date +%s)
command -v "$QEMU" >/dev/null || { echo "SKIP: $QEMU not found" >&2; exit 77; }

# shellcheck source=scripts/lib-guest.sh
. "$ROOT/scripts/lib-guest.sh"
guest_build_uiommufd
mkdir -p "$OUT"
guest_packages

# ---- initramfs ----
R=$OUT/root
guest_root "$R" replay
guest_add_bin "$R" "$UIOMMUFD" uiommufd
# cuse.ko (its modinfo depends= is empty: fuse is built in).
guest_add_module "$R" CONFIG_CUSE kernel/fs/fuse/cuse
for s in ${REPLAY:-tests/replay}; do
  if [ -d "$s" ]; then cp "$s"/*.jsonl "$R/replay/"; else cp "$s" "$R/replay/"; fi
done
{ guest_init_head CUSE-GUEST; cat <<EOF; } > "$R/init"
echo "CUSE-GUEST: \$(ls -l /dev/cuse 2>&1)"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} /bin/uiommufd serve --selftest --transport cuse --mount /run/uiommufd >/tmp/daemon.log 2>&1 &
DPID=\$!
i=0
while [ \$i -lt 300 ] && ! { [ -c /dev/iommu ] && [ -c /dev/vfio/vfio ]; }; do
  kill -0 \$DPID 2>/dev/null || break
  sleep 0.1; i=\$((i+1))
done
echo "CUSE-GUEST: nodes: \$(ls -l /dev/iommu /dev/vfio/vfio 2>&1 | tr '\n' ' ')"
echo "CUSE-GUEST: /proc/devices: \$(grep -E ' (iommu|vfio/vfio)$' /proc/devices | tr '\n' ' ')"
if [ -c /dev/iommu ]; then
  echo "CUSE-GUEST: replay start"
  /bin/uiommufd replay --node /dev/iommu --vfio-node /dev/vfio/vfio /replay >/tmp/replay.log 2>&1
  echo "CUSE-GUEST: replay exit \$?"
  sed 's/^/REPLAY: /' /tmp/replay.log
else
  echo "CUSE-GUEST: nodes did not appear"
fi
kill -TERM \$DPID 2>/dev/null
wait \$DPID
echo "CUSE-GUEST: daemon exit \$?"
sed 's/^/DAEMON: /' /tmp/daemon.log
echo "CUSE-GUEST: done"
poweroff -f
EOF
chmod +x "$R/init"
guest_pack "$R" "$OUT/initrd.cpio.gz"

# ---- boot ----
LOG=$OUT/console.log
echo "booting $GUEST_KVER under TCG (log: $LOG)" >&2
guest_boot "$LOG" "$BOOT_TIMEOUT" "$OUT/initrd.cpio.gz" "" -m 512M
qrc=$GUEST_QEMU_RC
grep -E '^(CUSE-GUEST|REPLAY|DAEMON):' "$LOG" >&2 || true
echo "qemu exit $qrc, $(( $(date +%s) - start )) s" >&2
summary=$(grep -E '^REPLAY: [0-9]+ passed, [0-9]+ failed' "$LOG" | tail -n1 || true)
if [ -n "$summary" ] && grep -q ', 0 failed' <<<"$summary" && grep -qx 'CUSE-GUEST: replay exit 0' "$LOG"; then
  echo "PASS: CUSE in the guest: ${summary#REPLAY: }"
  exit 0
fi
echo "FAIL: no replay summary with 0 failed in $LOG" >&2
tail -n 40 "$LOG" >&2
exit 1
